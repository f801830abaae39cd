"""Helpers for tests that run the trainer."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

# Small enough for 2 CPU cores: the small ResNet on 32 px views, narrow heads.
FAST = ["--backbone", "small", "--size", "32", "--small-size", "16", "--batch-size", "32",
        "--proj-hidden", "64", "--proj-dim", "64", "--pred-hidden", "32", "--queue-size", "32", "--no-probe",
        "--backend", "torchvision", "--workers", "0", "--no-progress", "--log-every", "1",
        "--lr", "0.4"]


def args(data, out, *extra) -> list[str]:
    return ["--data", str(data), "--out", str(out), *FAST, *map(str, extra)]


def cmd(*a) -> list[str]:
    return [sys.executable, "-m", "trainer.run", *map(str, a)]


def torchrun(n: int, *a) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
            "--standalone", "-m", "trainer.run", *map(str, a)]


def losses(run_dir) -> list[float]:
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["loss"] for ln in lines]


def weights(run_dir) -> dict[str, torch.Tensor]:
    ck = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    return ck["model"]
