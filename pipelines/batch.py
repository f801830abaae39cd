"""The Batch (pipelines/ -> trainer/) and the last stage every backend shares:
uint8 images -> photometric ops -> normalise -> channels_last, on the device.

Parameters are drawn once, on the host, by the loader where it computes each
view's crop (photometric_cpu.param_rows: the counter RNG in numba, bit-exact
with sampling.sample_rest's torch definition) into one float32 (B, V, WIDTH)
row; the Finisher only renders from it, and the Batch carries its one device
copy. ``Finisher`` is built once per loader: the systems choices (device,
dtype, which photometric stage) and the constants (normalisation) are made
there, not per batch; a ``torch.tensor(..., device=cuda)`` per batch is a
blocking host-to-device copy that waits for the queued GPU work.

Stages (``stage``):
- ``done``: the images are final views (rendered per image by the torchvision
  workers, or by FFCV's op on a CPU device);
- ``numba``: rendered here by photometric_cpu's kernel (dali-cpu on a CPU device);
- ``triton``: the GPU path. The row goes to the device in one pinned copy (plus
  one for labels and indices), and each view is one Triton launch
  (photometric_triton) reading it: for a batch of two views, 10 dispatched
  torch ops counted on a CPU (the two pinned copies add a few on a GPU) and 2
  launches, where the torch stage made ~1,300;
- ``torch``: the batched torch stage (photometric.py), optionally compiled, on
  views of the row's device copy: the definition the others are tested
  against, and a fallback.

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
    """Images and their parameter row -> Batch: the photometric stage applied
    (unless ``done``), views normalised as (x/255 - mean)/std in one multiply-add
    on final uint8 views, everything on the device.

    ``images``: V x uint8 (B, S_v, S_v, 3), resized crops not yet flipped (final
    views when the stage is ``done``). ``row``: float32 (B, V, params.WIDTH) on
    the host, every parameter of every view, the crop field and the drawn rest
    (photometric_cpu.param_rows, called by the loader where it computes the
    crop): the Finisher draws nothing. One pinned copy takes the row to the
    device and one more the labels and indices; the Batch's ``row`` is that copy."""
    recipe: Recipe
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

    def __call__(self, images: list[torch.Tensor], row, labels, index) -> Batch:
        row = _host(row)
        if row.dtype != np.float32 or row.shape != (len(row), self.recipe.num_views, WIDTH):
            raise ValueError(f"parameter row {row.dtype} {row.shape}: expected float32 "
                             f"(B, {self.recipe.num_views}, {WIDTH})")
        if self.stage == "triton":
            if self._triton_ran:
                return self._triton(images, row, labels, index)
            try:  # the first batch compiles the kernel for this GPU
                batch = self._triton(images, row, labels, index)
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
                return self._checked(batch, images)
        return self._batched(images, row, labels, index)

    def _checked(self, batch: Batch, images) -> Batch:
        """The Triton stage's first batch if the torch stage renders it within the
        bound; else the torch stage's, and the loader switches to it (one line)."""
        views, raws = triton_check.torch_render(self, images, batch)
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

    def torch_view(self, image: torch.Tensor, p: dict[str, torch.Tensor], vr, apply):
        """One view by the torch stage: uint8 (B, S, S, 3) images and its drawn
        parameters (field -> (B, width)) -> (normalised (B, 3, S, S) view in
        self.dtype, channels_last; uint8 (B, S, S, 3) on the host or None)."""
        c = self._consts
        x = image.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = apply(x, p, vr)
        raw = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu() if self.keep_raw \
            else None
        x = ((x - c["mean"]) / c["std"]).to(self.dtype).contiguous(
            memory_format=torch.channels_last)
        return x, raw

    def _to_device(self, row: np.ndarray, labels, index):
        """The row, labels and indices on the device: two pinned, asynchronous copies."""
        ids = np.stack([_host(labels).astype(np.int64, copy=False),
                        _host(index).astype(np.int64, copy=False)])
        labels_d, index_d = self._h2d(torch.from_numpy(ids)).unbind(0)
        return self._h2d(torch.from_numpy(row)), labels_d, index_d

    def _triton(self, images, row, labels, index) -> Batch:
        from pipelines import photometric_triton

        row_d, labels_d, index_d = self._to_device(row, labels, index)
        views, raw = [], []
        for v, (x, vr) in enumerate(zip(images, self.recipe.views)):
            x = x.to(self.device, non_blocking=True).contiguous()  # FFCV's are host slots
            y, r = photometric_triton.render(x, row_d, v * WIDTH + DRAWN_AT, vr,
                                             self.recipe.mean, self.recipe.std, self.dtype,
                                             self.keep_raw)
            views.append(y)
            raw.append(r)
        raws = [r.cpu() for r in raw] if self.keep_raw else None
        return Batch(views, row_d, labels_d, index_d, raws)

    def _h2d(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor to the device without blocking the host: pinned, then an
        asynchronous copy (a pageable or blocking copy is a hidden sync point:
        test_gpu's sync debug mode found labels.to(device) here)."""
        if self.device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _batched(self, images, row, labels, index) -> Batch:
        c = self._consts
        row_d, labels_d, index_d = self._to_device(row, labels, index)
        views, raw = [], []
        for v, (image, vr) in enumerate(zip(images, self.recipe.views)):
            if self.stage == "numba":  # numba imported only where it is asked for
                from pipelines import photometric_cpu

                image = image.contiguous()
                photometric_cpu.render_batch(image.numpy(),
                                             np.ascontiguousarray(row[:, v, DRAWN_AT:]),
                                             image.numpy())
            elif self.stage == "torch":  # on the device, from the row's copy there
                x, r = self.torch_view(image, split(row_d[:, v, DRAWN_AT:], DRAWN), vr,
                                       self.apply)
                if self.keep_raw:
                    raw.append(r)
            if self.stage in ("done", "numba"):  # final uint8 views
                if self.keep_raw:
                    raw.append(image.cpu().clone())
                x = image.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
                x = x.mul_(c["scale"]).add_(c["shift"]).to(self.dtype).contiguous(
                    memory_format=torch.channels_last)
            views.append(x)
        return Batch(views, row_d, labels_d, index_d, raw if self.keep_raw else None)
