"""The demo's report: demo/report.json (one row per method and seed),
demo/report.md (means with their spread over seeds, the paired AugSelf minus
SimSiam difference per seed, and a plain verdict) and demo/report.png."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

# metric key -> (label, what it measures)
METRICS = {
    "colour_linear": "colour linear acc.",
    "colour_knn": "colour kNN acc.",
    "colour_r2": "colour probe R²",
    "shape_linear": "shape linear acc.",
    "shape_knn": "shape kNN acc.",
}


def metrics_of(result: dict) -> dict[str, float]:
    """The demo's metrics from a trainer.evaluate result. A figure the evaluation
    skipped (it records why) is a ValueError saying so, not a KeyError."""
    def figure(task: str, labeling: str | None, key: str) -> float:
        entry = result.get(task, {})
        entry = entry.get(labeling, {}) if labeling else entry
        if key not in entry:
            raise ValueError(f"the evaluation has no {task} {labeling or ''} {key}: "
                             f"{entry.get('skipped', 'missing')}")
        return entry[key]

    return {"colour_linear": figure("linear", "colour", "top1"),
            "colour_knn": figure("knn", "colour", "top1"),
            "colour_r2": figure("color", None, "r2"),
            "shape_linear": figure("linear", "shape", "top1"),
            "shape_knn": figure("knn", "shape", "top1")}


def _spread(vals: list[float]) -> str:
    if len(vals) < 2:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def verdict(rows: list[dict], base: str, treated: str, key: str) -> tuple[list[float], str]:
    """Paired per-seed differences treated - base on ``key``, and a sentence."""
    by = {(r["method"], r["seed"]): r for r in rows}
    seeds = sorted(s for m, s in by if m == base and (treated, s) in by)
    diffs = [by[(treated, s)][key] - by[(base, s)][key] for s in seeds]
    if not diffs:
        return [], "no paired seeds"
    mean = statistics.mean(diffs)
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    if all(d > 0 for d in diffs):
        word = f"higher in every seed ({len(diffs)}/{len(diffs)})"
    elif all(d < 0 for d in diffs):
        word = f"lower in every seed ({len(diffs)}/{len(diffs)})"
    else:
        word = "not consistent across seeds: no effect shown"
    return diffs, f"{mean:+.3f} ± {spread:.3f} ({word})"


def write(out: Path, rows: list[dict], reference: dict | None, setup: str,
          base: str = "SimSiam", treated: str = "SimSiam + AugSelf") -> tuple[Path, Path]:
    """rows: {"method", "seed", metric keys..., "seconds", "images_per_s"}."""
    (out / "report.json").write_text(json.dumps(
        {"setup": setup, "runs": rows, "untrained": reference}, indent=2) + "\n")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# Demo: {base} vs {treated} on coloured shapes", "", setup, "",
             f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}, on the "
             "held-out split, from frozen features of un-augmented images.", "",
             "| pretraining | " + " | ".join(METRICS.values()) + " |",
             "|---" * (len(METRICS) + 1) + "|"]
    if reference:
        lines.append("| untrained (random init) | "
                     + " | ".join(f"{reference[k]:.3f}" for k in METRICS) + " |")
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        lines.append(f"| {m} | " + " | ".join(_spread([r[k] for r in mine]) for k in METRICS)
                     + " |")
    lines += ["", f"**{treated} minus {base}**, paired by seed:", "",
              "| metric | per seed | mean ± sd |", "|---|---|---|"]
    summary = {}
    for k, label in METRICS.items():
        diffs, text = verdict(rows, base, treated, k)
        summary[k] = text
        lines.append(f"| {label} | {', '.join(f'{d:+.3f}' for d in diffs)} | {text} |")
    # The verdict reads the colour probe: how much of each image's colour histogram
    # the features hold is the paper's motivating measure (Lee et al. 2021, Fig. 1);
    # the colour task's accuracies are reported beside it, each with its own sign.
    colour_keys = ("colour_linear", "colour_r2")
    shown = "higher in every seed" in summary["colour_r2"]
    lines += ["", "Chance: colour 1/12 (hue bins 30 degrees wide), shape 1/5. The colour "
              "probe is the R² of a ridge regression from the features to each image's "
              "8x3x3 HSV histogram.", ""]
    others = "; ".join(f"{METRICS[k]} {summary[k]}" for k in ("colour_knn", "colour_linear"))
    if shown:
        lines.append(f"**Verdict: the effect shows on the colour probe.** {treated} keeps more "
                     f"of the images' colour histogram than {base} in every seed (R² "
                     f"{summary['colour_r2']}): what AugSelf claims. On the colour task: "
                     f"{others}.")
    else:
        lines.append(f"**Verdict: the effect does not show in this budget.** {treated} does "
                     f"not keep more of the images' colour histogram than {base} in every "
                     f"seed (R² {summary['colour_r2']}). On the colour task: {others}.")
    if reference:
        base_rows = [r for r in rows if r["method"] == base]
        above = [k for k in colour_keys
                 if statistics.mean(r[k] for r in base_rows) > reference[k]]
        if above:
            lines += ["", f"Read with the untrained row: in this short budget {base} is still "
                      "above the random-init floor on " + " and ".join(METRICS[k] for k in above)
                      + ": pretraining has not yet erased colour, so what the demo shows is "
                      f"the gap between {base} and {treated}, not invariance wiping colour "
                      "out (the paper's longer runs)."]
    lines += ["", "Per run:", "", "| method | seed | " + " | ".join(METRICS) +
              " | train s | img/s |", "|---" * (len(METRICS) + 4) + "|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | "
                     + " | ".join(f"{r[k]:.3f}" for k in METRICS)
                     + f" | {r.get('seconds', 0):.0f} | {r.get('images_per_s', 0):.0f} |")
    lines += ["", "![metrics](report.png)", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return md, _plot(out / "report.png", rows, methods, reference)


def _plot(png: Path, rows, methods, reference) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(METRICS)
    groups = ([("untrained", [reference])] if reference else []) + \
        [(m, [r for r in rows if r["method"] == m]) for m in methods]
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=120)
    width = 0.8 / len(groups)
    for i, (name, rs) in enumerate(groups):
        xs = [k + i * width for k in range(len(keys))]
        means = [statistics.mean(r[k] for r in rs) for k in keys]
        errs = [statistics.stdev([r[k] for r in rs]) if len(rs) > 1 else 0 for k in keys]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks([k + width * (len(groups) - 1) / 2 for k in range(len(keys))],
                  list(METRICS.values()), fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=8, loc="upper center", ncol=len(groups))
    ax.set_title("mean ± sd over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
