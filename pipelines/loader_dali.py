"""DALI backends: ``dali-gpu`` (mixed decoding, everything on the GPU) and
``dali-cpu`` (the same graph with device_id=None).

The graph reads the WebDataset records (``fn.readers.webdataset``, sharded with
shard_id/num_shards), decodes each image once, and for each of the V views
samples a crop box in the graph and resizes that region (one decode, V resizes:
the decoder node appears once in the graph whatever V is). The box is sampled
exactly like torchvision's RandomResizedCrop: 10 candidate (area fraction, log
aspect) pairs per view, sides rounded, the first candidate that fits is kept,
else the centre-crop fallback; position uniform over integer offsets. It is
emitted as the ``crop`` parameter. Flip, colour, grayscale, blur and solarize
are drawn in torch and applied on the same device: batched in torch on a GPU
(pipelines/photometric.py), by photometric_cpu's numba kernel over the batch on
a CPU device (pipelines/batch.py).

A pipeline is built per epoch with a seed derived from (seed, epoch): an epoch's
order and crops depend on nothing else, so a resumed run sees what an
uninterrupted one saw.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipelines.batch import compiled_apply, finish
from pipelines.epochs import EpochLoader, EpochPlan
from pipelines.records import Records

ATTEMPTS = 10


def _sample_box(shape, vr):
    """shape: float (H, W, C) per sample -> float (top, left, h, w) in pixels."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    H, W = shape[0], shape[1]
    area = H * W
    s = fn.random.uniform(range=list(vr.scale), shape=[ATTEMPTS])
    logr = fn.random.uniform(range=[math.log(vr.ratio[0]), math.log(vr.ratio[1])],
                             shape=[ATTEMPTS])
    ar = dmath.exp(logr)
    w = dmath.floor(dmath.sqrt(area * s * ar) + 0.5)
    h = dmath.floor(dmath.sqrt(area * s / ar) + 0.5)
    ok = fn.cast((w <= W) & (h <= H) & (w > 0) & (h > 0), dtype=types.FLOAT)
    # The first fitting candidate: rank k-th attempt by (ATTEMPTS - k), keep the max.
    order = types.Constant(np.arange(ATTEMPTS, 0, -1, dtype=np.float32), device="cpu")
    rank = ok * order
    best = fn.reductions.max(rank)
    pick = fn.cast(rank == best, dtype=types.FLOAT) * ok
    found = fn.cast(best > 0, dtype=types.FLOAT)
    w_s = fn.reductions.sum(pick * w)
    h_s = fn.reductions.sum(pick * h)
    # torchvision's fallback: the whole image, aspect clamped into the ratio range.
    w_f = dmath.min(W, dmath.floor(H * vr.ratio[1] + 0.5))
    h_f = dmath.min(H, dmath.floor(W / vr.ratio[0] + 0.5))
    w = found * w_s + (1 - found) * w_f
    h = found * h_s + (1 - found) * h_f
    u = fn.random.uniform(range=[0.0, 1.0], shape=[2])
    top_s = dmath.min(dmath.floor(u[0] * (H - h + 1)), H - h)
    left_s = dmath.min(dmath.floor(u[1] * (W - w + 1)), W - w)
    top = found * top_s + (1 - found) * dmath.floor((H - h) / 2)
    left = found * left_s + (1 - found) * dmath.floor((W - w) / 2)
    return top, left, h, w


def build_pipeline(tars, idxs, recipe, batch_size, seed, shuffle, rank, world, device_id,
                   threads):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2)
    def pipe():
        jpegs, meta = fn.readers.webdataset(
            paths=tars, index_paths=idxs, ext=["jpg;png", "meta"],
            dtypes=[types.UINT8, types.INT64], missing_component_behavior="error",
            shard_id=rank, num_shards=world, random_shuffle=shuffle,
            initial_fill=4096, pad_last_batch=True, seed=seed, name="reader")
        shape = fn.cast(fn.peek_image_shape(jpegs), dtype=types.FLOAT)
        images = fn.decoders.image(jpegs, device="cpu" if device_id is None else "mixed",
                                   output_type=types.RGB)
        outs = [meta]
        for vr in recipe.views:
            top, left, h, w = _sample_box(shape, vr)
            view = fn.resize(images, size=[vr.size, vr.size],
                             roi_start=fn.stack(top, left), roi_end=fn.stack(top + h, left + w),
                             roi_relative=False, interp_type=types.INTERP_LINEAR,
                             antialias=True)
            crop = fn.stack(top / shape[0], left / shape[1], h / shape[0], w / shape[1])
            outs += [view, crop]
        return tuple(outs)

    p = pipe()
    p.build()
    return p


def _to_torch(tl, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList (CPU or GPU) -> torch tensor on ``device``."""
    if hasattr(tl, "as_cpu") and device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=torch.uint8 if t.dtype == "uint8" else None,
                          device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    arr = np.array(tl.as_cpu().as_tensor() if hasattr(tl, "as_cpu") else tl.as_tensor())
    return torch.from_numpy(arr)


class DaliLoader(EpochLoader):
    """One epoch of Batches per iteration; call set_epoch(e) before each."""

    def __init__(self, data_dir, recipe, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world: int = 1, gpu: bool = False,
                 threads: int = 2, device=None, dtype=torch.float32, keep_raw: bool = False,
                 compile: bool = False):
        records = Records(data_dir)
        self.tars, self.idxs = records.tars, records.idxs
        self.plan = EpochPlan(len(records), batch_size, seed, shuffle, drop_last, rank, world)
        self.recipe, self.seed, self.threads = recipe, seed, threads
        if gpu and not torch.cuda.is_available():
            raise RuntimeError("dali-gpu needs a CUDA device; use dali-cpu on this machine")
        self.device_id = torch.cuda.current_device() if gpu else None
        self.device = torch.device(device or ("cuda" if gpu else "cpu"))
        self.dtype, self.keep_raw = dtype, keep_raw
        self.apply = compiled_apply(compile)

    def __iter__(self):
        p = self.plan
        seed = int(np.random.default_rng([self.seed, self.epoch, 0xDA11]).integers(2**31))
        pipe = build_pipeline(self.tars, self.idxs, self.recipe, p.batch_size, seed, p.shuffle,
                              p.rank, p.world, self.device_id, self.threads)
        left = p.shard_size
        try:
            for _ in range(self.skip):  # resuming mid-epoch: the reader and the in-graph
                pipe.run()              # sampler must advance exactly as they did
                left -= p.batch_size
            for _ in range(p.num_batches - self.skip):
                out = pipe.run()
                n = min(p.batch_size, left)  # the reader pads the last batch: trim
                left -= n
                meta = _to_torch(out[0], torch.device("cpu"))[:n]
                crops = [_to_torch(out[1 + 2 * v], self.device)[:n]
                         for v in range(self.recipe.num_views)]
                boxes = torch.stack([_to_torch(out[2 + 2 * v], torch.device("cpu"))[:n]
                                     for v in range(self.recipe.num_views)], dim=1)
                yield finish(crops, boxes, meta[:, 0], meta[:, 1], self.recipe, self.seed,
                             self.epoch, self.device, self.dtype, self.keep_raw,
                             apply=self.apply, render_cpu=self.device.type == "cpu")
        finally:
            del pipe
