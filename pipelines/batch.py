"""The Batch (pipelines/ -> trainer/) and the last stage every backend shares:
uint8 crops -> photometric ops -> normalise -> channels_last, on the device.

``Finisher`` is built once per loader: the systems choices (device, dtype, which
photometric stage) and the constants (normalisation, the recipe's draw table) are
made there, not per batch; a ``torch.tensor(..., device=cuda)`` per batch is a
blocking host-to-device copy that waits for the queued GPU work.

Stages (``stage``):
- ``done``: the crops are final views and their parameters are given (rendered
  per image by the torchvision workers, or by FFCV's op on a CPU device);
- ``numba``: rendered here by photometric_cpu's kernel (dali-cpu on a CPU device);
- ``triton``: the GPU path. Every parameter is drawn on the host (numba, the
  counter RNG: bit-exact with the torch draws), goes to the device in one
  parameter buffer (one pinned copy, plus one for labels and indices), and each
  view is one Triton launch (photometric_triton): for a batch of two views, 10
  dispatched torch ops counted on a CPU (the two pinned copies add a few on a
  GPU) and 2 launches, where the torch stage made ~1,300;
- ``torch``: the batched torch stage (photometric.py), optionally compiled: the
  definition the others are tested against, and a fallback.

The Triton stage's first batch is checked against the torch stage unless
``self_check`` is off (pipelines/triton_check.py): a disagreement, like a first
batch that raises, switches the loader to the torch stage, with one line on
stderr. ``self_check_result`` says what happened, for reports (tools/doctor).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from pipelines import photometric, triton_check
from pipelines.params import DRAWN, DRAWN_AT, FIELDS, WIDTH, join, split
from pipelines.recipe import Recipe
from pipelines.sampling import sample_rest

STAGES = ("done", "numba", "triton", "torch")


def compiled_apply(enabled: bool):
    """photometric.apply, fused by torch.compile when ``enabled``: ~40 elementwise
    passes over the batch become a few kernels (measured on 2 CPU cores: hue shift
    215 -> 45 ms for 64 views of 224 px); the first batch pays ~20 s of compilation."""
    return torch.compile(photometric.apply) if enabled else photometric.apply


def default_stage(device: torch.device) -> str:
    """numba on a CPU device; on a GPU the Triton stage where Triton imports,
    else the torch stage."""
    if device.type == "cpu":
        return "numba"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch"
    return "triton"


@dataclass
class Batch:
    """V views of B samples and the exact parameters behind each.

    ``row`` is the one parameter tensor, float32 (B, V, params.WIDTH) on the
    views' device, each view's values in FIELDS order: what the GPU stage's
    kernels read and what the heads (AugSelf, EquiMod, condproj) take as input.
    ``params[field]`` names its parts: (B, V, width) views of ``row``, never
    copies. A Batch built by hand (tests, tools) may pass the fields as a dict;
    they are joined once into a row here."""
    views: list[torch.Tensor]           # V x (B, 3, H_v, W_v), normalised, channels_last
    row: torch.Tensor                   # float32 (B, V, WIDTH); or field -> (B, V, width)
    labels: torch.Tensor                # int64 (B,), -1 where unlabelled
    index: torch.Tensor                 # int64 (B,), position in the dataset
    raw: list[torch.Tensor] | None = None  # V x uint8 (B, H, W, 3) before normalising, on request

    def __post_init__(self):
        if isinstance(self.row, dict):
            self.row = join({k: self.row[k] for k in FIELDS})

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """field -> float32 (B, V, width): views of ``row`` (no copy, no kernel)."""
        return split(self.row)

    def __len__(self) -> int:
        return len(self.index)

    def first(self, n: int) -> Batch:
        """The batch of its first ``n`` views (the ones a method trains on, when
        an auxiliary head alone looks at views appended after them): views, not
        copies."""
        return Batch(self.views[:n], self.row[:, :n], self.labels, self.index,
                     self.raw[:n] if self.raw is not None else None)


def _host(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@dataclass
class Finisher:
    """Crops (V x uint8 (B, S_v, S_v, 3), no flip yet unless ``done``) and the
    crop field (B, V, 4) -> Batch. The remaining parameters are drawn with the
    counter RNG (seed, epoch, index, view), applied, and the views normalised:
    (x/255 - mean)/std as one multiply-add on final uint8 views."""
    recipe: Recipe
    seed: int
    device: torch.device
    dtype: torch.dtype = torch.float32
    keep_raw: bool = False
    stage: str = "torch"
    compile: bool = False
    self_check: bool = True  # compare the Triton stage's first batch with the torch stage
    # None until a first Triton batch; then "off" (not checked), "passed: <per view>",
    # or "failed: <what differed, or what the first batch raised>" (now the torch stage)
    self_check_result: str | None = field(default=None, init=False)
    _consts: dict = field(default_factory=dict, init=False, repr=False)
    _triton_ran: bool = field(default=False, init=False, repr=False)  # compiled and ran once

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; one of {', '.join(STAGES)}")
        self.device = torch.device(self.device)
        mean = torch.tensor(self.recipe.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.recipe.std, device=self.device).view(1, 3, 1, 1)
        self._consts = {"mean": mean, "std": std, "scale": 1.0 / (255.0 * std),
                        "shift": -mean / std}
        self.apply = compiled_apply(self.compile) if self.stage == "torch" else None

    def __call__(self, crops: list[torch.Tensor], crop, labels, index, epoch: int,
                 done: dict[str, torch.Tensor] | None = None) -> Batch:
        if self.stage == "triton":
            if self._triton_ran:
                return self._triton(crops, crop, labels, index, epoch)
            try:  # the first batch compiles the kernel for this GPU
                batch = self._triton(crops, crop, labels, index, epoch)
            except Exception as e:  # noqa: BLE001 - any compile failure: fall back, loudly
                self.self_check_result = f"failed: raised {type(e).__name__}: {e}"
                print(f"warning: the Triton photometric stage failed on its first batch "
                      f"({type(e).__name__}: {e}); falling back to the batched torch stage "
                      "(slower; LoaderConfig.stage='torch' chooses it directly)",
                      file=sys.stderr)
                self.stage, self.apply = "torch", compiled_apply(self.compile)
            else:
                self._triton_ran = True
                if not self.self_check:
                    self.self_check_result = "off"
                    return batch
                return self._checked(batch, crops)
        if self.stage == "done" and done is None:
            raise ValueError("stage 'done' needs the views' parameters")
        return self._batched(crops, torch.as_tensor(crop), torch.as_tensor(labels),
                             torch.as_tensor(index), epoch, done)

    def _checked(self, batch: Batch, crops) -> Batch:
        """The Triton stage's first batch if the torch stage renders it within the
        bound; else the torch stage's, and the loader switches to it (one line)."""
        views, raws = triton_check.torch_render(self, crops, batch)
        ok, what = triton_check.compare(batch, views, raws, self._consts["mean"],
                                        self._consts["std"])
        self.self_check_result = f"{'passed' if ok else 'failed'}: {what}"
        if ok:
            return batch
        print(f"warning: the Triton photometric stage disagrees with the torch stage on its "
              f"first batch: {what}; switching to the batched torch stage for this batch and "
              "the rest (slower)", file=sys.stderr)
        self.stage, self.apply = "torch", compiled_apply(self.compile)
        return Batch(views, batch.row, batch.labels, batch.index, raws)

    def torch_view(self, crop: torch.Tensor, p: dict[str, torch.Tensor], vr, apply):
        """One view by the torch stage: uint8 (B, S, S, 3) crops and its drawn
        parameters (field -> (B, width)) -> (normalised (B, 3, S, S) view in
        self.dtype, channels_last; uint8 (B, S, S, 3) on the host or None)."""
        c = self._consts
        x = crop.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = apply(x, p, vr)
        raw = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu() if self.keep_raw \
            else None
        x = ((x - c["mean"]) / c["std"]).to(self.dtype).contiguous(
            memory_format=torch.channels_last)
        return x, raw

    def _to_device(self, host: np.ndarray) -> torch.Tensor:
        return self._h2d(torch.from_numpy(host))  # one pinned, asynchronous copy on a GPU

    def _triton(self, crops, crop, labels, index, epoch) -> Batch:
        from pipelines import photometric_cpu, photometric_triton

        index_h = _host(index).astype(np.int64, copy=False)
        B, V = len(index_h), self.recipe.num_views
        host = np.empty((B, V, WIDTH), np.float32)
        # each view's flattened parameters (params.WIDTH in FIELDS order): the
        # crop, then the drawn row from DRAWN_AT on
        host[..., :DRAWN_AT] = _host(crop)
        photometric_cpu.draw_rest_batch(photometric_cpu.recipe_rows(self.recipe), self.seed,
                                        epoch, index_h, host[..., DRAWN_AT:])
        ids = np.stack([_host(labels).astype(np.int64, copy=False), index_h])
        params = self._to_device(host)
        labels_d, index_d = self._to_device(ids).unbind(0)
        views, raw = [], []
        for v, (x, vr) in enumerate(zip(crops, self.recipe.views)):
            x = x.to(self.device, non_blocking=True).contiguous()  # FFCV's are host slots
            y, r = photometric_triton.render(x, params, v * WIDTH + DRAWN_AT, vr,
                                             self.recipe.mean, self.recipe.std, self.dtype,
                                             self.keep_raw)
            views.append(y)
            raw.append(r)
        raws = [r.cpu() for r in raw] if self.keep_raw else None
        return Batch(views, params, labels_d, index_d, raws)

    def _h2d(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor to the device without blocking the host: pinned, then an
        asynchronous copy (a pageable or blocking copy is a hidden sync point:
        test_gpu's sync debug mode found labels.to(device) here)."""
        if self.device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _batched(self, crops, crop_params, labels, index, epoch, done) -> Batch:
        device, c = self.device, self._consts
        index = self._h2d(index).long()
        per_view, views, raw = [], [], []
        for v, (crop, vr) in enumerate(zip(crops, self.recipe.views)):
            if self.stage == "done":
                p = {k: self._h2d(t[:, v]) for k, t in done.items() if k != "crop"}
            elif self.stage == "numba":  # numba imported only where it is asked for
                from pipelines import photometric_cpu

                p = sample_rest(vr, self.seed, epoch, index, v)
                crop = crop.contiguous()
                photometric_cpu.render_batch(crop.numpy(), photometric_cpu.rest_of(p),
                                             crop.numpy())
            else:  # the torch stage, on the device
                p = sample_rest(vr, self.seed, epoch, index, v)
                x, r = self.torch_view(crop, p, vr, self.apply)
                if self.keep_raw:
                    raw.append(r)
            if self.stage in ("done", "numba"):  # final uint8 views
                if self.keep_raw:
                    raw.append(crop.cpu().clone())
                x = crop.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
                x = x.mul_(c["scale"]).add_(c["shift"]).to(self.dtype).contiguous(
                    memory_format=torch.channels_last)
            views.append(x)
            per_view.append(p)
        params = {k: torch.stack([p[k] for p in per_view], dim=1) for k in DRAWN}
        params["crop"] = self._h2d(crop_params).float()
        return Batch(views, {k: params[k] for k in FIELDS}, self._h2d(labels).long(), index,
                     raw if self.keep_raw else None)
