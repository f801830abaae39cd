"""Embeddings out of a trained run: one row per image of a converted dataset.

    python -m tools.embed RUN --data DIR --out FILE.npy|FILE.csv

Each image is resized whole to the run's view side and passed through the
run's backbone (``backbone.safetensors``, or ``backbone.pt`` where a run of
an earlier version has no .safetensors) in eval mode, on the GPU when there is one
(trainer/probes/features.py: the evaluation's own extraction), with a progress
bar. Output, by the extension of FILE:

    .npy   a structured array: ``index`` (int64, the sample's index in the
           dataset), ``label`` (int64, -1 unlabelled) and ``embedding``
           (float32, (F,)); ``np.load(FILE)["embedding"]`` is the (N, F) matrix
    .csv   a header ``index,label,embedding_0,...,embedding_{F-1}`` and one line
           per image (as lightly's embeddings.csv, with the index for a name)

The file is written atomically: an interrupted run leaves no partial file. The
backbone is checked against the run's backbone.json first (trainer/checkpoint.py:
a backbone file it does not describe is refused) and the last line names its step.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

from pipelines import cli
from pipelines.integrity import read_manifest
from trainer.checkpoint import backbone_info, write_atomic
from trainer.evaluate import load_backbone, missing_run_file
from trainer.probes.features import extract

FORMATS = (".npy", ".csv")
BATCH = cli.Range(1, 4096, integer=True)  # images per forward pass


def to_array(feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    dt = np.dtype([("index", "<i8"), ("label", "<i8"), ("embedding", "<f4", (feats.shape[1],))])
    out = np.zeros(len(feats), dtype=dt)
    out["index"], out["label"], out["embedding"] = np.arange(len(feats)), labels, feats
    return out


def write(path: Path, rows: np.ndarray) -> None:
    if path.suffix == ".npy":
        write_atomic(path, lambda f: np.save(f, rows))
        return
    buf = io.StringIO()
    dim = rows["embedding"].shape[1]
    buf.write("index,label," + ",".join(f"embedding_{j}" for j in range(dim)) + "\n")
    for r in rows:
        buf.write(f"{r['index']},{r['label']}," + ",".join(f"{x:.7g}" for x in r["embedding"])
                  + "\n")
    write_atomic(path, lambda f: f.write(buf.getvalue().encode()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="embed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="a finished run folder (config.json, and "
                               "backbone.safetensors or backbone.pt)")
    p.add_argument("--data", required=True, help="a converted dataset folder to embed")
    p.add_argument("--out", required=True, help="output file, .npy or .csv")
    p.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    p.add_argument("--batch", type=cli.ranged(BATCH, "--batch"), default=256,
                   help=f"images per forward pass, a whole number in {BATCH}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_debug(p)
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.suffix not in FORMATS:
        p.error(f"--out {out}: the name must end in {' or '.join(FORMATS)}")
    run = Path(a.run)
    missing = missing_run_file(run)
    if missing is not None:
        raise FileNotFoundError(f"{missing}: missing; is {run} a finished run?")
    step = backbone_info(run)["step"]  # a backbone file backbone.json does not describe: named
    read_manifest(Path(a.data))  # a converted dataset, named if not
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {out.parent} does not exist")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    net, cfg, _ = load_backbone(run, device)
    split = extract(net, a.data, cfg.size, device, a.batch, progress=not a.quiet)
    rows = to_array(split.feats.numpy().astype(np.float32), split.labels)
    write(out, rows)
    of = f" (backbone of step {step})" if step is not None else ""
    print(f"wrote {len(rows)} embeddings of {rows['embedding'].shape[1]} dims to {out}{of}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "embed"))
