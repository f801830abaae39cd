"""Evaluate a run's pretrained backbone on any converted dataset.

    python -m tools.evaluate RUN --train DIR --test DIR [--task linear,knn,fewshot,color,augparams]

Frozen features of un-augmented images (resized to the run's view size), on
the GPU when there is one, extracted once and cached in RUN/eval/features.
Tasks (default: all):

  linear     logistic regression (L-BFGS), L2 swept on a validation split of
             train, refit on all of train: top-1 and mean per-class accuracy
  knn        weighted cosine kNN (--knn-k, --knn-t)
  fewshot    N-way K-shot episodes on the test split (--ways, --shots,
             --queries, --episodes): mean accuracy with a 95% interval
  color      ridge regression to each image's 8x3x3 HSV histogram: R^2
  augparams  ridge regression to each augmentation parameter of single views
             rendered by the project's loader with the run's recipe: R^2

linear and knn run for every labeling: the dataset's classes, and one per
factor when class names read key=value,... (the synthetic set: colour, shape).
Writes RUN/eval/<dataset>.json (every figure) and .md (one table row).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines import cli
from trainer.evaluate import TASKS, EvalConfig, missing_run_file


def _tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(bad) or '(none)'}; "
                                         f"choose from {', '.join(TASKS)}")
    return tasks


def _shots(text: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 1,5") from None
    if not shots or min(shots) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: shots must be >= 1")
    return shots


def _check_split(path: str, flag: str) -> str | None:
    if not (Path(path) / "manifest.json").is_file():
        return (f"{flag} {path}: no manifest.json there; expected a folder written by "
                "tools/convert_dataset.py")
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.evaluate",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (config.json and backbone.pt from trainer.run)")
    p.add_argument("--train", required=True, help="converted split to fit the probes on")
    p.add_argument("--test", required=True, help="converted split to report on")
    p.add_argument("--task", type=_tasks, default=TASKS,
                   help=f"comma-separated tasks (default: {','.join(TASKS)})")
    p.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours (default 20)")
    p.add_argument("--knn-t", type=float, default=0.07, help="kNN temperature (default 0.07)")
    p.add_argument("--ways", type=int, default=5, help="few-shot classes per episode (5)")
    p.add_argument("--shots", type=_shots, default=(1, 5), help="few-shot shots (1,5)")
    p.add_argument("--queries", type=int, default=15, help="few-shot queries per class (15)")
    p.add_argument("--episodes", type=int, default=2000, help="few-shot episodes (2000)")
    p.add_argument("--backend", default="auto", help="loader backend for augparams (auto)")
    p.add_argument("--seed", type=int, default=0, help="splits, episodes (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_debug(p)
    a = p.parse_args(argv)
    run = Path(a.run)
    missing = missing_run_file(run)
    if missing is not None:
        print(f"error: {missing} is missing; is {run} a finished trainer run?", file=sys.stderr)
        return 2
    for path, flag in ((a.train, "--train"), (a.test, "--test")):
        msg = _check_split(path, flag)
        if msg:
            print(f"error: {msg}", file=sys.stderr)
            return 2
    if min(a.knn_k, a.ways, a.queries, a.episodes) < 1 or a.ways < 2:
        print("error: --knn-k, --queries and --episodes must be >= 1, --ways >= 2",
              file=sys.stderr)
        return 2
    import torch

    from trainer.evaluate import dataset_name, evaluate_run, markdown_row
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    ecfg = EvalConfig(tasks=a.task, knn_k=a.knn_k, knn_temperature=a.knn_t, ways=a.ways,
                      shots=a.shots, queries=a.queries, episodes=a.episodes, seed=a.seed,
                      progress=not a.no_progress, backend=a.backend)
    try:
        result = evaluate_run(run, a.train, a.test, device, ecfg)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header, row = markdown_row(run.name, result)
    print(header + "\n" + row)
    if "augparams" in result:
        r2 = {k: (round(v, 3) if v is not None else None)
              for k, v in result["augparams"]["r2"].items()}
        print("augparams R² per parameter: " + json.dumps(r2))
    print(f"written: {run / 'eval' / dataset_name(a.test)}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "evaluate"))
