"""The trainer's GPU path: bf16 autocast, channels_last, the dali-gpu loader.
Skipped where there is no CUDA device (every CPU machine, CI)."""

import json

import pytest
import torch
import trainrun

from trainer import run as trainer_run

pytestmark = [pytest.mark.gpu, pytest.mark.dali]


def test_dali_gpu_bf16_trains(tiny_dataset, tmp_path):
    out = tmp_path / "gpu"
    argv = trainrun.args(tiny_dataset, out, "--method", "simsiam", "--aux", "augself",
                         "--epochs", "4", "--max-steps", "20")
    argv[argv.index("--backend") + 1] = "dali-gpu"
    assert trainer_run.main(argv) == 0
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["dtype"] == "bfloat16" and resolved["device"].startswith("cuda")
    loss = trainrun.losses(out)
    assert all(torch.isfinite(torch.tensor(loss)))
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5
