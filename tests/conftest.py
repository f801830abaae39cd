import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None
HAVE_FFCV = importlib.util.find_spec("ffcv") is not None
# The converter writes a .beton by default and refuses to without FFCV (most GPU
# machines): tests that convert for another purpose pass this.
NO_BETON = () if HAVE_FFCV else ("--no-beton",)


def _share_cores() -> None:
    """Under pytest-xdist, each worker gets its share of the cores for torch's
    threads (and the trainers it starts inherit it): 6 workers of 16 threads each,
    plus the ranks the DDP tests start, starved a 16-core GPU machine until tests
    timed out. An OMP_NUM_THREADS set by the caller wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        import torch

        torch.set_num_threads(share)


_share_cores()


def pytest_runtest_setup(item):
    if item.get_closest_marker("dali") and not HAVE_DALI:
        pytest.skip("nvidia-dali is not installed")
    if item.get_closest_marker("ffcv") and not HAVE_FFCV:
        pytest.skip("ffcv is not installed")
    if item.get_closest_marker("gpu"):
        import torch
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state (torch, numpy, random),
    whichever worker runs it and whatever ran before: a draw a test forgot to seed
    gives the same inputs on every run, so a failure reproduces."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def run_tool(module: str, *args: str):
    """Run `python -m module args` as a user would; returns CompletedProcess."""
    import subprocess
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def converted(root: Path, size: tuple[int, int], n_train: int, n_test: int, split: str,
              seed: int, extra: tuple = ()) -> Path:
    """Synthetic images (make_synthetic) in root/images, one split converted with a
    raw write mode (every backend decodes the pixels PIL does) into root/conv."""
    from tools import convert_dataset, make_synthetic

    make_synthetic.generate(root / "images", size, n_train, n_test, seed=seed, quiet=True)
    rc = convert_dataset.main([str(root / "images"), "--split", split, "--out",
                               str(root / "conv"), "--write-mode", "raw", "--quiet", *extra])
    assert rc == 0
    return root / "conv"


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """200 synthetic 160x120 images converted with a raw .beton (so every backend
    decodes the same pixels as PIL does from the records); records only where FFCV
    is not installed (most GPU machines)."""
    return converted(tmp_path_factory.mktemp("small"), (160, 120), 200, 0, "train", seed=5,
                     extra=("--shard-size", "64", *([] if HAVE_FFCV else ["--no-beton"])))


def backends_here() -> list[str]:
    """Every backend this machine can run (dali-gpu only where CUDA is present)."""
    import torch

    out = []
    if HAVE_DALI and torch.cuda.is_available():
        out.append("dali-gpu")
    if HAVE_DALI:
        out.append("dali-cpu")
    if HAVE_FFCV:
        out.append("ffcv")
    return out + ["torchvision"]


# What each backend needs: its cases are always collected and skipped, counted, where
# the need is missing (pytest_runtest_setup), never silently left out.
NEEDS = {"dali-gpu": ("gpu", "dali"), "dali-cpu": ("dali",), "ffcv": ("ffcv",),
         "torchvision": ()}


def device_for(backend: str) -> str:
    """Where a backend's batches are compared: dali-gpu delivers on the GPU (it
    refuses a CPU device), every other backend on the CPU."""
    return "cuda" if backend == "dali-gpu" else "cpu"


def every_backend(*, dali_only: bool = False, without: tuple[str, ...] = ()) -> list:
    """Every backend as a parametrize value, marked with what it needs: a CPU
    machine reports the dali-gpu cases as skipped ("no CUDA device")."""
    names = [b for b in NEEDS if b not in without and (not dali_only or b.startswith("dali"))]
    return [pytest.param(b, marks=[getattr(pytest.mark, m) for m in NEEDS[b]]) for b in names]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """256 synthetic 40x40 images, records only: cheap to decode, for trainer tests."""
    return converted(tmp_path_factory.mktemp("tiny"), (40, 40), 256, 0, "train", seed=7,
                     extra=("--no-beton",))
