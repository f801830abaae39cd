"""FFCV backend: the stock Loader over data.beton with one custom operation that
decodes each image once, samples V crop boxes (torchvision's RandomResizedCrop
algorithm, pipelines/sampling.py) and resizes each into its slot, writing the
boxes to a side output as it crops. Flip, colour, blur and solarize are drawn
in the op too (counter RNG, the same numbers as sampling.sample_rest) and, on a
GPU, applied on the device by the Finisher's stage (pipelines/batch.py: one Triton
launch per view, or the batched torch ops it falls back to); on a CPU
device they are applied in the op itself, per view, by photometric_cpu's numba
kernel, in the loader's threads (3.8x torchvision at 224 px on 2 cores: RESULTS.md).

Reproducibility: every box is a function of (seed, epoch, sample index, view)
through the counter RNG, never of numba's thread scheduling. The epoch reaches
the compiled code through an array (epoch, seed) read by address (numba freezes
captured arrays as constants at compile time, so a plain closure would see the
first epoch forever).

Resize: FFCV's own ``resize_crop`` (OpenCV INTER_AREA), not bilinear with
antialias as torchvision: the tolerance in the tests says how far apart.
Sharding: the epoch order is pipelines/epochs.py's, installed as the Loader's
traversal order, so FFCV, DALI and torchvision split data identically.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numba
import numpy as np
import torch
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

from pipelines import checks, counter_rng, params, photometric_cpu
from pipelines.batch import Finisher, default_stage
from pipelines.checks import DamagedSample, DamageLog
from pipelines.epochs import EpochLoader, EpochPlan
from pipelines.sampling import crop_args, make_crop_box


@intrinsic
def _address_as_pointer(typingctx, addr):
    sig = nbtypes.voidptr(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


_SHARED: dict = {}


def _fix_ffcv_state_types() -> None:
    """FFCV 1.0.2's memory managers build their state types as ``t = nb.uint8[::1];
    t.mutable = False``: that mutates numba's *interned* array type, so every
    numba dict keyed by ``uint8[::1]`` (or ``uint64[::1]``) compiled before sees
    its keys' hashes change. Symptoms: "KeyError" in dispatcher finalizers, a
    later compile failing in ``nopython_signatures``, and once a compile that
    spun forever (the test suite under pytest-xdist, 2026-11-23). The same
    types, built fresh with ``readonly=True``, mutate nothing."""
    if _SHARED.get("fixed"):
        return
    import numba as nb
    from ffcv.memory_managers.os_cache import OSCacheManager
    from ffcv.memory_managers.process_cache.manager import ProcessCacheManager

    def ro(dtype, dims="1"):
        return nb.types.Array(dtype, 1 if dims == "1" else 2, "C", readonly=True)

    OSCacheManager.state_type = property(
        lambda self: nb.types.Tuple([ro(nb.uint8), nb.uint64[::1], nb.uint64[::1]]))

    def compile_reader(self):  # FFCV's, with the read-only return type it meant
        from ffcv.pipeline.compiler import Compiler

        def read(address, mem_state):
            size = mem_state[2][np.searchsorted(mem_state[1], address)]
            return mem_state[0][address:address + size]

        return Compiler.compile(read, ro(nb.uint8)(nb.uint64, self.state_type))

    OSCacheManager.compile_reader = compile_reader
    ProcessCacheManager.state_type = property(
        lambda self: nb.types.Tuple([ro(nb.uint8, "2"), ro(nb.uint64), ro(nb.uint64),
                                     ro(nb.uint32)]))
    _SHARED["fixed"] = True


def _shared_kernels():
    """imdecode, resize_crop and the crop-box draw, compiled once per process and
    shared by every loader instead of compiled again for each (FFCV's habit):
    one compile per process. Safe once FFCV's state types no longer mutate
    numba's interned types (``_fix_ffcv_state_types``)."""
    if "kernels" not in _SHARED:
        from ffcv.libffcv import imdecode, resize_crop
        from ffcv.pipeline.compiler import Compiler
        _SHARED["kernels"] = (Compiler.compile(imdecode), Compiler.compile(resize_crop),
                              Compiler.compile(make_crop_box(numba.njit(counter_rng.uniform_np))))
    return _SHARED["kernels"]


def _multiview_op_class():
    """Defined lazily so that importing pipelines/ never requires ffcv."""
    from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler

    class MultiViewCrop(SimpleRGBImageDecoder):
        """image field -> (views uint8 (V, S*S*3), boxes float32 (V, 4), rest
        float32 (V, params.DRAWN_WIDTH)) per sample. With ``render`` the views are
        final (the photometric stage ran here, photometric_cpu), else the crops.
        ``rest`` (photometric_cpu.REST) is drawn either way; its recipe rows are
        read by address from ``rows_cell`` like the epoch, so a recipe changed
        between epochs is honoured. A subclass of the field's decoder class:
        FFCV accepts only that as the first operation of an image pipeline."""

        def __init__(self, recipe, seed: int, epoch_cell: np.ndarray, rows_cell: np.ndarray,
                     render: bool, crcs: np.ndarray | None):
            super().__init__()
            self.recipe, self.seed, self.epoch_cell = recipe, seed, epoch_cell
            self.rows_cell, self.render = rows_cell, render
            # per-sample checksums (pipelines/checks.py), read by address like the
            # epoch; None: a dataset converted without them, nothing is checked
            self.crcs = np.zeros(1, np.uint32) if crcs is None else np.ascontiguousarray(crcs)
            self.check = crcs is not None
            self.smax = max(v.size for v in recipe.views)

        def declare_state_and_memory(self, previous_state):
            max_w = np.uint64(self.metadata["width"].max())
            max_h = np.uint64(self.metadata["height"].max())
            V = self.recipe.num_views
            return (replace(previous_state, jit_mode=True, shape=(V, self.smax ** 2 * 3),
                            dtype=np.dtype("u1")),
                    (AllocationQuery((V, self.smax ** 2 * 3), np.dtype("u1")),
                     AllocationQuery((V, 4), np.dtype("f4")),
                     AllocationQuery((V, params.DRAWN_WIDTH), np.dtype("f4")),
                     AllocationQuery((max_h * max_w * np.uint64(3),), np.dtype("u1")),
                     AllocationQuery((1,), np.dtype("u1"))))

        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c, resize_crop_c, crop_box_c = _shared_kernels()
            draw_rest, render_view = photometric_cpu.draw_rest, photometric_cpu.render_view
            render, scratch = self.render, photometric_cpu.scratch_size(self.smax)
            rows_addr, rows_shape = self.rows_cell.ctypes.data, self.rows_cell.shape
            args = np.array([crop_args(v) for v in self.recipe.views], dtype=np.float64)
            sizes = np.array([v.size for v in self.recipe.views], dtype=np.int64)
            n_views = self.recipe.num_views
            epoch_addr = self.epoch_cell.ctypes.data
            crcs_addr, n_crcs, check = self.crcs.ctypes.data, len(self.crcs), self.check
            crc32_nb = checks.crc32_nb

            def decode(batch_indices, my_storage, metadata, storage_state):
                crops, boxes, rest, temp, bad = my_storage
                # (epoch, seed) read at run time: a captured seed would be typed as a
                # literal, compiling the shared kernels once per seed (and numba's
                # dispatchers typed with literals from several threads raced, in a test).
                cell = numba.carray(_address_as_pointer(epoch_addr), (2,), np.int64)
                epoch, seed = cell[0], cell[1]
                zero, one = np.uint32(cell[0] * 0), np.uint32(cell[0] * 0 + 1)
                no = cell[0] != cell[0]
                rows = numba.carray(_address_as_pointer(rows_addr), rows_shape, np.float64)
                crcs = numba.carray(_address_as_pointer(crcs_addr), (n_crcs,), np.uint32)
                for dst in my_range(len(batch_indices)):
                    src_ix = batch_indices[dst]
                    field = metadata[src_ix]
                    data = mem_read(field["data_ptr"], storage_state)
                    bad[dst, 0] = 0
                    if check and crc32_nb(data) != crcs[src_ix]:
                        bad[dst, 0] = 1  # never decoded; the loader replaces it
                        continue
                    height, width = np.uint32(field["height"]), np.uint32(field["width"])
                    if field["mode"] == jpg:
                        buf = temp[dst]
                        # offsets 0, scale 1/1, no DCT trick, no flip: passed as
                        # typed values, not literals (numba 0.68 corrupts the overload
                        # table of a dispatcher called with Literal[int]/[bool] args,
                        # and a later compile calling it then fails or spins)
                        imdecode_c(data, buf, height, width, height, width, zero, zero,
                                   one, one, no, no)
                        image = buf.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                    else:
                        image = data.reshape(height, width, 3)
                    tmp = np.empty(scratch if render else 0, np.float32)
                    for v in range(n_views):
                        top, left, h, w = crop_box_c(int(height), int(width), args[v, 0],
                                                     args[v, 1], args[v, 2], args[v, 3],
                                                     seed, epoch, src_ix, v)
                        s = sizes[v]
                        out = crops[dst, v, :s * s * 3].reshape(s, s, 3)
                        resize_crop_c(image, top, top + h, left, left + w, out)
                        draw_rest(rows[v], seed, epoch, src_ix, v, rest[dst, v])
                        if render:
                            render_view(out, rest[dst, v], out, tmp)
                        boxes[dst, v, 0] = top / height
                        boxes[dst, v, 1] = left / width
                        boxes[dst, v, 2] = h / height
                        boxes[dst, v, 3] = w / width
                n = len(batch_indices)
                return crops[:n], boxes[:n], rest[:n], bad[:n]

            decode.is_parallel = True
            return decode

    return MultiViewCrop


def _next(epoch_iter):
    """The next batch of FFCV's EpochIterator, or None at the end of the epoch.
    FFCV's own __next__ waits on its queue forever if the producer thread died
    (an exception there is only printed, e.g. a numba compile error): wait for an
    item or for the thread's end, and raise then instead of hanging."""
    q = epoch_iter.output_queue
    with q.not_empty:  # Queue's own condition: a put() wakes us at once
        while not q._qsize():
            if not epoch_iter.is_alive():
                raise RuntimeError("FFCV's loader thread stopped before the end of the epoch "
                                   "(its traceback is printed above, on stderr)")
            q.not_empty.wait(0.5)
    try:
        return next(epoch_iter)
    except StopIteration:
        return None


@dataclass
class Beton:
    """A checked data.beton: FFCV's reader of it, the per-sample checksums (None
    for a dataset converted before there were any), and where each sample's
    image bytes are (pointer and size, as the reader resolves them)."""
    path: Path
    reader: object
    crcs: np.ndarray | None
    ptr: np.ndarray
    size: np.ndarray


def open_beton(data_dir: Path) -> Beton:
    """data.beton checked before any batch: its size and tables against the
    manifest, its per-sample checksums loaded (pipelines/checks.py)."""
    from ffcv.reader import Reader

    path = data_dir / "data.beton"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; convert without --no-beton")
    from pipelines.integrity import check_sizes, read_manifest
    manifest = read_manifest(data_dir) if (data_dir / "manifest.json").is_file() else {}
    check_sizes(data_dir, manifest, ["data.beton"])
    try:
        reader = Reader(str(path))
        ptr, size = checks.beton_sample_bytes(reader)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - FFCV's reader fails in many ways on bad bytes
        raise ValueError(f"{path}: not a readable .beton ({type(e).__name__}: {e}); the file "
                         "is damaged: re-convert the dataset") from None
    want = (manifest.get("tables_sha256") or {}).get("data.beton")
    if want is not None and checks.beton_tables_sha256(reader) != want:
        raise ValueError(f"{path}: its sample tables (sizes, where each image is) differ from "
                         "the manifest's: the file is damaged; re-convert the dataset")
    crcs = checks.load(data_dir, manifest, checks.BETON_CHECKS, len(ptr)) if manifest else None
    return Beton(path, reader, crcs, ptr, size)


class _PlanOrder:
    """Stands in for FFCV's traversal order: our EpochPlan's order."""

    def __init__(self, owner: EpochLoader):
        self.owner = owner

    def sample_order(self, epoch: int):
        return np.array(self.owner.epoch_order(), dtype=np.int64)


class FfcvLoader(EpochLoader):
    """One epoch of Batches per iteration; call set_epoch(e) before each."""

    def __init__(self, data_dir, recipe, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world: int = 1, workers: int = 2,
                 device="cpu", dtype=torch.float32, keep_raw: bool = False,
                 compile: bool = False, stage: str = "auto", on_damaged: str = "skip",
                 triton_check: bool = True):
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption

        _fix_ffcv_state_types()

        beton = open_beton(Path(data_dir))
        self.path, self.sample_ptr = beton.path, beton.ptr  # for messages
        self.damage = DamageLog(on_damaged)
        self.epoch_cell = np.array([0, seed], dtype=np.int64)  # (epoch, seed) for the op
        self.rows_cell = photometric_cpu.recipe_rows(recipe)
        # On a CPU device the photometric stage runs in the op (the loader's
        # threads) as photometric_cpu's kernel; on a GPU the Finisher's stage runs it.
        self.render_here = torch.device(device).type == "cpu"
        op = _multiview_op_class()(recipe, seed, self.epoch_cell, self.rows_cell,
                                   self.render_here, beton.crcs)
        self.loader = Loader(str(beton.path), batch_size=batch_size, num_workers=workers,
                             order=OrderOption.SEQUENTIAL, drop_last=drop_last,
                             pipelines={"image": [op], "label": [IntDecoder()],
                                        "index": [IntDecoder()]})
        n = len(self.loader.indices)
        self.plan = EpochPlan(n, batch_size, seed, shuffle, drop_last, rank, world)
        self.loader.traversal_order = _PlanOrder(self)
        self.loader.first_traversal_order = self.loader.next_traversal_order()
        self.recipe, self.seed = recipe, seed
        self.device = torch.device(device)
        if stage == "auto":
            stage = "done" if self.render_here else default_stage(self.device)
        self.finish = Finisher(recipe, seed, self.device, dtype, keep_raw, stage, compile,
                               triton_check)

    def _replace_damaged(self, bad, crops, boxes, rest, labels, index) -> None:
        """Damaged samples (never decoded) take a repeat of the batch's first good
        one, in place (this batch's buffers), and are reported (pipelines/checks.py)."""
        problems = [f"sample {i} ({self.path}, image at byte {self.sample_ptr[i]}): checksum "
                    "mismatch" for i in index[bad]]
        good = np.flatnonzero(~bad)
        if not len(good):
            raise DamagedSample(f"{problems[0]}; and every other sample of its batch is damaged")
        self.damage.report(problems)
        for a in (crops, boxes, rest, labels, index):
            a[bad] = a[good[0]]

    def __iter__(self):
        self.epoch_cell[0] = self.epoch
        self.rows_cell[:] = photometric_cpu.recipe_rows(self.recipe)
        self.loader.next_epoch = self.epoch
        epoch_iter = iter(self.loader)
        try:
            while (item := _next(epoch_iter)) is not None:
                (crops, boxes, rest, bad), labels, index = item
                crops, boxes, rest = np.asarray(crops), np.asarray(boxes), np.asarray(rest)
                labels, index = np.array(labels).reshape(-1), np.array(index).reshape(-1)
                bad = np.asarray(bad).reshape(-1).astype(bool)
                if bad.any():
                    self._replace_damaged(bad, crops, boxes, rest, labels, index)
                crops = torch.as_tensor(crops)
                views = [crops[:, v, : vr.size ** 2 * 3].reshape(-1, vr.size, vr.size, 3)
                         for v, vr in enumerate(self.recipe.views)]
                boxes = torch.as_tensor(np.array(boxes))
                done = None
                if self.render_here:
                    # Final views: finish() normalises them into new memory (and
                    # copies raw), before the Loader reuses this buffer.
                    done = photometric_cpu.fields_of(torch.as_tensor(np.array(rest)))
                    done["crop"] = boxes
                else:
                    # The Loader reuses its buffers: copy out before the next batch.
                    views = [x.clone() for x in views]
                yield self.finish(views, boxes, labels, index, self.epoch, done=done)
        finally:
            # An epoch abandoned early (a break, a test taking one batch) must stop
            # FFCV's producer thread, or it keeps decoding into released buffers.
            epoch_iter.close()
