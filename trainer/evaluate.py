"""Frozen-backbone evaluation of a run: the tasks of the AugSelf paper's
protocol on any converted dataset (the probes themselves live in trainer/probes/).

Tasks (``EvalConfig.tasks``):
- ``linear``: logistic regression, L-BFGS, L2 strength swept on a validation
  split carved from train, refit on all of train; top-1 and mean per-class
  accuracy, for every labeling (the classes; plus one per factor of
  ``key=value,...`` class names, e.g. the synthetic set's colour and shape).
- ``knn``: weighted cosine kNN (k, temperature), every labeling.
- ``fewshot``: N-way K-shot episodes on the test split's classes.
- ``color``: ridge R^2 from features to each image's joint HSV histogram.
- ``augparams``: ridge R^2 of each augmentation parameter from the features of
  single views rendered by the project's loader with the run's recipe.

Features of un-augmented images are extracted once per (backbone, split, view
side) and cached in the run folder (trainer/probes/features.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from trainer.checkpoint import write_text_atomic
from trainer.probes.features import cached
from trainer.probes.labelings import labelings

TASKS = ("linear", "knn", "fewshot", "color", "augparams")


@dataclass
class EvalConfig:
    tasks: tuple[str, ...] = TASKS
    knn_k: int = 20
    knn_temperature: float = 0.07
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episodes: int = 2000
    seed: int = 0
    progress: bool = True
    # augparams: how the views are rendered (the run's recipe; backend auto = best here)
    backend: str = "auto"
    preset: str = "augself"
    jitter: tuple[float, float, float, float] | None = None
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(sorted(unknown))}; choose from "
                             f"{', '.join(TASKS)}")


def _augparams(backbone, data_train: str, data_test: str, size: int, ecfg: EvalConfig, device):
    from pipelines.build import LoaderConfig
    from trainer.probes.augparams import augparams_probe, view_features

    def views(data):
        lc = LoaderConfig(data=data, backend=ecfg.backend, preset=ecfg.preset, size=size,
                          jitter=ecfg.jitter, batch_size=256, seed=ecfg.seed, shuffle=False,
                          drop_last=False, device=str(device))
        return view_features(backbone, lc, device, ecfg.progress)

    return augparams_probe(views(data_train), views(data_test), seed=ecfg.seed)


def evaluate(backbone, train_data: str, test_data: str, size: int, device="cpu",
             ecfg: EvalConfig | None = None, cache_dir: Path | None = None) -> dict:
    """Every task of ``ecfg`` -> {task: result}; see the module docstring."""
    from trainer.probes.fewshot import fewshot_probe
    from trainer.probes.knn import knn_probe
    from trainer.probes.linear import linear_probe
    from trainer.probes.ridge import ridge_r2

    ecfg = ecfg or EvalConfig()
    ecfg.check()
    backbone = backbone.to(device)
    tr = cached(backbone, train_data, size, cache_dir, device, ecfg.progress)
    te = cached(backbone, test_data, size, cache_dir, device, ecfg.progress)
    tr_l, te_l = labelings(tr.classes, tr.labels), labelings(te.classes, te.labels)
    dev = torch.device(device)
    xa, xb = tr.feats.to(dev), te.feats.to(dev)
    out: dict = {}
    for task in ecfg.tasks:
        if task == "linear":
            out[task] = {name: linear_probe(xa, torch.as_tensor(tr_l[name]), xb,
                                            torch.as_tensor(te_l[name]), seed=ecfg.seed)
                         for name in tr_l}
        elif task == "knn":
            out[task] = {name: knn_probe(xa, torch.as_tensor(tr_l[name]), xb,
                                         torch.as_tensor(te_l[name]), k=ecfg.knn_k,
                                         temperature=ecfg.knn_temperature)
                         for name in tr_l}
        elif task == "fewshot":
            out[task] = {}
            for shot in ecfg.shots:  # a setting the split is too small for is skipped, named
                try:
                    out[task].update(fewshot_probe(
                        xb, torch.as_tensor(te.labels), ways=ecfg.ways, shots=(shot,),
                        queries=ecfg.queries, episodes=ecfg.episodes, seed=ecfg.seed))
                except ValueError as e:
                    print(f"fewshot: skipped {ecfg.ways}-way {shot}-shot: {e}", file=sys.stderr)
                    out[task][f"{ecfg.ways}way{shot}shot"] = {"skipped": str(e)}
        elif task == "color":
            out[task] = ridge_r2(xa, tr.hist.to(dev), xb, te.hist.to(dev), seed=ecfg.seed)
        elif task == "augparams":
            out[task] = _augparams(backbone, train_data, test_data, size, ecfg, dev)
    return out


def markdown_row(name: str, result: dict) -> tuple[str, str]:
    """(header, row) of the headline figures, for a table of runs."""
    cols: list[tuple[str, str]] = []
    for labeling, r in result.get("linear", {}).items():
        cols.append((f"linear {labeling}", f"{r['top1']:.3f}"))
    for labeling, r in result.get("knn", {}).items():
        cols.append((f"kNN {labeling}", f"{r['top1']:.3f}"))
    for episode, r in result.get("fewshot", {}).items():
        cols.append((episode, f"{r['mean']:.3f} ± {r['ci95']:.3f}" if "mean" in r else "skipped"))
    if "color" in result:
        cols.append(("colour R²", f"{result['color']['r2']:.3f}"))
    if "augparams" in result and result["augparams"]["mean_r2"] is not None:
        cols.append(("augparams R²", f"{result['augparams']['mean_r2']:.3f}"))
    header = "| run | " + " | ".join(c for c, _ in cols) + " |\n|---" + "|---" * len(cols) + "|"
    return header, f"| {name} | " + " | ".join(v for _, v in cols) + " |"


def dataset_name(data: str) -> str:
    p = Path(data).resolve()
    return f"{p.parent.name}_{p.name}"


RUN_FILES = ("config.json", "backbone.pt")


def missing_run_file(run_dir) -> Path | None:
    """The first file a finished run folder lacks (RUN_FILES), or None."""
    return next((Path(run_dir) / n for n in RUN_FILES if not (Path(run_dir) / n).is_file()),
                None)


def load_backbone(run_dir: Path, device="cpu"):
    """The run's backbone.pt into a fresh backbone built from its config.json."""
    from trainer.build import stem_for
    from trainer.config import from_dict
    from trainer.models import build_backbone

    saved = json.loads((Path(run_dir) / "config.json").read_text())
    cfg = from_dict(saved["config"])
    net, _ = build_backbone(cfg.backbone, stem_for(cfg))
    state = torch.load(Path(run_dir) / "backbone.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.to(device).to(memory_format=torch.channels_last), cfg, saved.get("resolved", {})


def evaluate_run(run_dir, train_data: str, test_data: str, device="cpu",
                 ecfg: EvalConfig | None = None) -> dict:
    """Evaluate RUN's backbone; writes RUN/eval/<dataset>.json and .md (and, for the
    run's own test split, RUN/eval.json)."""
    from pipelines.recipe import parse_jitter

    run_dir = Path(run_dir)
    net, cfg, resolved = load_backbone(run_dir, device)
    ecfg = ecfg or EvalConfig()
    ecfg.preset = resolved.get("preset", ecfg.preset)
    ecfg.jitter = parse_jitter(cfg.jitter) if cfg.jitter else None
    result = evaluate(net, train_data, test_data, cfg.size, device, ecfg,
                      cache_dir=run_dir / "eval" / "features")
    doc = {"run": str(run_dir), "train": str(train_data), "test": str(test_data),
           "size": cfg.size, "eval_config": asdict(ecfg), "results": result}
    name = dataset_name(test_data)
    (run_dir / "eval").mkdir(exist_ok=True)
    write_text_atomic(run_dir / "eval" / f"{name}.json", json.dumps(doc, indent=2) + "\n")
    header, row = markdown_row(run_dir.name, result)
    write_text_atomic(run_dir / "eval" / f"{name}.md", header + "\n" + row + "\n")
    return result
