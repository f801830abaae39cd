"""The converter's second pass: the FFCV .beton, written by FFCV's own
``DatasetWriter`` under supervision, from the same pixels as the records.

The source is read twice (the records pass, then this one), so a file can
change in between. The records pass keeps a digest of every sample's decoded
pixels (``image_decode.pixel_digest``); here each sample is decoded again and
its digest compared before FFCV sees it: a file that changed (or vanished, or
became a FIFO) between the passes ends the conversion, named, instead of two
outputs with different pixels.

Why ``_SupervisedWriter`` overrides ``DatasetWriter._write_common`` (FFCV 1.0.2,
ffcv/writer.py): FFCV forks its worker ``Process``es and then polls the count of
finished samples in ``while previous != self.num_samples: sleep(0.1)``; a worker
that dies (an exception in a sample, SIGKILL from the out-of-memory killer)
never adds its samples, so the parent waits forever, with FFCV's shared memory
segment still allocated, and the dead worker prints a traceback. The override
is FFCV's own body (same queue protocol, ``prepare``, ``MemoryAllocator``,
worker function and ``finalize``) with, in place of the bare loop, a loop that
also watches the workers' exit statuses and their failure lines, and a
``finally`` that stops the workers and unlinks the shared memory whatever
happens. Subclassing keeps it to this writer: nothing in ``ffcv.writer`` is
patched, for this process or anyone else's. The workers run FFCV's
``worker_job_indexed_dataset`` unchanged inside ``_guarded`` (SIGINT ignored,
any exception turned into one line for the parent, then ``os._exit``).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import queue
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from conversion import workers as cw
from conversion.image_decode import BadImage, pixel_digest, pixels
from pipelines.cli import shown

# How many samples one FFCV task holds (FFCV's chunksize).
CHUNK = 256


class SampleChanged(Exception):
    """The second read of a sample does not give the first read's pixels."""


class BetonDataset:
    """What FFCV's DatasetWriter reads: (image, label, index) for each valid
    sample, each checked against the records pass's pixel digest."""

    def __init__(self, source, valid: list[int], digests: np.ndarray, max_res: int | None,
                 inflight: cw.InFlight):
        self.source, self.valid, self.digests = source, valid, digests
        self.max_res, self.inflight = max_res, inflight

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, j: int):
        i = self.valid[j]
        self.inflight.set(i)
        try:
            rgb = pixels(self.source.read(i), self.max_res).rgb
        except (BadImage, OSError, MemoryError) as e:
            raise SampleChanged(f"{cw.name(self.source.key(i))}: changed while converting: "
                                f"the first read was a good image, the second failed ({e}); "
                                "convert again from a source nobody is writing to") from None
        if pixel_digest(rgb) != self.digests[j].tobytes():
            raise SampleChanged(f"{cw.name(self.source.key(i))}: changed while converting: its "
                                "pixels differ from the first read (the records were written "
                                "from those); convert again from a source nobody is writing to")
        return rgb, self.source.label(i), j


def _guarded(slot: int, inflight: cw.InFlight, stage: Path, key, work_fn, args) -> None:
    """A writer process: FFCV's worker function, with Ctrl-C left to the parent and
    any failure reported as one line (never a child's traceback)."""
    cw.worker_init(inflight, slot)
    try:
        work_fn(*args)
    except BaseException as e:  # noqa: BLE001 - whatever it is, the parent names it
        if isinstance(e, SampleChanged):
            message = str(e)
        else:
            files = [cw.name(key(i)) for i in inflight.samples([inflight.table[slot, 0]])]
            message = (f"{files[0] if files else 'data.beton'}: FFCV could not write it "
                       f"({type(e).__name__}: {shown(str(e), 200)})")
        cw.report_failure(stage, message)


