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

The two splits are converted apart and number their classes apart, so labels are
matched by name (trainer/probes/labelings.py): test samples whose class (or factor
value) the train split lacks are left out of linear and knn, named on stderr and
in the JSON; a labeling only one split has is skipped. A task, or one labeling or
setting of it, that cannot run on these splits is ``{"skipped": why}`` and the
others still run; only an evaluation that scores nothing at all is an error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.cli import Range
from trainer.checkpoint import BACKBONE_FILES, backbone_info, load_backbone_state, write_text_atomic
from trainer.probes.features import cached, read_labels
from trainer.probes.labelings import Matched, match

TASKS = ("linear", "knn", "fewshot", "color", "augparams")
BY_LABEL = ("linear", "knn")  # the tasks that score a labeling of both splits

# The documented range of every numeric setting (tools/evaluate.py's options too).
KNN_K = Range(1, 10000, integer=True)
KNN_T = Range(0, 10, lo_open=True)
WAYS = Range(2, 1000, integer=True)
SHOTS = Range(1, 10000, integer=True)
QUERIES = Range(1, 10000, integer=True)
EPISODES = Range(1, 1_000_000, integer=True)


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
        for name, rng in (("knn_k", KNN_K), ("knn_temperature", KNN_T), ("ways", WAYS),
                          ("queries", QUERIES), ("episodes", EPISODES)):
            rng.check(name, getattr(self, name), "EvalConfig")
        if not self.shots:
            raise ValueError("EvalConfig: shots is empty; give at least one, e.g. (1, 5)")
        for shot in self.shots:
            SHOTS.check("shots", shot, "EvalConfig")


def _augparams(backbone, data_train: str, data_test: str, size: int, ecfg: EvalConfig, device):
    from pipelines.build import LoaderConfig
    from trainer.probes.augparams import augparams_probe, view_features

    def views(data):
        lc = LoaderConfig(data=data, backend=ecfg.backend, preset=ecfg.preset, size=size,
                          jitter=ecfg.jitter, batch_size=256, seed=ecfg.seed, shuffle=False,
                          drop_last=False, device=str(device))
        return view_features(backbone, lc, device, ecfg.progress)

    return augparams_probe(views(data_train), views(data_test), seed=ecfg.seed)


def _skipped(task: str, what: str | None, reason: str) -> dict:
    """The record of a task (or one labeling of it) that could not run; one line says so."""
    print(f"evaluate: skipped {task}{f' ({what})' if what else ''}: {reason}", file=sys.stderr)
    return {"skipped": reason}


def _scored(result: dict) -> bool:
    """Whether a task's result holds a figure: not skipped, or (a task of several
    labelings or settings) one of them not skipped."""
    if "skipped" in result:
        return False
    if result and all(isinstance(v, dict) for v in result.values()):
        return any(_scored(v) for v in result.values())
    return True


def _labels_report(matched: dict[str, Matched], missing: dict[str, str], tasks) -> dict:
    """Per labeling, what the label tasks score: test samples kept, and those left
    out because train lacks their name; or why the labeling is skipped. Each loss
    is one line on stderr when a label task runs."""
    out = {}
    for name, m in matched.items():
        kind = "classes" if name == "class" else "values"
        lost = sum(m.unknown.values())
        out[name] = {f"unknown_test_{kind}": list(m.unknown), "excluded_test_samples": lost,
                     "test_samples": int((m.test >= 0).sum())}
        if lost and any(t in BY_LABEL for t in tasks):
            many = len(m.unknown) > 1
            what = (("classes" if many else "a class") if name == "class" else
                    f"{name} values" if many else f"a {name} value")
            print(f"evaluate: {lost} test samples of {what} the train split lacks "
                  f"({', '.join(map(repr, m.unknown))}) are left out of "
                  f"{' and '.join(t for t in tasks if t in BY_LABEL)}", file=sys.stderr)
    out.update({name: {"skipped": why} for name, why in missing.items()})
    return out


def _by_label(task: str, probe, xa, xb, matched: dict[str, Matched], missing: dict[str, str],
              dev) -> dict:
    """``probe(train_x, train_y, test_x, test_y)`` for every labeling, in the train
    split's index space, over the labelled train samples and the test samples whose
    name train has; a labeling that cannot be scored is recorded as skipped."""
    out = {}
    for name in dict.fromkeys([*matched, *missing]):
        m = matched.get(name)
        why = missing[name] if m is None else m.why_not()
        if why is None:
            keep_a, keep_b = m.train >= 0, m.test >= 0
            try:
                out[name] = probe(xa[torch.from_numpy(keep_a).to(dev)], m.train[keep_a],
                                  xb[torch.from_numpy(keep_b).to(dev)], m.test[keep_b])
                continue
            except ValueError as e:  # the split is too small for it (probes/linear.py)
                why = str(e)
        out[name] = _skipped(task, name, why)
    return out


