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
from PIL import Image, ImageDraw

from pipelines import cli
from pipelines.build import BACKENDS, LoaderConfig, build_loader
from pipelines.recipe import PRESETS
from pipelines.records import Records, open_rgb


def _caption(p: dict, b: int, v: int) -> list[str]:
    y0, x0, h, w = p["crop"][b, v].tolist()
    br, co, sa, hu = p["color"][b, v].tolist()
    return [f"crop y{y0:.2f} x{x0:.2f} h{h:.2f} w{w:.2f}",
            f"flip {int(p['flip'][b, v, 0])} gray {int(p['gray'][b, v, 0])} "
            f"sol {int(p['solarize'][b, v, 0])}",
            f"b{br:.2f} c{co:.2f} s{sa:.2f} h{hu:+.2f}",
            f"blur sigma {p['blur'][b, v, 0]:.2f}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="show_views", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, help="converted dataset folder")
    ap.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS)
    ap.add_argument("--preset", default="augself", choices=list(PRESETS))
    ap.add_argument("--n", type=int, default=4, help="images")
    ap.add_argument("--size", type=int, default=96, help="large view side")
    ap.add_argument("--seed", type=int, default=0)
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
        print(f"show_views: error: {e}", file=sys.stderr)
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
    cell_w, cell_h, text_h = max(S, 180) + 8, S + 4, 52  # captions need ~180 px
    grid = Image.new("RGB", ((V + 1) * cell_w + 8, len(batch) * (cell_h + text_h) + 8), "white")
    draw = ImageDraw.Draw(grid)
    for b in range(len(batch)):
        y = 4 + b * (cell_h + text_h)
        src = Image.fromarray(sources[b])
        src.thumbnail((S, S))
        grid.paste(src, (4, y))
        draw.text((4, y + S + 2), f"#{int(batch.index[b])} label {int(batch.labels[b])}",
                  fill="black")
        for v in range(V):
            x = 4 + (v + 1) * cell_w
            grid.paste(Image.fromarray(batch.raw[v][b].numpy()), (x, y))
            for k, line in enumerate(_caption(p, b, v)):
                draw.text((x, y + S + 2 + 12 * k), line, fill="black")
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
