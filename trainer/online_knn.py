"""Online kNN: the held-out accuracy of the backbone at each epoch end, in the run.

With --test-data, at the end of each epoch (and at the run's last step) the
backbone embeds a fixed bank of the train split's un-augmented images and a fixed
set of the test split's, and the test set is classified by tools.evaluate's kNN
(trainer/probes/knn.py: weighted cosine, k 20, T 0.07, EvalConfig's defaults),
labels matched by class name as the evaluation matches them
(trainer/probes/labelings.py). The line {"step", "epoch", "knn": top-1,
"knn_s": the seconds it took} goes to metrics.jsonl and TensorBoard.

The images: --knn-bank train images and --knn-test test images (labelled ones,
drawn once with the run's seed; every one when a split has fewer; 0 turns the
monitor off), prepared as tools.evaluate prepares them (trainer/probes/features.py:
the whole image resized to --size, bilinear, ImageNet-normalised). They are decoded
once, on a background thread started at set-up, so the decoding overlaps the first
epoch, and kept as uint8 (3 x size^2 bytes each: the default 2048 + 512 images are
385 MB of host memory at 224 px, 7.9 MB at 32 px).

The forward pass: under torch.no_grad, in the run's autocast, with the backbone in
eval mode (BatchNorm reads its running statistics and updates none) and every
module's train/eval flag put back after it: weights and buffers are untouched. It
costs about a third of a training step per image and view (no backward pass), so an
epoch end costs (bank + test) / (3 x views x epoch images) of the epoch: README,
"Monitoring a run"; benchmarks/RESULTS.md measures it.

Under DDP every rank embeds its share of both sets (every world-th image), the
features are gathered (dist.gather: every rank calls it at the same step, the
epoch's last) and put back in the sets' order, and every rank scores the same
features; the main rank writes the line. No rank waits for another except at
that gather, where they all meet.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from PIL import Image

from pipelines.images import Images
from pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD
from trainer import dist
from trainer.evaluate import EvalConfig
from trainer.probes.features import read_labels
from trainer.probes.knn import knn_probe
from trainer.probes.labelings import match

CHUNK = 256  # images per forward pass (features.extract's batch)


@contextmanager
def evaluating(module: torch.nn.Module):
    """``module`` in eval mode inside; each submodule's own flag restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, was in flags:
            m.training = was


def pick(eligible: np.ndarray, cap: int, seed: int, which: int) -> np.ndarray:
    """``cap`` of the ``eligible`` indices (all of them when there are fewer), drawn
    with (seed, which), in dataset order."""
    if cap >= len(eligible):
        return np.asarray(eligible, dtype=np.int64)
    rng = np.random.default_rng([seed, which])
    return np.sort(rng.choice(eligible, size=cap, replace=False)).astype(np.int64)


def score(train_x, train_y, test_x, test_y) -> float:
    """tools.evaluate's kNN top-1 with its default k and temperature."""
    ecfg = EvalConfig()
    return knn_probe(train_x, train_y, test_x, test_y, k=ecfg.knn_k,
                     temperature=ecfg.knn_temperature)["top1"]


def in_order(gathered: torch.Tensor, world: int) -> torch.Tensor:
    """The ranks' shares (rank r: rows r, r + world, ... of a set, padded to one
    length), concatenated in rank order, back in the set's order (padding last)."""
    return gathered.view(world, -1, gathered.shape[1]).transpose(0, 1).reshape(
        -1, gathered.shape[1])


class _Images:
    """One split's share for this rank: uint8 (n, size, size, 3) and which decoded."""

    def __init__(self, data: str, idx: np.ndarray, size: int):
        self.data, self.idx, self.size = data, idx, size
        self.u8 = torch.zeros((len(idx), size, size, 3), dtype=torch.uint8)
        self.ok = torch.ones(len(idx), dtype=torch.bool)

    def decode(self) -> None:
        rec = Images(self.data)
        for j, i in enumerate(self.idx.tolist()):
            try:
                rgb, _ = rec[i]
            except ValueError as e:  # a damaged sample: left out of the score, named
                self.ok[j] = False
                print(f"online kNN: {e}; left out", file=sys.stderr)
                continue
            im = Image.fromarray(rgb).resize((self.size, self.size), Image.BILINEAR)
            self.u8[j] = torch.from_numpy(np.asarray(im).copy())


class OnlineKnn:
    """Set up once (labels read, images chosen, decoding started); called at each
    epoch end on every rank: -> the top-1 (a float), the same on every rank."""

    KEY = "knn"

    def __init__(self, train_data: str, test_data: str, size: int, bank: int, test: int,
                 seed: int, rank: int = 0, world: int = 1):
        tr_classes, tr_labels = read_labels(train_data)
        te_classes, te_labels = read_labels(test_data)
        m = match(tr_classes, tr_labels, te_classes, te_labels)[0]["class"]
        self.why_not = m.why_not()
        if self.why_not is not None:
            return
        train_idx = pick(np.flatnonzero(m.train >= 0), bank, seed, 0)
        test_idx = pick(np.flatnonzero(m.test >= 0), test, seed, 1)
        self.labels = (m.train[train_idx], m.test[test_idx])
        self.world = world
        # this rank's share, padded to the same length on every rank (dist.gather)
        self.parts = [_Images(data, self._share(idx, rank, world), size)
                      for data, idx in ((train_data, train_idx), (test_data, test_idx))]
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._decode, name="online-knn-images",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _share(idx: np.ndarray, rank: int, world: int) -> np.ndarray:
        per = -(-len(idx) // world)
        mine = idx[rank::world]
        return np.concatenate([mine, np.full(per - len(mine), idx[0], dtype=np.int64)])

    def _decode(self) -> None:
        try:
            for part in self.parts:
                part.decode()
        except BaseException as e:  # noqa: BLE001 - raised in the loop's thread
            self._error = e

    def _features(self, backbone, part: _Images, device, dtype, autocast) -> torch.Tensor:
        """(n of the whole set, F + 1): every rank's share, gathered, in the set's
        order; the last column says which were decoded."""
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        out = []
        for lo in range(0, len(part.u8), CHUNK):
            x = part.u8[lo:lo + CHUNK].to(device).permute(0, 3, 1, 2).float().div(255)
            x = ((x - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
            with autocast():
                out.append(backbone(x).float())
        mine = torch.cat([torch.cat(out), part.ok.to(device).float()[:, None]], 1)
        return mine if self.world == 1 else in_order(dist.gather(mine), self.world)

    @torch.no_grad()
    def __call__(self, backbone: torch.nn.Module, device, dtype=torch.float32,
                 autocast=nullcontext) -> float:
        """The top-1 of the test set against the bank through ``backbone`` (eval
        mode inside, its flags restored), inputs in ``dtype`` under ``autocast()``."""
        if self._thread.is_alive():
            self._thread.join()
        if self._error is not None:
            raise self._error
        with evaluating(backbone):
            feats = [self._features(backbone, p, device, dtype, autocast) for p in self.parts]
        xs = []
        for f, y in zip(feats, self.labels):
            f = f[:len(y)]
            keep = f[:, -1] > 0
            xs += [f[keep, :-1], torch.from_numpy(y).to(f.device)[keep]]
        return score(*xs)


def knn_line(knn: OnlineKnn, backbone, device, dtype, autocast, step: int, spe: int) -> dict:
    """The metrics line of an epoch end: step, epoch, knn (top-1) and knn_s."""
    t0 = time.perf_counter()
    top1 = knn(backbone, device, dtype, autocast)
    return {"step": step, "epoch": step / spe, OnlineKnn.KEY: top1,
            "knn_s": time.perf_counter() - t0}
