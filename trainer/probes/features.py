"""Frozen-backbone features of a converted split, extracted once and cached.

Each image is decoded, resized to the run's view side (bilinear, the whole
image: no crop), normalised like the training views (ImageNet mean/std, every
preset's) and passed through the backbone in eval mode, on the device given
(the GPU when there is one). The same pass records each image's colour
histogram (trainer/probes/color.py) at that size, the target of the colour probe.

Labels: ``read_labels`` reads a split's class names (manifest.json) and every
sample's label (the records) without decoding an image, and refuses a pair that
disagrees (a manifest whose class list was edited): the evaluation checks both
splits with it before any feature is extracted.

Cache: ``<cache_dir>/<key>.pt`` with the features, labels and histograms; the
key hashes the split's manifest, the view side and the backbone weights, so a
changed dataset or checkpoint is never read from a stale cache. Written atomically
(trainer/checkpoint.py): an interrupted extraction leaves no half-written cache.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines import cli
from pipelines.images import Images
from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD
from trainer.checkpoint import save_atomic
from trainer.probes.color import histograms


@dataclass
class Split:
    feats: torch.Tensor    # (N, F) float32, CPU
    labels: np.ndarray     # (N,) int64
    hist: torch.Tensor     # (N, 72) float32, CPU: colour histograms
    classes: list[str]


def _key(data: str, size: int, weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update((Path(data) / "manifest.json").read_bytes())
    h.update(f"size={size}".encode())
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:20]


def check_labels(manifest: Path, classes, labels: np.ndarray) -> list[str]:
    """``classes`` (a manifest's "classes") as a list of names, checked against the
    samples' labels: -1 (unlabelled) or an index into the list. A ValueError naming
    the manifest otherwise: an edited or damaged manifest would score every probe
    against the wrong names, or fail deep inside one ("Target 54 is out of bounds")."""
    if classes is None:
        classes = []
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{manifest}: \"classes\" is {cli.shown(classes)}, not a list of "
                         "names; the manifest was edited or damaged: re-convert the dataset")
    twice = sorted(c for c, n in Counter(classes).items() if n > 1)
    if twice:
        raise ValueError(f"{manifest} lists the class {cli.shown(twice[0])} more than once; "
                         "the manifest was edited or damaged: re-convert the dataset")
    labels = np.asarray(labels)
    if len(labels) and (labels.max() >= len(classes) or labels.min() < -1):
        n = len(classes)
        reach = int(labels.max()) if labels.max() >= n else int(labels.min())
        raise ValueError(f"{manifest} lists {n} class{'es' if n != 1 else ''} but sample labels "
                         f"reach {reach}; the manifest was edited or damaged: re-convert the "
                         "dataset")
    return list(classes)


def read_labels(data: str) -> tuple[list[str], np.ndarray]:
    """A split's class names and its samples' labels (no image decoded), checked
    against each other (``check_labels``)."""
    rec = Images(data)
    labels = np.asarray(rec.labels, dtype=np.int64)
    return check_labels(Path(data) / "manifest.json", rec.manifest.get("classes"), labels), labels


@torch.no_grad()
def extract(backbone: torch.nn.Module, data: str, size: int, device="cpu", batch: int = 256,
            progress: bool = True) -> Split:
    from tqdm import tqdm

    rec = Images(data)  # records, or the .beton of a dataset converted without them
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    backbone.eval()
    feats, labels, hists = [], [], []
    bar = tqdm(total=len(rec), disable=not progress, unit="img", file=sys.stderr,
               desc=f"features {Path(data).name}", dynamic_ncols=True)
    for lo in range(0, len(rec), batch):
        imgs = []
        for i in range(lo, min(lo + batch, len(rec))):
            rgb, label = rec[i]
            im = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
            imgs.append(torch.from_numpy(np.asarray(im).copy()))
            labels.append(label)
        u8 = torch.stack(imgs).to(device)
        hists.append(histograms(u8).cpu())
        x = u8.permute(0, 3, 1, 2).float().div(255)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        feats.append(backbone(x).float().cpu())
        bar.update(len(imgs))
    bar.close()
    return Split(torch.cat(feats), np.asarray(labels, dtype=np.int64), torch.cat(hists),
                 list(rec.manifest.get("classes") or []))


def cached(backbone: torch.nn.Module, data: str, size: int, cache_dir: Path | None,
           device="cpu", progress: bool = True) -> Split:
    """extract(), read from / written to ``cache_dir`` when one is given."""
    if cache_dir is None:
        return extract(backbone, data, size, device, progress=progress)
    path = Path(cache_dir) / f"{_key(data, size, backbone.state_dict())}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return Split(saved["feats"], saved["labels"].numpy(), saved["hist"], saved["classes"])
    split = extract(backbone, data, size, device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"feats": split.feats, "labels": torch.from_numpy(split.labels),
                 "hist": split.hist, "classes": split.classes, "data": str(data)}, path)
    return split
