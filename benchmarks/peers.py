"""Peer pipelines for benchmarks/loader.py: the views of a recipe built the way
the peers' users build them, reading the source JPEGs themselves. Neither emits
the parameters behind its views (that is what this project adds); they are
here to be timed next to the project's backends, in the same run, on the same
files and cores.

- ``tv2``: ``torchvision.transforms.v2`` per image in ``DataLoader`` workers, as
  lightly's and AugSelf's own code run it: an ImageFolder-like list of files, each
  decoded once (``torchvision.io.decode_jpeg``, the tensor path v2's documentation
  recommends), then per view RandomResizedCrop, RandomHorizontalFlip,
  RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur), ToDtype and
  Normalize; the default collate gives one (B, 3, H, W) tensor per view.
- ``dali-stock``: a stock DALI graph as solo-learn builds it: ``fn.readers.file``
  over the same file list (shuffled after each epoch), one ``fn.decoders.image``
  (``mixed`` on a GPU, ``cpu`` here), then per view ``random_resized_crop``,
  ``brightness_contrast`` and ``hsv`` under a coin flip, grayscale through ``hsv``'s
  saturation (0 on a coin flip), ``gaussian_blur`` under a coin flip, and
  ``crop_mirror_normalize`` (flip on a coin flip, float CHW). A coin flip is
  solo-learn's ``Mux``: both branches rendered, the result picked by
  ``cond * a + (1 - cond) * b``; an op whose probability is 0 is left out of the
  graph, as solo-learn leaves it out. Read with ``DALIGenericIterator``.

Choices left to the users, made as they make them: the blur's window is one
fixed size for every sigma, the odd number nearest a tenth of the view side (23
at 224 px, as SimCLR, AugSelf's ImageNet setting and solo-learn's DALI graph use;
9 at 96 px) unless ``window="3sigma"`` (the window of the project's own recipe,
2*ceil(3 sigma)+1: 13 for sigma 2 in tv2, one per sample in DALI). Resizing is
antialiased bilinear in both (torchvision's default; solo-learn picks DALI's cubic).
Views come out contiguous NCHW float32, as the peers hand them over (the project's
backends deliver channels_last).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.recipe import Recipe, ViewRecipe

PEERS = ("tv2", "dali-stock")


@dataclass
class PeerBatch:
    """V normalised float32 views (B, 3, H, W) and the labels: no parameters."""
    views: list[torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia") is not None and \
        importlib.util.find_spec("nvidia.dali") is not None


def image_files(root: str | Path) -> tuple[list[str], list[int]]:
    """ImageFolder's list: class folders sorted, their .jpg/.jpeg files sorted,
    labelled by the folder's position (solo-learn lists its files the same way)."""
    root = Path(root)
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted(os.listdir(root / c)):
            if f.lower().endswith((".jpg", ".jpeg")):
                files.append(str(root / c / f))
                labels.append(k)
    if not files:
        raise FileNotFoundError(f"{root}: no class folders with JPEGs")
    return files, labels


