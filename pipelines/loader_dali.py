"""DALI backends: ``dali-gpu`` (mixed decoding, crops on the GPU) and
``dali-cpu`` (the same graph with device_id=None).

One order and one RNG (DESIGN.md): DALI reads nothing on its own. An
``fn.external_source`` callback (``_Feeder``) hands the graph, batch by batch,
the encoded bytes of exactly the samples ``EpochPlan`` gives this rank, in that
order (views of the shards' memory maps, through their index files: no copy),
and each view's crop box as the resize's region of interest. The boxes are
``sampling.crop_boxes`` on the image size stored in the record's meta: the
counter RNG's (seed, epoch, index, view) draws that every
backend makes, so dali-gpu, dali-cpu, ffcv and torchvision emit the same samples
with the same parameters, and W ranks see what one process sees. The graph
decodes each image once and resizes V regions of it (antialiased linear, as
torchvision's bilinear). Flip, colour, grayscale, blur and solarize are drawn
with the counter RNG too and applied after: on a GPU by one Triton launch per view
(pipelines/photometric_triton.py; the batched torch ops of pipelines/photometric.py
when its first-batch self-check falls back), by photometric_cpu's numba kernel on a
CPU device (pipelines/batch.py's Finisher picks the stage).

Lifetime: the pipeline is built once, with the loader, and lives as long as it.
The feeder's stream of batches runs on from one epoch into the next
(speculatively: epoch e+1 from batch 0), so DALI's prefetch never stops at an
epoch boundary. A ticket per scheduled batch (which samples, their labels and
boxes) waits in a FIFO next to DALI's own queue; ``__iter__`` checks that the
front ticket is the batch it wants, and otherwise (a resumed run, an abandoned
epoch) points the feeder at the wanted batch and drains the stale ones.
DALI calls the feeder in the thread that calls ``pipe.run()`` (the training
loop), so the feeder's work for a batch (the CRC-32 of every sample, which
reads its pages, and the crop boxes) is done ahead on read-ahead threads
(pipelines/readahead.py): the callback only collects it.
Outputs are copied into torch before the next ``run``. On a GPU the copy and the
last stage (pipelines/batch.py: one Triton launch per view) run on a side stream,
one batch ahead (``prefetch``) of the batch handed to the training loop, which
waits on an event (no host sync); DALI's buffers are held until the copy's event
has passed.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.batch import Batch, Finisher
from pipelines.checks import DamagedSample, DamageLog, substitute
from pipelines.cli import one_line
from pipelines.epochs import EpochLoader, EpochPlan
from pipelines.photometric_cpu import param_rows, recipe_row
from pipelines.readahead import ReadAhead
from pipelines.records import Records
from pipelines.sampling import crop_boxes, crop_fields

PREFETCH = 2  # batches DALI works on ahead of the one being consumed
# The feeder's read-ahead (pipelines/readahead.py): batches prepared ahead of the one
# DALI asks for, and threads preparing them. One batch is ~8-10 ms of one core for 256
# ImageNet-size JPEGs from the page cache (RESULTS.md), so one thread keeps up with
# ~100 batches/s; the second overlaps reads when the pages come from disk. 0 prepares
# in the calling thread (the synchronous feeder: tests' and the benchmark's reference).
READ_AHEAD = 3
READ_THREADS = 2


# What the feeder hands the graph, one place for both sides: the encoded images,
# then per view v its region's (top, left) and (bottom, right) in source pixels.
def feed_width(views: int) -> int:
    return 1 + 2 * views


def roi_slots(v: int) -> tuple[int, int]:
    """Positions of view v's roi_start and roi_end among the fed inputs."""
    return 1 + 2 * v, 2 + 2 * v


