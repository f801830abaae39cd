"""Per-sample checksums and what a loader does with a damaged sample.

Whole-file sizes are checked at start (pipelines/integrity.py), but a flipped
bit inside one JPEG keeps the size, and a JPEG decoder either fails on it (a
crash in a decoder thread) or, worse, decodes it into a different image that
trains silently. So the converter (tool version 1.3) also records the CRC-32
(zlib's) of every sample's stored bytes:

    records/samples.crc32   uint32 LE, one per sample in dataset order: CRC-32 of
                            the image member, continued over the 32-byte meta
                            member (label, index and size are covered too)
    data.beton.crc32        uint32 LE, one per sample: CRC-32 of the image
                            field's bytes as FFCV's reader hands them to a decoder

and the SHA-256 of the .beton's metadata and allocation tables (they hold each
sample's size and where its bytes are: read once at start, so checked once).
Both files are themselves in the manifest's ``integrity`` map and their hash
is checked when they are loaded. Every loader checks a sample's CRC before the
bytes reach a decoder (zlib.crc32: ~3 GB/s on this CPU, ~9 ms per batch of 256
ImageNet JPEGs; in the FFCV op a numba CRC per sample in the loader's threads).

A damaged sample is never decoded. ``on_damaged``:
  "skip" (default): its slot in the batch is taken by a repeat of the batch's
          first good sample (same index, so the same views and parameters), so
          every batch keeps its size (DDP's gathers need equal sizes); a line on
          stderr names it, and ``loader.damaged`` counts it (metrics.jsonl).
  "stop": the loader raises DamagedSample naming the sample and its file.
A batch with no good sample stops the run either way.
"""

from __future__ import annotations

import hashlib
import sys
import zlib
from pathlib import Path

import numba
import numpy as np

RECORDS_CHECKS = "records/samples.crc32"
BETON_CHECKS = "data.beton.crc32"
POLICIES = ("skip", "stop")


class DamagedSample(ValueError):
    """A sample whose bytes do not match the converter's checksum (on_damaged=stop)."""


def crc_records_sample(image: bytes | memoryview, meta: bytes | memoryview) -> int:
    return zlib.crc32(meta, zlib.crc32(image))


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        table[n] = c
    return table


TABLE = _crc_table()


@numba.njit(cache=False, nogil=True)
def _crc32_table_loop(data):
    c = np.uint32(0xFFFFFFFF)
    for b in data:
        c = TABLE[(c ^ np.uint32(b)) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
    return c ^ np.uint32(0xFFFFFFFF)


def _crc32_for_numba():
    """zlib's CRC-32 of a uint8 array, callable from numba code (FFCV's op): the
    system zlib through ctypes (2.9 GB/s on this CPU), else a table loop in numba
    (0.44 GB/s; RESULTS.md)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("z")
    if name is None:
        return _crc32_table_loop
    fn = ctypes.CDLL(name).crc32
    fn.restype, fn.argtypes = ctypes.c_ulong, [ctypes.c_ulong, ctypes.c_void_p, ctypes.c_uint]

    @numba.njit(cache=False, nogil=True)
    def crc32(data):
        return np.uint32(fn(0, data.ctypes.data, len(data)))

    return crc32


crc32_nb = _crc32_for_numba()


_NOTED: set[tuple[str, str]] = set()


def load(data_dir: Path, manifest: dict, name: str, n: int) -> np.ndarray | None:
    """The checksums file ``name`` checked against the manifest's hash; None
    (with one line on stderr) for a dataset converted before there were any."""
    path = Path(data_dir) / name
    want = (manifest.get("integrity") or {}).get(name)
    if want is None:
        said = (str(Path(data_dir).resolve()), name)
        if said not in _NOTED:  # once per dataset and process, however often it is opened
            _NOTED.add(said)
            print(f"{data_dir}: no per-sample checksums (converted by tool version "
                  f"{manifest.get('tool_version', '?')} < 1.3): a damaged sample cannot be "
                  "detected; re-convert to have them", file=sys.stderr)
        return None
    if not path.is_file():
        raise ValueError(f"{path}: missing (the manifest lists it); re-convert the dataset "
                         "or restore the file")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != want["sha256"] or len(raw) != 4 * n:
        raise ValueError(f"{path}: damaged (its hash or length differs from the manifest's); "
                         "re-convert the dataset or restore the file")
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


def substitute(ids: np.ndarray, bad: np.ndarray, what: str) -> np.ndarray:
    """``ids`` with every position in ``bad`` (bool mask) replaced by the first
    good id; raises DamagedSample when none is good."""
    if not bad.any():
        return ids
    good = np.flatnonzero(~bad)
    if not len(good):
        raise DamagedSample(f"{what}: every sample of the batch is damaged; re-convert the "
                            "dataset or restore its files")
    out = ids.copy()
    out[bad] = ids[good[0]]
    return out


class DamageLog:
    """What a loader does with the damaged samples it found (see module doc)."""

    def __init__(self, policy: str = "skip"):
        if policy not in POLICIES:
            raise ValueError(f"on_damaged {policy!r}: choose one of {', '.join(POLICIES)}")
        self.policy = policy
        self.count = 0

    def report(self, problems: list[str]) -> None:
        """``problems``: one 'sample i (file, byte offset): what' per damaged
        sample of a batch."""
        if not problems:
            return
        if self.policy == "stop":
            raise DamagedSample(f"{problems[0]}; re-convert the dataset or restore the file, "
                                "or pass --on-damaged skip to train on without it")
        for problem in problems:
            self.count += 1
            print(f"skipped {problem} ({self.count} damaged samples skipped so far)",
                  file=sys.stderr)


def beton_tables_sha256(reader) -> str:
    """SHA-256 of a .beton's metadata and allocation tables (an ffcv Reader's)."""
    h = hashlib.sha256(np.ascontiguousarray(reader.metadata).tobytes())
    h.update(np.ascontiguousarray(reader.alloc_table).tobytes())
    return h.hexdigest()


def beton_sample_bytes(reader, field: str = "image"):
    """(data_ptr, size) per sample of ``field``, as FFCV's reader resolves them
    (the allocation whose pointer is the sample's data_ptr)."""
    names = reader.field_names
    ptr = reader.metadata[f"f{names.index(field)}"]["data_ptr"].astype(np.uint64)
    table = reader.alloc_table
    order = np.argsort(table["ptr"])
    ptrs, sizes = table["ptr"][order], table["size"][order]
    at = np.clip(np.searchsorted(ptrs, ptr), 0, len(ptrs) - 1)
    if (ptrs[at] != ptr).any():
        bad = int(np.flatnonzero(ptrs[at] != ptr)[0])
        raise ValueError(f"{reader.file_name}: sample {bad}'s image points at no allocation: "
                         "the file is damaged; re-convert the dataset")
    return ptr, sizes[at]


def beton_crcs(path: Path) -> tuple[np.ndarray, str]:
    """Per-sample CRC-32 of a written .beton's image field and its tables' hash."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    ptr, size = beton_sample_bytes(reader)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    crcs = np.array([zlib.crc32(data[p:p + s]) for p, s in zip(ptr.tolist(), size.tolist())],
                    dtype="<u4")
    return crcs, beton_tables_sha256(reader)
