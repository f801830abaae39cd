"""Evaluate a run's pretrained backbone on a labelled split.

    python -m tools.evaluate RUN --train DATA_TRAIN --test DATA_TEST

Features of un-augmented images (resized to the run's view size) from
RUN/backbone.pt, then kNN (k 20) and linear (logistic regression) accuracy for
every labeling: the dataset's classes, plus colour and shape for the synthetic
set. Prints a table and writes RUN/eval.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (config.json and backbone.pt from trainer.run)")
    p.add_argument("--train", required=True, help="converted split to fit the classifiers on")
    p.add_argument("--test", required=True, help="converted split to report accuracy on")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    run = Path(a.run)
    for need in ("config.json", "backbone.pt"):
        if not (run / need).is_file():
            print(f"error: {run / need} is missing; is {run} a finished trainer run?",
                  file=sys.stderr)
            return 2
    from trainer.evaluate import evaluate_run
    try:
        result = evaluate_run(run, a.train, a.test, a.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'labeling':<10} {'kNN':>7} {'linear':>7}")
    for name, acc in result.items():
        print(f"{name:<10} {acc['knn']:7.3f} {acc['linear']:7.3f}")
    print(f"written: {run / 'eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