def blur_window(vr: ViewRecipe, window: str = "users") -> int | None:
    """The blur's window side for a view: "users" (the odd number nearest a
    tenth of the side), or "3sigma" (None: per sample, where the op can; tv2 takes
    the largest, 2*ceil(3*max sigma)+1)."""
    if window == "users":
        return max(3, int(vr.size * 0.1) // 2 * 2 + 1)
    if window == "3sigma":
        return None
    raise ValueError(f"window {window!r}: 'users' or '3sigma'")


# ----------------------------------------------------------------------- tv2

def tv2_view(vr: ViewRecipe, mean, std, window: str = "users"):
    """One view's transforms.v2 chain, in the order lightly and AugSelf write it."""
    from torchvision.transforms import v2

    k = blur_window(vr, window) or 2 * math.ceil(3 * vr.blur_sigma[1]) + 1
    b, c, s, h = vr.jitter
    return v2.Compose([
        v2.RandomResizedCrop(vr.size, scale=vr.scale, ratio=vr.ratio, antialias=True),
        v2.RandomHorizontalFlip(p=vr.flip_p),
        v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)],
                       p=vr.jitter_p),
        v2.RandomGrayscale(p=vr.gray_p),
        v2.RandomApply([v2.GaussianBlur(k, sigma=vr.blur_sigma)], p=vr.blur_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


class _Files(torch.utils.data.Dataset):
    def __init__(self, files, labels, views):
        self.files, self.labels, self.views = files, labels, views

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        img = decode_jpeg(read_file(self.files[i]), mode=ImageReadMode.RGB)  # uint8 (3, H, W)
        return [t(img) for t in self.views], self.labels[i]


class Tv2Loader:
    """Iterates one epoch of PeerBatches per ``iter()`` from a DataLoader."""

    def __init__(self, files, labels, recipe: Recipe, batch_size: int, workers: int,
                 device: torch.device, seed: int = 0, window: str = "users"):
        views = [tv2_view(vr, recipe.mean, recipe.std, window) for vr in recipe.views]
        self.dataset = _Files(files, labels, views)
        self.batch_size, self.workers, self.device = batch_size, workers, torch.device(device)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        dl = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        for views, labels in dl:
            yield PeerBatch([v.to(self.device, non_blocking=True) for v in views],
                            labels.to(self.device, non_blocking=True))


# ---------------------------------------------------------------- dali-stock

def _mux(p: float, true_case, false_case):
    """solo-learn's coin flip: both branches rendered, one kept per sample."""
    from nvidia.dali import fn, types

    cond = fn.cast(fn.random.coin_flip(probability=p), dtype=types.BOOL)
    return cond * true_case + (cond ^ True) * false_case


def _dali_view(images, vr: ViewRecipe, mean, std, window: str):
    from nvidia.dali import fn, types

    v = fn.random_resized_crop(images, size=(vr.size, vr.size), random_area=list(vr.scale),
                               random_aspect_ratio=list(vr.ratio),
                               interp_type=types.INTERP_LINEAR, antialias=True)
    if vr.jitter_p:
        (b0, b1), (c0, c1), (s0, s1), (h0, h1) = vr.color_ranges()
        jit = fn.brightness_contrast(v, brightness=fn.random.uniform(range=[b0, b1]),
                                     contrast=fn.random.uniform(range=[c0, c1]))
        jit = fn.hsv(jit, saturation=fn.random.uniform(range=[s0, s1]),
                     hue=fn.random.uniform(range=[360 * h0, 360 * h1]))  # DALI: degrees
        v = _mux(vr.jitter_p, jit, v)
    if vr.gray_p:  # grayscale through saturation: 0 on a coin flip, else 1
        gray = fn.cast(fn.random.coin_flip(probability=vr.gray_p), dtype=types.FLOAT)
        v = fn.hsv(v, saturation=1.0 - gray)
    if vr.blur_p:
        w = blur_window(vr, window)
        sigma = fn.random.uniform(range=list(vr.blur_sigma))
        blurred = fn.gaussian_blur(v, sigma=sigma, **({"window_size": w} if w else {}))
        v = _mux(vr.blur_p, blurred, v)
    return fn.crop_mirror_normalize(v, dtype=types.FLOAT, output_layout="CHW",
                                    mean=[255 * m for m in mean], std=[255 * s for s in std],
                                    mirror=fn.random.coin_flip(probability=vr.flip_p))


class DaliStockLoader:
    """PeerBatches from the stock graph. The reader runs on from one epoch into
    the next (``auto_reset``), so ``iter()`` goes on where the last one stopped
    and never ends: the benchmark takes what it times."""

    def __init__(self, files, labels, recipe: Recipe, batch_size: int, workers: int,
                 device: torch.device, seed: int = 0, window: str = "users"):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.device = torch.device(device)
        gpu = self.device.type == "cuda"

        @pipeline_def
        def graph():
            jpegs, lab = fn.readers.file(files=list(files), labels=list(labels),
                                         shuffle_after_epoch=True, name="Reader")
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu",
                                       output_type=types.RGB)
            views = [_dali_view(images, vr, recipe.mean, recipe.std, window)
                     for vr in recipe.views]
            return (*views, lab.gpu() if gpu else lab)

        dev_id = (self.device.index or 0) if gpu else None
        self.pipe = graph(batch_size=batch_size, num_threads=workers, device_id=dev_id,
                          seed=seed + 12)
        self.pipe.build()
        self.names = [f"view{v}" for v in range(recipe.num_views)]
        self.it = DALIGenericIterator(self.pipe, self.names + ["label"], reader_name="Reader",
                                      last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)

    def set_epoch(self, epoch: int) -> None:
        pass  # DALI's reader keeps its own epochs

    def __iter__(self):
        while True:
            try:  # next(), not a for loop: iter() on DALI's iterator mid-epoch warns
                d = next(self.it)[0]
            except StopIteration:
                continue  # the epoch ended; auto_reset has started the next
            yield PeerBatch([d[n] for n in self.names], d["label"].reshape(-1).long())


def build_peer(name: str, files, labels, recipe: Recipe, batch_size: int, workers: int,
               device: torch.device, seed: int = 0, window: str = "users"):
    """The peer loader ``name`` (PEERS); raises ImportError for dali-stock where
    DALI is not installed."""
    if name == "tv2":
        return Tv2Loader(files, labels, recipe, batch_size, workers, device, seed, window)
    if name == "dali-stock":
        if not dali_installed():
            raise ImportError("nvidia-dali is not installed")
        return DaliStockLoader(files, labels, recipe, batch_size, workers, device, seed, window)
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
