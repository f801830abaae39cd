"""build_loader(cfg): one entry point for every backend, same Batch out.

Backends: ``dali-gpu``, ``dali-cpu``, ``ffcv``, ``torchvision``; ``auto`` picks
dali-gpu on a GPU, else dali-cpu, else ffcv, else torchvision, by what is
installed. Each loader iterates one epoch per ``iter()``; the caller sets the
epoch first (``loader.set_epoch(e)``), so epochs are never skipped or repeated
and a resumed run replays exactly. Last partial batch: dropped when
``drop_last`` (the training default), else yielded smaller (see epochs.py).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from pipelines.batch import STAGES, Finisher, default_stage
from pipelines.recipe import Recipe, from_spec, preset, with_jitter, with_rotated_views

BACKENDS = ("dali-gpu", "dali-cpu", "ffcv", "torchvision")


@dataclass
class LoaderConfig:
    data: str                  # a converted dataset folder (manifest.json, records/, data.beton)
    backend: str = "auto"
    preset: str = "augself"
    size: int = 224            # output side of the large views
    small_size: int | None = None  # multi-crop small views (swav)
    jitter: tuple[float, float, float, float] | None = None  # every view's b, c, s, h
                                                              # strengths; None: the preset's
    recipe: dict | None = None  # a recipe spec on top of the preset (recipe.from_spec)
    rotated_views: int = 0     # extra views like the first, turned by quarter turns, every
                               # turn once per 4 (recipe.with_rotated_views: E-SSL's views)
    rotated_size: int | None = None  # their side (default: half of size)
    batch_size: int = 256
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = True
    rank: int = 0
    world: int = 1
    workers: int = 2           # DataLoader workers / DALI threads / FFCV threads
    device: str | None = None  # default: cuda for dali-gpu or when available, else cpu
    keep_raw: bool = False     # keep uint8 views before normalising (show_views, tests)
    compile: bool = False      # torch.compile the torch photometric stage (stage="torch")
    prefetch: int = 1          # dali: batches finished ahead of the one handed over (on a GPU
                               # on a side stream, while the model trains); 0 = none
    stage: str = "auto"        # last stage of dali/ffcv (pipelines/batch.py): auto = numba on
                               # a CPU device, one Triton launch per view on a GPU; "torch"
                               # = the batched torch stage
    triton_check: bool = True  # the Triton stage's first batch checked against the torch
                               # stage; a disagreement switches to it (triton_check.py)
    on_damaged: str = "skip"   # a sample failing its checksum: "skip" (its slot repeats a
                               # good sample; counted, named on stderr) or "stop" (raise)


def available() -> list[str]:
    have_dali = importlib.util.find_spec("nvidia") is not None and \
        importlib.util.find_spec("nvidia.dali") is not None
    out = []
    if have_dali and torch.cuda.is_available():
        out.append("dali-gpu")
    if have_dali:
        out.append("dali-cpu")
    if importlib.util.find_spec("ffcv") is not None:
        out.append("ffcv")
    out.append("torchvision")
    return out


def readable(data: str) -> list[str]:
    """The backends that can read the dataset in ``data``: the DALI loaders and
    torchvision read records/, FFCV reads data.beton (a dataset converted with
    --no-records or --no-beton has only one of them)."""
    from pathlib import Path

    from pipelines.integrity import read_manifest
    outputs = read_manifest(Path(data))["outputs"]
    return [b for b in BACKENDS if (outputs.get("beton") if b == "ffcv"
                                    else outputs.get("records"))]


def resolve_backend(name: str, data: str | None = None, device: str | None = None) -> str:
    """"auto" -> the best backend here (that can read ``data`` when given, and
    that delivers on ``device`` when one is given: a CPU device rules out
    dali-gpu); any other name is checked and returned."""
    here = available()
    if name == "auto" and device is not None and torch.device(device).type != "cuda":
        here = [b for b in here if b != "dali-gpu"]
    usable = [b for b in here if b in readable(data)] if data else here
    if name == "auto":
        if not usable:
            raise RuntimeError(f"{data}: no backend here reads this dataset (it has "
                               f"{' and '.join(readable(data)) or 'nothing'}; installed: "
                               f"{', '.join(here)})")
        return usable[0]
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} "
                         "or auto")
    if name not in here:
        raise RuntimeError(f"backend {name!r} is not available here (have: {', '.join(here)})")
    if data and name not in usable:
        what = "data.beton (converted with --no-beton)" if name == "ffcv" else \
            "records/ (converted with --no-records)"
        raise ValueError(f"{data}: has no {what}; use --backend "
                         f"{' or '.join(usable) or 'auto'}, or re-convert")
    return name


def resolve_recipe(cfg: LoaderConfig) -> Recipe:
    """The preset at the configured sizes, then the spec's settings, then --jitter,
    then the rotated views (which copy the first view as it is by then)."""
    recipe = preset(cfg.preset, cfg.size, cfg.small_size)
    if cfg.recipe:
        recipe = from_spec(cfg.recipe, recipe)
    if cfg.jitter is not None:
        recipe = with_jitter(recipe, cfg.jitter)
    if cfg.rotated_views:
        recipe = with_rotated_views(recipe, cfg.rotated_views,
                                    cfg.rotated_size or max(8, cfg.size // 2))
    return recipe


@dataclass(frozen=True)
class Resolved:
    """What build_loader chose, once, from a LoaderConfig; every loader records it
    as ``loader.resolved`` (and its recipe and device as ``loader.recipe`` and
    ``loader.device``), and callers read the choices from there."""
    backend: str               # one of BACKENDS
    device: torch.device       # where the Batches are delivered
    stage: str                 # the last stage (pipelines/batch.py STAGES)
    recipe: Recipe             # every view's settings, fixed for the loader's life
    dtype: torch.dtype         # of the normalised views


def resolve_stage(backend: str, device: torch.device, stage: str) -> str:
    """"auto": views rendered where the loader decodes when it can render there
    (torchvision's workers; FFCV's op for a CPU device), else numba on a CPU
    device and the Triton stage on a GPU (batch.default_stage). An explicit
    stage is checked against what the backend can do."""
    if stage != "auto" and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)} or auto")
    if backend == "torchvision":
        if stage not in ("auto", "done"):
            raise ValueError("the torchvision backend renders views in its workers; "
                             f"stage={stage!r} applies to dali and ffcv only")
        return "done"
    if stage == "auto":
        return "done" if backend == "ffcv" and device.type == "cpu" else default_stage(device)
    if stage == "done" and backend != "ffcv":
        raise ValueError(f"{backend} does not render views itself: stage 'done' is for ffcv "
                         "and torchvision")
    return stage


def resolve(cfg: LoaderConfig, dtype: torch.dtype = torch.float32) -> Resolved:
    """Backend, device, stage and recipe, each decided here and nowhere else."""
    backend = resolve_backend(cfg.backend, cfg.data, cfg.device)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if backend == "dali-gpu" and device.type != "cuda":
        raise ValueError(f"dali-gpu delivers on a CUDA device, not {device}")
    return Resolved(backend, device, resolve_stage(backend, device, cfg.stage),
                    resolve_recipe(cfg), dtype)


def build_loader(cfg: LoaderConfig, dtype: torch.dtype = torch.float32):
    """The loader for ``cfg``: resolved once (``resolve``), then built from the
    config and those choices; ``loader.resolved`` says what was chosen."""
    chosen = resolve(cfg, dtype)
    finish = Finisher(chosen.recipe, chosen.device, chosen.dtype, cfg.keep_raw, chosen.stage,
                      cfg.compile, cfg.triton_check)
    if chosen.backend.startswith("dali"):
        from pipelines.loader_dali import DaliLoader as Loader
    elif chosen.backend == "ffcv":
        from pipelines.loader_ffcv import FfcvLoader as Loader
    else:
        from pipelines.loader_torchvision import TorchvisionLoader as Loader
    return Loader(cfg, chosen, finish)
