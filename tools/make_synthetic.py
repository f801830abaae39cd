"""Generate the embedded default dataset: coloured shapes on textured backgrounds.

    python -m tools.make_synthetic --out DIR [--size 64 | WxH] [--n-train N] [--n-test N]

Each image shows one coloured object (the target) and a few small grey
distractors on a textured, nearly grey background. Every image has two labels:

- ``colour`` (12 hue bins, 30 degrees wide; the object's hue is uniform within
  its bin): colour jitter (hue +-0.1 turn = +-36 degrees, more than a bin, plus
  saturation and grayscale) moves an object into the neighbouring bins, so a
  representation trained to be invariant to colour jitter loses it. With 6
  hues 60 degrees apart, as before, even random features told them apart
  (0.99 linear accuracy): the fine bins make colour *precision* the task;
- ``shape`` (5 shapes): colour jitter leaves it intact.

This is the effect AugSelf exists for (Lee et al., NeurIPS 2021, Fig. 1): an
SSL model evaluated on ``colour`` shows what invariance costs, on ``shape``
what it keeps. The layout is an ImageFolder tree whose class folders are
``colour=<bin>,shape=<shape>`` (60 classes), so the ordinary converter reads it
and evaluation recovers one labeling per factor from the class names
(trainer/probes/labelings.py); ``synthetic.json`` says how.

Deterministic: image i of a split is drawn from a generator seeded by
(seed, split, i) alone, so any subset, worker count or order gives the same
files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from conversion import workers as cw
from conversion.staging import OutputError, StagedOutput
from pipelines import cli

HUE_BIN = 30  # degrees; bin k covers [30k - 15, 30k + 15)
COLOURS = {f"h{h:03d}": h for h in range(0, 360, HUE_BIN)}
SHAPES = ["circle", "square", "triangle", "cross", "star"]
SPLITS = {"train": 0, "test": 1}
SUPERSAMPLE = 2  # draw at 2x and downsample: antialiased edges


def class_name(colour: int, shape: int) -> str:
    return f"colour={list(COLOURS)[colour]},shape={SHAPES[shape]}"


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """h in degrees, s and v in [0, 1] -> 8-bit RGB."""
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = v - c
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return tuple(int(round(255 * (t + m))) for t in (r, g, b))


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-frequency blotches + oriented stripes + grain, nearly grey (low saturation)."""
    coarse = rng.uniform(-1, 1, size=(4, 4)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 12)
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    grain = rng.normal(0, 1, size=(h, w)).astype(np.float32)
    lum = (rng.uniform(0.3, 0.6) + 0.08 * blotch + rng.uniform(0.02, 0.08) * stripes
           + 0.03 * grain)
    tint = rng.uniform(-0.04, 0.04, size=3).astype(np.float32)  # far below object saturation
    rgb = np.clip(lum[..., None] + tint, 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        k, radii = 4, [r * 0.85] * 4
    elif shape == "triangle":
        k, radii = 3, [r] * 3
    elif shape == "star":
        k, radii = 10, [r if j % 2 == 0 else r * 0.45 for j in range(10)]
    elif shape == "cross":
        # 12-gon outline of a plus sign: arm half-width a, reach r.
        a = r * 0.33
        pts = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r),
               (-a, -r), (-a, -a), (-r, -a), (-r, a), (-a, a), (-a, r)]
        c, s = np.cos(rot), np.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    else:
        raise ValueError(shape)
    return [(cx + radii[j] * np.cos(rot + 2 * np.pi * j / k),
             cy + radii[j] * np.sin(rot + 2 * np.pi * j / k)) for j in range(k)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, rot, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot), fill=fill)


def render(seed: int, split: str, i: int, size: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """Image i of ``split``: (uint8 HWC, colour label, shape label)."""
    rng = np.random.default_rng([seed, SPLITS[split], i])
    w, h = size
    colour, shape = int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES)))
    W, H = w * SUPERSAMPLE, h * SUPERSAMPLE
    img = Image.fromarray(_background(rng, W, H))
    draw = ImageDraw.Draw(img)
    side = min(W, H)
    for _ in range(int(rng.integers(1, 4))):  # small achromatic distractors
        g = int(rng.integers(40, 215))
        _draw_shape(draw, SHAPES[int(rng.integers(len(SHAPES)))],
                    rng.uniform(0, W), rng.uniform(0, H), side * rng.uniform(0.06, 0.12),
                    rng.uniform(0, 2 * np.pi), (g, g, g))
    r = side * rng.uniform(0.2, 0.32)
    cx, cy = rng.uniform(r, W - r), rng.uniform(r, H - r)
    hue = (list(COLOURS.values())[colour] + rng.uniform(-HUE_BIN / 2, HUE_BIN / 2)) % 360
    fill = _hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    _draw_shape(draw, SHAPES[shape], cx, cy, r, rng.uniform(0, 2 * np.pi), fill)
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(img), colour, shape