def _reasons(results: dict) -> str:
    """Every skip of ``results``, for the one line that says nothing was scored."""
    why = []
    for task, r in results.items():
        if "skipped" in r:
            why.append(f"{task}: {r['skipped']}")
        else:
            why += [f"{task} ({k}): {v['skipped']}" for k, v in r.items()
                    if isinstance(v, dict) and "skipped" in v]
    return "; ".join(why)


def evaluate(backbone, train_data: str, test_data: str, size: int, device="cpu",
             ecfg: EvalConfig | None = None, cache_dir: Path | None = None) -> dict:
    """Every task of ``ecfg`` -> {task: result}; see the module docstring. A task
    (or one labeling of it) that cannot run is ``{"skipped": why}``, named on
    stderr; a ValueError when nothing at all can be scored."""
    return _evaluate(backbone, train_data, test_data, size, device, ecfg, cache_dir)[0]


def _evaluate(backbone, train_data: str, test_data: str, size: int, device, ecfg, cache_dir):
    """(results, the labels report of evaluate_run's JSON)."""
    from trainer.probes.fewshot import fewshot_probe
    from trainer.probes.knn import knn_probe
    from trainer.probes.linear import linear_probe
    from trainer.probes.ridge import ridge_r2

    ecfg = ecfg or EvalConfig()
    ecfg.check()
    # Labels first, from the records (no image decoded): an edited manifest, or a
    # label task with nothing to score, is named before any feature is extracted.
    tr_classes, tr_labels = read_labels(train_data)
    te_classes, te_labels = read_labels(test_data)
    matched, missing = match(tr_classes, tr_labels, te_classes, te_labels)
    if set(ecfg.tasks) <= set(BY_LABEL) and all(m.why_not() for m in matched.values()):
        why = "; ".join([*(f"{n}: {m.why_not()}" for n, m in matched.items()),
                         *(f"{n}: {w}" for n, w in missing.items())])
        raise ValueError(f"nothing to evaluate: {test_data} against {train_data}: {why}")
    report = _labels_report(matched, missing, ecfg.tasks)

    backbone = backbone.to(device)
    tr = cached(backbone, train_data, size, cache_dir, device, ecfg.progress)
    te = cached(backbone, test_data, size, cache_dir, device, ecfg.progress)
    for split, labels, data in ((tr, tr_labels, train_data), (te, te_labels, test_data)):
        if not np.array_equal(split.labels, labels):  # the cache key should make it so
            raise RuntimeError(f"the cached features of {data} disagree with its records; "
                               f"delete {cache_dir} and evaluate again")
    dev = torch.device(device)
    xa, xb = tr.feats.to(dev), te.feats.to(dev)
    out: dict = {}
    for task in ecfg.tasks:
        if task == "linear":
            out[task] = _by_label(task, lambda a, ya, b, yb: linear_probe(
                a, torch.as_tensor(ya), b, torch.as_tensor(yb), seed=ecfg.seed),
                xa, xb, matched, missing, dev)
        elif task == "knn":
            out[task] = _by_label(task, lambda a, ya, b, yb: knn_probe(
                a, torch.as_tensor(ya), b, torch.as_tensor(yb), k=ecfg.knn_k,
                temperature=ecfg.knn_temperature), xa, xb, matched, missing, dev)
        elif task == "fewshot":
            # The test split's own labels: episodes never meet the train split's
            # numbering. Unlabelled samples (-1) are no class.
            keep = te_labels >= 0
            xq, yq = xb[torch.from_numpy(keep).to(dev)], torch.as_tensor(te_labels[keep])
            out[task] = {}
            for shot in ecfg.shots:  # a setting the split is too small for is skipped, named
                try:
                    out[task].update(fewshot_probe(
                        xq, yq, ways=ecfg.ways, shots=(shot,), queries=ecfg.queries,
                        episodes=ecfg.episodes, seed=ecfg.seed))
                except ValueError as e:
                    out[task][f"{ecfg.ways}way{shot}shot"] = _skipped(
                        task, f"{ecfg.ways}-way {shot}-shot", str(e))
        else:  # color, augparams: no labels; a split too small is skipped, named
            try:
                out[task] = (ridge_r2(xa, tr.hist.to(dev), xb, te.hist.to(dev), seed=ecfg.seed)
                             if task == "color" else
                             _augparams(backbone, train_data, test_data, size, ecfg, dev))
            except ValueError as e:
                out[task] = _skipped(task, None, str(e))
    if not any(_scored(r) for r in out.values()):
        raise ValueError(f"nothing could be evaluated on {test_data} against {train_data}: "
                         f"{_reasons(out)}")
    return out, report