def feed(encoded: list, boxes: np.ndarray) -> tuple:
    """(encoded images, pixel boxes (B, V, 4) as top, left, h, w) -> the inputs."""
    inputs = [None] * feed_width(boxes.shape[1])
    inputs[0] = encoded
    for v in range(boxes.shape[1]):
        top_left = boxes[:, v, :2].astype(np.float32)
        start, end = roi_slots(v)
        inputs[start], inputs[end] = top_left, top_left + boxes[:, v, 2:].astype(np.float32)
    return tuple(inputs)


@dataclass
class _Ticket:
    """One scheduled batch: what the host knows about what DALI is decoding."""
    epoch: int
    batch: int
    labels: np.ndarray      # int64 (B,)
    index: np.ndarray       # int64 (B,), dataset index
    row: np.ndarray         # float32 (B, V, params.WIDTH): every parameter of every view
    inputs: tuple           # what DALI was fed (no_copy: kept alive until consumed)
    problems: list          # damaged samples replaced in this batch (pipelines/checks.py)
    fatal: str | None       # every sample damaged: the batch cannot be made


class _Feeder:
    """The external source's callback: each call returns the next batch of the
    stream (epoch, batch) -> (epoch, batch + 1) -> ... -> (epoch + 1, 0) as
    (encoded images, roi_start and roi_end per view), and queues its ticket.
    The batches are prepared by ``ahead`` (READ_AHEAD of them, on READ_THREADS
    threads): ``prepare`` runs there, so it only reads what nothing else writes
    (the records, the plan, the per-epoch orders under a lock)."""

    def __init__(self, records: Records, plan: EpochPlan, views, seed: int):
        self.records, self.plan, self.views, self.seed = records, plan, views, seed
        self.table_rows = np.stack([recipe_row(vr) for vr in views])  # photometric_cpu's draw table
        self.table = records.table()  # maps every shard with a sample: no thread opens one
        self.tickets: deque[_Ticket] = deque()
        self._orders: dict[int, np.ndarray] = {}
        self._orders_lock = threading.Lock()
        self.ahead = ReadAhead(self.prepare, self.after, (0, 0), READ_AHEAD, READ_THREADS)

    def order(self, epoch: int) -> np.ndarray:
        with self._orders_lock:
            if epoch not in self._orders:
                if len(self._orders) > 1:  # the stream only ever needs two epochs at once
                    self._orders.pop(min(self._orders))
                self._orders[epoch] = np.asarray(self.plan.order(epoch), dtype=np.int64)
            return self._orders[epoch]

    def after(self, at: tuple[int, int]) -> tuple[int, int]:
        epoch, b = at
        return (epoch, b + 1) if b + 1 < self.plan.num_batches else (epoch + 1, 0)

    def seek(self, epoch: int, batch: int) -> None:
        self.ahead.seek((epoch, batch))

    def __call__(self):
        t = self.ahead.take()  # raises here what preparing it raised
        self.tickets.append(t)
        return t.inputs

    def prepare(self, at: tuple[int, int]) -> _Ticket:
        """Batch ``at``'s ticket, with DALI's inputs (on a read-ahead thread)."""
        epoch, b = at
        B = self.plan.batch_size
        ids = self.order(epoch)[b * B:(b + 1) * B]
        # A damaged sample never reaches the decoder: its slot gets a repeat of a
        # good one (checks.substitute); the loader reports it when it hands the
        # batch over, in order (raising here would surface inside DALI).
        bad = self.records.damaged(ids)
        problems = [f"{self.records.where(i)}: {self.records.damage}" for i in ids[bad]]
        fatal = None
        try:
            ids = substitute(ids, bad, f"epoch {epoch} batch {b}")
            rows, encoded = self.table[ids], self.records.encoded(ids)
        except DamagedSample as e:  # DALI is fed a placeholder; the batch is refused on arrival
            fatal = str(e)
            rows, encoded = np.array([[0, 0, 8, 8]]), [_placeholder_jpeg()]
        labels, index, heights, widths = rows.T
        boxes = crop_boxes(heights, widths, self.views, self.seed, epoch, index)
        inputs = feed(encoded, boxes)
        # the whole parameter row, drawn here, ahead, off the training thread
        row = param_rows(self.table_rows, self.seed, epoch, index,
                         crop_fields(boxes, heights, widths))
        return _Ticket(epoch, b, labels.copy(), index.copy(), row, inputs, problems, fatal)


