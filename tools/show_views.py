"""Draw the views a backend makes, with the parameters that made them.

    python -m tools.show_views --data DIR --backend B --preset P --n N --out grid.png
                               [--npz views.npz] [--seed S] [--size 96]

One row per image: the source, then each view (before normalisation) with its
parameters written under it. The npz holds ``views`` (N, V, H, W, 3) uint8 (for
multi-crop, small views are padded to the large size with zeros and
``view_sizes`` says each view's side), every parameter field as (N, V, width)
float32, ``index``, ``labels`` and ``source_0``, ``source_1``, ... (uint8 HWC).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pipelines import cli
from pipelines.build import BACKENDS, LoaderConfig, build_loader
from pipelines.recipe import PRESETS, SIZE
from pipelines.records import Records, open_rgb
from pipelines.view_grid import draw

ROWS = cli.Range(1, 256, integer=True)
SEED = cli.Range(0, 2 ** 32 - 1, integer=True)  # as trainer/config.py's SEED


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="show_views", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, help="converted dataset folder")
    ap.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS)
    ap.add_argument("--preset", default="augself", choices=list(PRESETS))
    # the trainer's ranges for a view's side and the seed (trainer/config.py); at
    # most 256 rows in one picture
    ap.add_argument("--n", type=cli.ranged(ROWS, "--n"), default=4, help=f"images, in {ROWS}")
    ap.add_argument("--size", type=cli.ranged(SIZE, "--size"), default=96,
                    help=f"large view side, in {SIZE}")
    ap.add_argument("--seed", type=cli.ranged(SEED, "--seed"), default=0, help=f"in {SEED}")
    ap.add_argument("--out", required=True, help="PNG grid to write")
    ap.add_argument("--npz", default=None, help="also save views and parameters here")
    cli.add_debug(ap)
    a = ap.parse_args(argv)
    try:
        loader = build_loader(LoaderConfig(data=a.data, backend=a.backend, preset=a.preset,
                                           size=a.size, batch_size=a.n, seed=a.seed,
                                           drop_last=False, keep_raw=True, device="cpu"))
        batch = next(iter(loader))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"show_views: error: {cli.one_line(str(e))}", file=sys.stderr)
        return 1
    rec = Records(a.data)
    # The converter writes sample i at record position i: read only the N shown.
    sources = []
    for i in batch.index.tolist():
        data, _, stored = rec[i]
        assert stored == i, f"record {i} holds index {stored}"
        sources.append(np.asarray(open_rgb(data)))
    p = {k: t.cpu() for k, t in batch.params.items()}
    V, S = len(batch.raw), a.size
    grid = draw([r.numpy() for r in batch.raw], p, len(batch), sources,
                lambda b: f"#{int(batch.index[b])} label {int(batch.labels[b])}")
    grid.save(a.out)
    if a.npz:
        views = np.zeros((len(batch), V, S, S, 3), np.uint8)
        for v in range(V):
            s = batch.raw[v].shape[1]
            views[:, v, :s, :s] = batch.raw[v].numpy()
        np.savez(a.npz, views=views, view_sizes=np.array([r.shape[1] for r in batch.raw]),
                 index=batch.index.numpy(), labels=batch.labels.numpy(),
                 **{k: t.numpy() for k, t in p.items()},
                 **{f"source_{i}": s for i, s in enumerate(sources)})
    print(f"wrote {a.out}" + (f" and {a.npz}" if a.npz else ""))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "show_views"))