def _cell(r: dict, fmt) -> str:
    return "skipped" if "skipped" in r else fmt(r)


def markdown_row(name: str, result: dict, backbone: dict | None = None) -> tuple[str, str]:
    """(header, row) of the headline figures, for a table of runs; ``backbone``
    (trainer/checkpoint.py's backbone_info) adds the step the backbone is from."""
    cols: list[tuple[str, str]] = []
    if backbone and backbone.get("step") is not None:
        cols.append(("step", f"{backbone['step']}"
                             f"{' (unfinished)' if backbone.get('finished') is False else ''}"))
    for labeling, r in result.get("linear", {}).items():
        cols.append((f"linear {labeling}", _cell(r, lambda r: f"{r['top1']:.3f}")))
    for labeling, r in result.get("knn", {}).items():
        cols.append((f"kNN {labeling}", _cell(r, lambda r: f"{r['top1']:.3f}")))
    for episode, r in result.get("fewshot", {}).items():
        cols.append((episode, _cell(r, lambda r: f"{r['mean']:.3f} ± {r['ci95']:.3f}")))
    if "color" in result:
        cols.append(("colour R²", _cell(result["color"], lambda r: f"{r['r2']:.3f}")))
    aug = result.get("augparams")
    if aug is not None and (aug.get("mean_r2") is not None or "skipped" in aug):
        cols.append(("augparams R²", _cell(aug, lambda r: f"{r['mean_r2']:.3f}")))
    header = "| run | " + " | ".join(c for c, _ in cols) + " |\n|---" + "|---" * len(cols) + "|"
    return header, f"| {name} | " + " | ".join(v for _, v in cols) + " |"


def dataset_name(data: str) -> str:
    p = Path(data).resolve()
    return f"{p.parent.name}_{p.name}"


RUN_FILES = ("config.json", BACKBONE_FILES)  # a tuple: any one of them


def missing_run_file(run_dir) -> Path | None:
    """The first file a finished run folder lacks (RUN_FILES; of the backbone files,
    named by the first when it has neither), or None."""
    for names in RUN_FILES:
        names = (names,) if isinstance(names, str) else names
        if not any((Path(run_dir) / n).is_file() for n in names):
            return Path(run_dir) / names[0]
    return None


def load_backbone(run_dir: Path, device="cpu"):
    """The run's backbone into a fresh backbone built from its config.json (strict):
    backbone.safetensors where there is one, else backbone.pt; each one there is
    first checked against backbone.json (trainer/checkpoint.py: load_backbone_state)."""
    from trainer.build import stem_for
    from trainer.config import from_dict
    from trainer.models import build_backbone

    saved = json.loads((Path(run_dir) / "config.json").read_text())
    cfg = from_dict(saved["config"])
    net, _ = build_backbone(cfg.backbone, stem_for(cfg))
    state, _ = load_backbone_state(run_dir)
    net.load_state_dict(state)
    return net.to(device).to(memory_format=torch.channels_last), cfg, saved.get("resolved", {})


def evaluate_run(run_dir, train_data: str, test_data: str, device="cpu",
                 ecfg: EvalConfig | None = None) -> dict:
    """Evaluate RUN's backbone; writes RUN/eval/<dataset>.json (with the step the
    backbone is from, and which test samples were left out) and .md. A backbone file
    (.safetensors or .pt) that backbone.json does not describe is refused before any
    work."""
    run_dir = Path(run_dir)
    ecfg = ecfg or EvalConfig()
    ecfg.check()
    backbone = backbone_info(run_dir)
    net, cfg, resolved = load_backbone(run_dir, device)
    ecfg.preset = resolved.get("preset", ecfg.preset)
    ecfg.jitter = cfg.jitter  # a typed tuple or None: parsed once, by the Config
    result, labels = _evaluate(net, train_data, test_data, cfg.size, device, ecfg,
                               cache_dir=run_dir / "eval" / "features")
    doc = {"run": str(run_dir), "train": str(train_data), "test": str(test_data),
           "size": cfg.size, "backbone": backbone, "labels": labels,
           "eval_config": asdict(ecfg), "results": result}
    name = dataset_name(test_data)
    (run_dir / "eval").mkdir(exist_ok=True)
    write_text_atomic(run_dir / "eval" / f"{name}.json", json.dumps(doc, indent=2) + "\n")
    header, row = markdown_row(run_dir.name, result, backbone)
    write_text_atomic(run_dir / "eval" / f"{name}.md", header + "\n" + row + "\n")
    return result