def _placeholder_jpeg() -> np.ndarray:
    """An 8x8 black JPEG: what DALI decodes in place of a batch with no good sample."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()


def build_pipeline(source, recipe, batch_size: int, device_id, threads: int):
    """The graph: encoded bytes and per-view regions in, V uint8 (S_v, S_v, 3)
    views out. One decoder node whatever V is (tests count it)."""
    from nvidia.dali import fn, pipeline_def, types

    V = recipe.num_views

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id,
                  prefetch_queue_depth=PREFETCH)
    def pipe():
        n = feed_width(V)
        inputs = fn.external_source(
            source=source, num_outputs=n, batch=True, no_copy=True,
            dtype=[types.UINT8] + [types.FLOAT] * (n - 1), ndim=[1] * n)
        images = fn.decoders.image(inputs[0], device="cpu" if device_id is None else "mixed",
                                   output_type=types.RGB)
        views = []
        for v, vr in enumerate(recipe.views):
            start, end = roi_slots(v)
            views.append(fn.resize(images, size=[vr.size, vr.size],
                                   roi_start=inputs[start], roi_end=inputs[end],
                                   roi_relative=False, interp_type=types.INTERP_LINEAR,
                                   antialias=True))
        return tuple(views)

    p = pipe()
    p.build()
    return p


def to_torch(tl, device: torch.device, stream=None) -> torch.Tensor:
    """A dense DALI TensorList (CPU or GPU) -> a torch tensor of the same dtype
    on ``device``, in memory of its own (DALI may reuse its buffer once the copy
    is done). GPU -> cuda: copied on ``stream`` (non-blocking when given).
    The kind is told by type: every DALI tensor class has ``as_cpu`` (the old
    test on that attribute sent CPU outputs down the GPU copy: a segfault)."""
    from nvidia.dali.backend import TensorGPU, TensorListGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    on_gpu = isinstance(tl, (TensorGPU, TensorListGPU))
    t = tl.as_tensor() if hasattr(tl, "as_tensor") else tl
    if on_gpu and device.type == "cuda":
        out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
        feed_ndarray(t, out, cuda_stream=stream)
        return out
    arr = np.array(t.as_cpu() if on_gpu else t)  # a copy, host-synchronous
    return torch.from_numpy(arr).to(device)


class DaliLoader(EpochLoader):
    """One epoch of Batches per iteration; call set_epoch(e) before each."""

    def __init__(self, cfg, chosen, finish: Finisher):
        """cfg: the LoaderConfig; chosen: what build_loader resolved from it
        (pipelines/build.py Resolved); finish: the last stage it built."""
        gpu = chosen.backend == "dali-gpu"
        if gpu and not torch.cuda.is_available():
            raise RuntimeError("dali-gpu needs a CUDA device; use dali-cpu on this machine")
        records = Records(cfg.data)
        self.resolved, self.recipe, self.device = chosen, chosen.recipe, chosen.device
        self.damage = DamageLog(cfg.on_damaged)
        self.plan = EpochPlan(len(records), cfg.batch_size, cfg.seed, cfg.shuffle, cfg.drop_last,
                              cfg.rank, cfg.world)
        self.seed, self.finish = cfg.seed, finish
        self.feeder = _Feeder(records, self.plan, self.recipe.views, cfg.seed)
        device_id = (self.device.index if self.device.index is not None
                     else torch.cuda.current_device()) if gpu else None
        # DALI refuses num_threads < 1; --workers 0 ("no extra workers") means one.
        self.threads = max(1, cfg.workers)
        self.pipe = build_pipeline(self.feeder, self.recipe, cfg.batch_size, device_id,
                                   self.threads)
        self._stream = torch.cuda.Stream(self.device) if gpu else None
        self._held = None  # (DALI outputs, event of their copy): alive until copied
        if cfg.prefetch < 0:
            raise ValueError(f"prefetch {cfg.prefetch} < 0")
        self.prefetch = cfg.prefetch

    def _next_outputs(self):
        """The outputs of the next scheduled batch and its ticket."""
        if self._held is not None:  # the previous copies are done before DALI reuses
            self._held[1].synchronize()  # their buffers (only the copy stream waits)
            self._held = None
        try:
            outs = self.pipe.run()
        except RuntimeError as e:  # DALI's "Critical error in pipeline": many lines
            raise RuntimeError(self._failed(e)) from None
        return outs, self.feeder.tickets.popleft()

    def _failed(self, e: Exception) -> str:
        """One line for a DALI failure: what failed, which samples were in flight and,
        for a dataset without per-sample checksums (converted before tool 1.3, so a
        damaged image reaches the decoder), what to do about it."""
        t = self.feeder.tickets[0] if self.feeder.tickets else None
        # DALI decodes ahead: the failure is in this batch or one scheduled after it
        where = "" if t is None else f" at epoch {t.epoch}, batch {t.batch} or one read ahead"
        hint = ("; this dataset has no per-sample checksums (converted before tool version "
                "1.3), so a damaged image reaches the decoder: find it with python -m "
                f"tools.verify_dataset {self.feeder.records.dir}, or re-convert the dataset"
                if self.feeder.records.crcs is None else "")
        return f"DALI failed{where}: {one_line(str(e), 300)}{hint}"

    def _prepare(self, outs, t: _Ticket):
        """DALI's outputs -> a Batch. On a GPU everything (the copies out of DALI's
        buffers, the Triton stage) runs on the side stream, and an event marks its
        end; DALI's buffers are held until that event passes."""
        if self._stream is None:
            crops = [to_torch(o, self.device) for o in outs]
            return self.finish(crops, t.row, t.labels, t.index), None
        with torch.cuda.stream(self._stream):  # allocations belong to the side stream
            crops = [to_torch(o, self.device, self._stream) for o in outs]
            copied = torch.cuda.Event()
            copied.record(self._stream)
            batch = self.finish(crops, t.row, t.labels, t.index)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        self._held = (outs, copied)
        return batch, ready

    def _hand_over(self, item) -> Batch:
        """The training stream waits for the batch (on the GPU: an event, no host
        sync) and owns its memory from here: the caching allocator will not hand
        the side stream these blocks until the training stream is done with them."""
        batch, ready = item
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for x in [*batch.views, batch.row, batch.labels, batch.index]:
                x.record_stream(current)
        return batch

    def __iter__(self):
        want = (self.epoch, self.skip)
        if self.skip >= self.plan.num_batches:
            return
        fifo = self.feeder.tickets
        if not fifo or (fifo[0].epoch, fifo[0].batch) != want:
            # Work already scheduled is not this epoch's from `skip` (first use, a
            # resume, an abandoned epoch): point the stream here, drop the rest.
            self.feeder.seek(*want)
            for _ in range(len(fifo)):
                self._next_outputs()
        # Batches are finished `prefetch` ahead of the one handed over: on a GPU
        # the next batch's stage runs on the side stream while the model trains.
        ahead: deque = deque()
        for b in range(self.skip, self.plan.num_batches):
            outs, t = self._next_outputs()
            assert (t.epoch, t.batch) == (self.epoch, b), "DALI and its feeder fell out of step"
            if t.fatal:
                raise DamagedSample(t.fatal)
            self.damage.report(t.problems)
            ahead.append(self._prepare(outs, t))
            if len(ahead) > self.prefetch:
                yield self._hand_over(ahead.popleft())
        while ahead:
            yield self._hand_over(ahead.popleft())
