"""FFCV backend: the stock Loader over data.beton with one custom operation that
decodes each image once, samples V crop boxes (torchvision's RandomResizedCrop
algorithm, pipelines/sampling.py), resizes each into its slot and writes each
view's whole parameter row (params.WIDTH: the crop field and the drawn rest,
counter RNG, the numbers every backend draws) to a side output. On a CPU device
the photometric stage runs in the op itself, per view, by photometric_cpu's
numba kernel, in the loader's threads (3.8x torchvision at 224 px on 2 cores:
RESULTS.md); on a GPU the Finisher's stage applies the same row on the device
(pipelines/batch.py: one Triton launch per view, or the batched torch ops it
falls back to).

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
from pipelines.batch import Finisher
from pipelines.checks import DamagedSample, DamageLog
from pipelines.epochs import EpochLoader, EpochPlan
from pipelines.sampling import crop_args, crop_field, make_crop_box


@intrinsic
def _address_as_pointer(typingctx, addr):
    sig = nbtypes.voidptr(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


_SHARED: dict = {}


def _crop_field_nb():
    """sampling.crop_field compiled once per process, fastmath off: the quotients
    bit for bit as numpy computes them for the other backends."""
    if "crop_field" not in _SHARED:
        _SHARED["crop_field"] = numba.njit(fastmath=False)(crop_field)
    return _SHARED["crop_field"]


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
        """image field -> (views uint8 (V, S*S*3), parameter row float32
        (V, params.WIDTH)) per sample. With ``render`` the views are final (the
        photometric stage ran here, photometric_cpu), else the crops, which the
        Finisher renders on the device from this same row (nothing is drawn
        twice). The row is the crop field (sampling.crop_field) and the drawn rest
        (photometric_cpu.draw_rest, the drawer every backend uses); the draw table
        is read by address from ``rows_cell``. A subclass of the field's decoder class:
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
                     AllocationQuery((V, params.WIDTH), np.dtype("f4")),
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
            crc32_nb, crop_field_c, at = checks.crc32_nb, _crop_field_nb(), params.DRAWN_AT

            def decode(batch_indices, my_storage, metadata, storage_state):
                crops, prow, temp, bad = my_storage
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
                        y0, x0, fh, fw = crop_field_c(top, left, h, w, height, width)
                        prow[dst, v, 0], prow[dst, v, 1] = y0, x0
                        prow[dst, v, 2], prow[dst, v, 3] = fh, fw
                        draw_rest(rows[v], seed, epoch, src_ix, v, prow[dst, v, at:])
                        if render:
                            render_view(out, prow[dst, v, at:], out, tmp)
                n = len(batch_indices)
                return crops[:n], prow[:n], bad[:n]

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

    def __init__(self, cfg, chosen, finish: Finisher):
        """cfg: the LoaderConfig; chosen: what build_loader resolved from it
        (pipelines/build.py Resolved); finish: the last stage it built."""
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption

        _fix_ffcv_state_types()

        beton = open_beton(Path(cfg.data))
        self.path, self.sample_ptr = beton.path, beton.ptr  # for messages
        self.resolved, self.recipe, self.device = chosen, chosen.recipe, chosen.device
        self.damage = DamageLog(cfg.on_damaged)
        self.epoch_cell = np.array([0, cfg.seed], dtype=np.int64)  # (epoch, seed) for the op
        self.rows_cell = photometric_cpu.recipe_rows(self.recipe)
        # Stage "done" (the default on a CPU device): the photometric stage runs in
        # the op (the loader's threads) as photometric_cpu's kernel; otherwise the
        # Finisher's stage runs it, from the row the op drew.
        self.render_here = chosen.stage == "done"
        op = _multiview_op_class()(self.recipe, cfg.seed, self.epoch_cell, self.rows_cell,
                                   self.render_here, beton.crcs)
        self.loader = Loader(str(beton.path), batch_size=cfg.batch_size,
                             num_workers=cfg.workers, order=OrderOption.SEQUENTIAL,
                             drop_last=cfg.drop_last,
                             pipelines={"image": [op], "label": [IntDecoder()],
                                        "index": [IntDecoder()]})
        n = len(self.loader.indices)
        self.plan = EpochPlan(n, cfg.batch_size, cfg.seed, cfg.shuffle, cfg.drop_last, cfg.rank,
                              cfg.world)
        self.loader.traversal_order = _PlanOrder(self)
        self.loader.first_traversal_order = self.loader.next_traversal_order()
        self.seed, self.finish = cfg.seed, finish

    def _replace_damaged(self, bad, crops, rows, labels, index) -> None:
        """Damaged samples (never decoded) take a repeat of the batch's first good
        one, in place (this batch's buffers), and are reported (pipelines/checks.py)."""
        problems = [f"sample {i} ({self.path}, image at byte {self.sample_ptr[i]}): checksum "
                    "mismatch" for i in index[bad]]
        good = np.flatnonzero(~bad)
        if not len(good):
            raise DamagedSample(f"{problems[0]}; and every other sample of its batch is damaged")
        self.damage.report(problems)
        for a in (crops, rows, labels, index):
            a[bad] = a[good[0]]

    def __iter__(self):
        self.epoch_cell[0] = self.epoch
        self.loader.next_epoch = self.epoch
        epoch_iter = iter(self.loader)
        try:
            while (item := _next(epoch_iter)) is not None:
                (crops, rows, bad), labels, index = item
                crops, rows = np.asarray(crops), np.array(rows)  # rows: copied out of
                labels, index = np.array(labels).reshape(-1), np.array(index).reshape(-1)
                bad = np.asarray(bad).reshape(-1).astype(bool)      # FFCV's reused buffer
                if bad.any():
                    self._replace_damaged(bad, crops, rows, labels, index)
                crops = torch.as_tensor(crops)
                views = [crops[:, v, : vr.size ** 2 * 3].reshape(-1, vr.size, vr.size, 3)
                         for v, vr in enumerate(self.recipe.views)]
                # Final views (render_here): finish() normalises them into new memory
                # (and copies raw) before the Loader reuses this buffer; crops for the
                # device stage are copied out first.
                if not self.render_here:
                    views = [x.clone() for x in views]
                yield self.finish(views, rows, labels, index)
        finally:
            # An epoch abandoned early (a break, a test taking one batch) must stop
            # FFCV's producer thread, or it keeps decoding into released buffers.
            epoch_iter.close()
