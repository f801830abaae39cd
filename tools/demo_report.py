"""The demo's report: a Markdown table and a PNG bar chart of colour-task and
shape-task accuracy for each pretraining run."""

from __future__ import annotations

from pathlib import Path

TASKS = ("colour", "shape")


def write(out: Path, rows: list[dict], setup: str) -> tuple[Path, Path]:
    """rows: {"name", "eval": {task: {"knn", "linear"}}, "seconds", "images_per_s"}."""
    md = out / "report.md"
    lines = ["# Demo: SimSiam vs SimSiam + AugSelf on coloured shapes", "", setup, "",
             "| pretraining | colour linear | colour kNN | shape linear | shape kNN | "
             "train time | img/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["eval"]
        lines.append(f"| {r['name']} | {e['colour']['linear']:.3f} | {e['colour']['knn']:.3f} | "
                     f"{e['shape']['linear']:.3f} | {e['shape']['knn']:.3f} | "
                     f"{r['seconds']:.0f} s | {r['images_per_s']:.0f} |")
    lines += ["", "Accuracy on the held-out split (chance: colour 1/6, shape 1/5), from "
              "frozen backbone features of un-augmented images: a linear classifier "
              "(logistic regression) and a 20-nearest-neighbour vote.", "",
              "![accuracy](report.png)", ""]
    md.write_text("\n".join(lines))
    png = out / "report.png"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [t + i * width for t in range(len(TASKS))]
        vals = [r["eval"][t]["linear"] for t in TASKS]
        bars = ax.bar(xs, vals, width, label=r["name"])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([t + width * (len(rows) - 1) / 2 for t in range(len(TASKS))],
                  [f"{t} (linear probe)" for t in TASKS])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return md, png