def _job(task):
    root, seed, split, i, size, quality = task
    rgb, colour, shape = render(seed, split, i, size)
    path = Path(root) / split / class_name(colour, shape) / f"{i:06d}.jpg"
    Image.fromarray(rgb).save(path, quality=quality, subsampling=0)
    return colour, shape


CHUNK = 32  # images a task: few enough to keep every worker busy to the end


_INFLIGHT: cw.InFlight | None = None  # set before the workers fork


def _jobs(chunk) -> int:
    tasks, first = chunk
    for k, task in enumerate(tasks):
        _INFLIGHT.set(first + k)
        _job(task)
    _INFLIGHT.set(-1)
    return len(tasks)


def parse_size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '500x375' -> (500, 375) as (width, height)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or WxH") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 16 or max(parts) > 4096:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or WxH, 16..4096 each")
    return parts[0], parts[1]


def generate(out: str | Path, size=(64, 64), n_train=4000, n_test=1000, seed=0, quality=95,
             workers: int | None = None, overwrite=False, quiet=False) -> dict:
    counts = {"train": n_train, "test": n_test}
    staged = StagedOutput(out, ["train", "test", "synthetic.json"], overwrite=overwrite,
                          tool="make_synthetic")
    with staged as stage:
        for split in counts:
            for c in range(len(COLOURS)):
                for s in range(len(SHAPES)):
                    (stage / split / class_name(c, s)).mkdir(parents=True)
        tasks = [(str(stage), seed, split, i, size, quality)
                 for split, n in counts.items() for i in range(n)]
        # Supervised workers (conversion/workers.py): a worker that dies ends the
        # run naming its image instead of a pool waiting forever for a lost task, and
        # Ctrl-C is the parent's one line, not every worker's traceback.
        n = workers or os.cpu_count() or 1
        chunks = [(tasks[a:a + CHUNK], a) for a in range(0, len(tasks), CHUNK)]
        global _INFLIGHT
        _INFLIGHT = inflight = cw.InFlight(n)  # inherited by the forked workers

        def image(k: int) -> str:
            return f"{tasks[k][2]}/image {tasks[k][3]}"

        with tqdm(total=len(tasks), disable=quiet, desc="synthetic", unit="img") as bar:
            for done in cw.ordered_map(_jobs, chunks, n, inflight, image):
                bar.update(done)
        meta = {
            "generator": "tools.make_synthetic", "seed": seed, "size_wh": list(size),
            "quality": quality, "counts": counts,
            "factors": {"colour": list(COLOURS), "shape": SHAPES},
            "class_name": "colour=<colour>,shape=<shape>",
            "hue_bin_degrees": HUE_BIN,
            "note": "colour is destroyed by colour jitter, shape is not",
        }
        (stage / "synthetic.json").write_text(json.dumps(meta, indent=1) + "\n")
        staged.commit(last="synthetic.json")
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make_synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (ImageFolder tree)")
    p.add_argument("--size", type=parse_size, default=(64, 64),
                   help="image size: N (square) or WxH, e.g. 500x375")
    # Finite ranges, checked by argparse before any work (exit 2): up to 10 million
    # images a split (8x ImageNet's train set, tens of GB of JPEG); the seed as the
    # trainer's (32-bit unsigned: numpy refuses a negative one); PIL's JPEG quality.
    count, seed = cli.Range(0, 10 ** 7, integer=True), cli.Range(0, 2 ** 32 - 1, integer=True)
    quality, workers = cli.Range(1, 100, integer=True), cli.Range(1, 256, integer=True)
    p.add_argument("--n-train", type=cli.ranged(count, "--n-train"), default=4000,
                   help=f"train images, in {count}")
    p.add_argument("--n-test", type=cli.ranged(count, "--n-test"), default=1000,
                   help=f"test images, in {count}")
    p.add_argument("--seed", type=cli.ranged(seed, "--seed"), default=0,
                   help=f"dataset seed, in {seed}")
    p.add_argument("--quality", type=cli.ranged(quality, "--quality"), default=95,
                   help=f"JPEG quality, in {quality}")
    p.add_argument("--workers", type=cli.ranged(workers, "--workers"), default=None,
                   help=f"processes, in {workers} (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier dataset in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_debug(p)
    a = p.parse_args(argv)
    if a.n_train < 0 or a.n_test < 0 or a.n_train + a.n_test == 0:
        p.error("--n-train and --n-test must be >= 0 and not both 0")
    try:
        generate(a.out, a.size, a.n_train, a.n_test, a.seed, a.quality, a.workers,
                 a.overwrite, a.quiet)
    except OutputError as e:
        print(f"make_synthetic: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.n_train} train + {a.n_test} test images ({a.size[0]}x{a.size[1]}, "
          f"{len(COLOURS) * len(SHAPES)} classes = colour x shape) to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "make_synthetic"))
