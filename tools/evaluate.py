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
The test split's labels are matched to the train split's by name: a test class
(or factor value) the train split lacks is named on stderr and its samples are
left out of linear and knn; a labeling only one split has is skipped. A task, or
one labeling of it, that cannot run on these splits (too few samples) is recorded
as skipped, named on stderr, and the others still run.
The backbone is RUN/backbone.safetensors, or RUN/backbone.pt where there is no
.safetensors (a run of an earlier version); each one there is checked against
RUN/backbone.json first, and one it does not describe is refused, named.
Writes RUN/eval/<dataset>.json (every figure, the step the backbone is from,
which test samples were left out) and .md (one table row).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines import cli
from pipelines.folder_lock import FolderLock
from trainer import evaluate as ev
from trainer.config import SEED  # the trainer's range: a run's own seed evaluates


def _tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in tasks if t not in ev.TASKS]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(bad) or '(none)'}; "
                                         f"choose from {', '.join(ev.TASKS)}")
    return tasks


def _shots(text: str) -> tuple[int, ...]:
    one = cli.ranged(ev.SHOTS, "--shots")
    return tuple(one(s.strip()) for s in text.split(","))


def _check_split(path: str, flag: str) -> None:
    if not (Path(path) / "manifest.json").is_file():
        raise FileNotFoundError(f"{flag} {path}: no manifest.json there; expected a folder "
                                "written by tools/convert_dataset.py")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="evaluate",
                                usage="python -m tools.evaluate RUN --train DIR --test DIR "
                                      "[options]",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder from trainer.run (config.json, and "
                               "backbone.safetensors or backbone.pt)")
    p.add_argument("--train", required=True, help="converted split to fit the probes on")
    p.add_argument("--test", required=True, help="converted split to report on")
    p.add_argument("--task", type=_tasks, default=ev.TASKS,
                   help=f"comma-separated tasks (default: {','.join(ev.TASKS)})")
    p.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    p.add_argument("--knn-k", type=cli.ranged(ev.KNN_K, "--knn-k"), default=20,
                   help=f"neighbours, a whole number in {ev.KNN_K} (default 20)")
    p.add_argument("--knn-t", type=cli.ranged(ev.KNN_T, "--knn-t"), default=0.07,
                   help=f"kNN temperature, in {ev.KNN_T} (default 0.07)")
    p.add_argument("--ways", type=cli.ranged(ev.WAYS, "--ways"), default=5,
                   help=f"few-shot classes per episode, in {ev.WAYS} (default 5)")
    p.add_argument("--shots", type=_shots, default=(1, 5),
                   help=f"few-shot shots, comma-separated, each in {ev.SHOTS} (default 1,5)")
    p.add_argument("--queries", type=cli.ranged(ev.QUERIES, "--queries"), default=15,
                   help=f"few-shot queries per class, in {ev.QUERIES} (default 15)")
    p.add_argument("--episodes", type=cli.ranged(ev.EPISODES, "--episodes"), default=2000,
                   help=f"few-shot episodes, in {ev.EPISODES} (default 2000)")
    p.add_argument("--backend", default="auto", help="loader backend for augparams (auto)")
    p.add_argument("--seed", type=cli.ranged(SEED, "--seed"), default=0,
                   help=f"splits, episodes, in {SEED} (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_debug(p)
    a = p.parse_args(argv)
    run = Path(a.run)
    missing = ev.missing_run_file(run)
    if missing is not None:
        raise FileNotFoundError(f"{missing}: missing; is {run} a finished trainer run "
                                "(config.json, and backbone.safetensors or backbone.pt)?")
    _check_split(a.train, "--train")
    _check_split(a.test, "--test")
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    ecfg = ev.EvalConfig(tasks=a.task, knn_k=a.knn_k, knn_temperature=a.knn_t, ways=a.ways,
                         shots=a.shots, queries=a.queries, episodes=a.episodes, seed=a.seed,
                         progress=not a.no_progress, backend=a.backend)
    # The run folder is one writer's at a time (pipelines/folder_lock.py): a trainer
    # still running there (or another evaluation) is named, not raced for eval/.
    with FolderLock(run, "tools.evaluate"):
        result = ev.evaluate_run(run, a.train, a.test, device, ecfg)
    written = run / "eval" / ev.dataset_name(a.test)
    print(Path(f"{written}.md").read_text(), end="")  # the row, with the backbone's step
    aug = result.get("augparams", {})
    if "r2" in aug:
        r2 = {k: (round(v, 3) if v is not None else None) for k, v in aug["r2"].items()}
        print("augparams R² per parameter: " + json.dumps(r2))
    print(f"written: {written}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "evaluate"))