def _make_writer_class():
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter

    class _SupervisedWriter(DatasetWriter):
        def __init__(self, fname, fields, *, page_size, num_workers, stage, inflight, key,
                     quiet):
            super().__init__(fname, fields, page_size=page_size, num_workers=num_workers)
            self.stage, self.inflight, self.key, self.quiet = stage, inflight, key, quiet

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            ctx = mp.get_context("fork")  # the dataset (and source) are inherited
            self.num_samples = num_samples
            self.prepare()  # the header, and self.metadata_sm: FFCV's shared memory
            processes: list = []
            queues: list = []
            done = False
            try:
                workqueue = ctx.Queue()
                allocations_queue = ctx.Queue()
                queues += [workqueue, allocations_queue]
                for todo in queue_content:
                    workqueue.put(todo)
                for _ in range(self.num_workers):
                    workqueue.put(None)
                done_number = ctx.Value(ctypes.c_uint64, 0)
                allocator = MemoryAllocator(self.fname, self.data_region_start,
                                            self.page_size)
                worker_args = (workqueue, self.metadata_sm, self.metadata_type, self.fields,
                               allocator, done_number, allocations_queue, *extra_worker_args)
                with cw.sigint_deferred():
                    for slot in range(self.num_workers):
                        p = ctx.Process(target=_guarded, args=(slot, self.inflight, self.stage,
                                                                self.key, work_fn, worker_args))
                        p.start()
                        processes.append(p)
                progress = tqdm(total=num_samples, disable=self.quiet, desc="beton",
                                unit="img")
                previous = 0
                # Read without its lock: a worker killed while holding it would
                # otherwise stop this loop for good.
                count = done_number.get_obj()
                while previous != num_samples:
                    self._check(processes, count, num_samples)
                    value = count.value
                    progress.update(value - previous)
                    previous = value
                    if previous != num_samples:
                        time.sleep(0.1)
                progress.close()
                allocations = []
                received = 0
                while received < len(processes):  # each worker sends its list, then ends
                    try:
                        allocations.extend(allocations_queue.get(timeout=0.2))
                        received += 1
                    except queue.Empty:
                        self._check(processes, count, num_samples)
                for p in processes:
                    p.join()
                self.finalize(allocations)
                done = True
            finally:
                if not done:
                    for p in processes:
                        if p.exitcode is None:
                            p.kill()  # a writer may be mid-page: nothing of it is kept
                    for p in processes:
                        p.join(10)
                    for q in queues:  # their feeder threads must not hold this process
                        q.cancel_join_thread()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

        def _check(self, processes, count, num_samples) -> None:
            """Raise WorkerFailed if a writer process failed or died."""
            codes = {p.pid: p.exitcode for p in processes}
            failed = cw.failures(self.stage)
            if failed:
                raise cw.WorkerFailed(failed[0] + "; nothing was written")
            if any(c not in (None, 0) for c in codes.values()):
                failed = cw.failures(self.stage)  # written before it exited
                raise cw.WorkerFailed(failed[0] + "; nothing was written" if failed else
                                      cw.describe_death(codes, self.inflight, self.key,
                                                        "an FFCV writer process"))
            if all(c == 0 for c in codes.values()) and count.value != num_samples:
                raise cw.WorkerFailed(f"data.beton: FFCV's writer processes ended after "
                                      f"{count.value} of {num_samples} samples; "
                                      "nothing was written")

    return _SupervisedWriter


def page_size_for(largest_image_bytes: int) -> int:
    """FFCV stores a sample within one page: a page that holds the largest raw
    image (FFCV's default, 8 MiB, does not hold a 2000x2000 one), a power of two."""
    from ffcv.writer import MAX_PAGE_SIZE, MIN_PAGE_SIZE

    need = max(4 * MIN_PAGE_SIZE, largest_image_bytes + largest_image_bytes // 4 + (1 << 16))
    size = 1 << (need - 1).bit_length()
    if size >= MAX_PAGE_SIZE:
        raise cw.WorkerFailed(f"an image of {largest_image_bytes} bytes does not fit FFCV's "
                              "largest page (4 GiB); convert with --max-res")
    return size


def write_beton(path: Path, source, valid: list[int], digests: np.ndarray,
                largest_image_bytes: int, args, stage: Path) -> float:
    """Write the .beton; returns the seconds spent writing (FFCV's import excluded)."""
    from ffcv.fields import IntField, RGBImageField

    image = RGBImageField(write_mode=args.write_mode, max_resolution=args.max_res,
                          jpeg_quality=args.quality,
                          compress_probability=args.compress_probability)
    workers = max(1, min(args.workers, -(-len(valid) // CHUNK)))
    inflight = cw.InFlight(workers)
    writer = _make_writer_class()(
        str(path), {"image": image, "label": IntField(), "index": IntField()},
        page_size=page_size_for(largest_image_bytes), num_workers=workers, stage=stage,
        inflight=inflight, key=source.key, quiet=args.quiet)
    # FFCV's 'proportion' mode draws with np.random in the workers: seed for repeatability.
    np.random.seed(0)
    t0 = time.perf_counter()
    writer.from_indexed_dataset(BetonDataset(source, valid, digests, args.max_res, inflight),
                                chunksize=CHUNK)
    return time.perf_counter() - t0
