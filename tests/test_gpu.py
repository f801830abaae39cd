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


@pytest.mark.parametrize("stage", ["triton", "torch"])
def test_device_stage_and_training_step_make_no_hidden_sync(tiny_dataset, stage):
    """torch.cuda.set_sync_debug_mode("error") over the dali-gpu device stage (the
    copies out of DALI, the Triton stage, the hand-over to the training stream)
    and a SimSiam+AugSelf training step, with the finiteness check on as in a run
    (its skip is decided on the device: trainer/step.py): a blocking copy or a
    device-to-host read added to either fails here. The first batch and step run
    outside the mode (kernel compilation, lazy optimiser state). Both GPU stages:
    the Triton one, and the torch one it falls back to, whose blocking copy of the
    labels was found here on an H200."""
    from pipelines.build import LoaderConfig, build_loader
    from trainer import optim, systems
    from trainer.build import build_objective
    from trainer.config import from_argv

    argv = trainrun.args(tiny_dataset, "unused", "--method", "simsiam", "--aux", "augself")
    cfg = from_argv(argv)
    loader = build_loader(LoaderConfig(data=str(tiny_dataset), backend="dali-gpu", size=32,
                                       batch_size=32, workers=2, stage=stage),
                          dtype=torch.bfloat16)
    assert loader.finish.stage == stage
    objective = build_objective(cfg, loader.recipe, 0).cuda().to(memory_format=torch.channels_last)
    opt = optim.build(objective.param_groups(), "sgd", 0.1, 0.9, 5e-4)

    sysm = systems.Systems(torch.device("cuda"), torch.bfloat16, None)

    def step(batch):
        return trainer_run.train_step(objective, objective, opt, sysm, batch, 0, 0.5,
                                      check_finite=True)

    loader.set_epoch(0)
    it = iter(loader)
    step(next(it))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            out = step(next(it))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(out["loss"]).item()
    assert loader.finish.stage == stage, loader.finish.self_check_result  # no fall-back
