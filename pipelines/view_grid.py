"""A picture of a batch: each view as the model sees it, with the parameters
that made it written under it (tools/show_views.py, and the trainer's
TensorBoard/W&B image every few epochs)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD


def caption(p: dict, b: int, v: int) -> list[str]:
    """Lines describing view v of sample b (the schema's fields, CPU tensors)."""
    y0, x0, h, w = p["crop"][b, v].tolist()
    br, co, sa, hu = p["color"][b, v].tolist()
    return [f"crop y{y0:.2f} x{x0:.2f} h{h:.2f} w{w:.2f}",
            f"flip {int(p['flip'][b, v, 0])} gray {int(p['gray'][b, v, 0])} "
            f"sol {int(p['solarize'][b, v, 0])}",
            f"b{br:.2f} c{co:.2f} s{sa:.2f} h{hu:+.2f}",
            f"blur sigma {p['blur'][b, v, 0]:.2f} rot {int(p['rot'][b, v, 0]) * 90}"]


def to_uint8(view: torch.Tensor) -> np.ndarray:
    """A normalised (B, 3, S, S) float view back to (B, S, S, 3) uint8 (the
    inverse of the loaders' ImageNet mean/std normalisation)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = view.detach().float().cpu() * std + mean
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def draw(views: list[np.ndarray], params: dict, n: int, sources=None, header=None) -> Image.Image:
    """``views``: V arrays (B, S_v, S_v, 3) uint8; ``params``: the schema's fields
    as (B, V, width) CPU tensors; the first ``n`` samples, one row each, with
    ``sources`` (HWC uint8 images) in a first column when given and ``header(b)``
    under it."""
    n = min(n, len(views[0]))
    S = max(v.shape[1] for v in views)
    first = 1 if sources is not None else 0
    cell_w, cell_h, text_h = max(S, 180) + 8, S + 4, 52  # captions need ~180 px
    grid = Image.new("RGB", ((len(views) + first) * cell_w + 8, n * (cell_h + text_h) + 8),
                     "white")
    pen = ImageDraw.Draw(grid)
    for b in range(n):
        y = 4 + b * (cell_h + text_h)
        if sources is not None:
            src = Image.fromarray(sources[b])
            src.thumbnail((S, S))
            grid.paste(src, (4, y))
        if header is not None:
            pen.text((4, y + S + 2), header(b), fill="black")
        for v, view in enumerate(views):
            x = 4 + (v + first) * cell_w
            grid.paste(Image.fromarray(view[b]), (x, y))
            for k, line in enumerate(caption(params, b, v)):
                pen.text((x, y + S + 2 + 12 * k), line, fill="black")
    return grid
