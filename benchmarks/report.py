"""Write a benchmark's section into benchmarks/RESULTS.md, with the machine and versions.

Each benchmark owns one section between ``<!-- name:start -->`` and
``<!-- name:end -->``; a rerun replaces its own section and leaves the others.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PACKAGES = ["torch", "torchvision", "nvidia-dali-cuda130", "ffcv", "numpy", "numba", "pillow"]


def environment() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for p in PACKAGES:
        try:
            versions.append(f"{p} {md.version(p)}")
        except md.PackageNotFoundError:
            pass
    gpu = ""
    try:
        import torch
        if torch.cuda.is_available():
            gpu = f"; GPU: {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=RESULTS.parent).stdout.strip()
    except OSError:
        sha = "?"
    return (f"Hardware: {cpu}, {os.cpu_count()} cores{gpu}. Python {platform.python_version()}; "
            f"{', '.join(versions)}. Commit {sha or '?'}.")


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def bar_plot(name: str, groups: list[str], series: dict[str, list[float]], ylabel: str,
             title: str) -> str:
    """A grouped bar chart saved as benchmarks/<name>.png; returns the Markdown
    line that shows it (RESULTS.md sits next to the PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.15)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS.parent / f"{name}.png")
    plt.close(fig)
    return f"![{title}]({name}.png)"
