"""Curves of one or more runs into a PNG, for those who use neither
TensorBoard nor W&B.

    python -m tools.plot_run RUN [RUN ...] --out curves.png [--keys loss,lr]

One panel per logged quantity (every numeric key of metrics.jsonl except step
and epoch, or those named by --keys) against the step, one line per run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pipelines import cli

SKIP = {"step", "epoch"}


def read(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {run} a run folder?")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {n}: {cli.shown(row, 60)} is not a JSON object of "
                             "logged quantities; is it a metrics.jsonl the trainer wrote?")
        rows.append(row)
    return rows


def _finite(v) -> bool:
    """A plottable number: finite, and within 1e300 of 0 (matplotlib's axis
    arithmetic overflows near float's limit and fails as "arange: cannot compute
    length")."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        and abs(v) <= 1e300


def keys_of(runs: dict[str, list[dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for rows in runs.values():
        for r in rows:
            for k, v in r.items():
                if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen[k] = None
    return list(seen)


def plot(runs: dict[str, list[dict]], keys: list[str], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, data in runs.items():
            # a non-finite value (a skipped step's NaN or inf loss) is a gap: one inf
            # would make the axis infinite, and matplotlib fails on it
            pts = [(r["step"], r[key]) for r in data if _finite(r.get(key))
                   and _finite(r.get("step"))]
            if pts:
                ax.plot(*zip(*pts), label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="plot_run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--keys", default="", help="comma-separated quantities (default: all)")
    cli.add_debug(p)
    a = p.parse_args(argv)
    runs = {Path(r).name or str(r): read(Path(r)) for r in a.runs}
    keys = [k for k in a.keys.split(",") if k] or keys_of(runs)
    missing = [k for k in keys if k not in keys_of(runs)]
    if missing or not keys:
        raise ValueError(f"nothing to plot for {', '.join(missing) or 'these runs'}; logged: "
                         f"{', '.join(keys_of(runs)) or 'nothing yet'}")
    plot(runs, keys, Path(a.out))
    print(f"wrote {a.out}: {len(keys)} panels, {len(runs)} runs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "plot_run"))
