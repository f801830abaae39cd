"""WebDataset tar shards plus the DALI index file of each, for ``fn.readers.webdataset``.

Each sample is two members sharing the key ``%09d`` (its index in the dataset):

    <key>.jpg | <key>.png   the encoded RGB image
    <key>.meta              int64 little-endian [label, index, height, width]
                            (label -1 when unlabelled; height and width of the
                            decoded image, so that a loader can draw crop boxes
                            before decoding), read by DALI with dtypes=INT64

and ``samples.crc32`` next to the shards: each sample's checksum
(pipelines/checks.py).

Every tar member costs at least 1 KiB (header + one padded block), more than a
CIFAR JPEG, so label, index and size share one member instead of one each.

Tar headers are deterministic (mtime 0, uid/gid 0, mode 0644): the same input
gives byte-identical shards. The index of each shard is made by DALI's own
``wds2idx`` (``IndexCreator``) once the shard is closed.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from pipelines.checks import RECORDS_CHECKS, crc_records_sample


def _index_creator():
    try:
        from wds2idx import IndexCreator  # installed with nvidia-dali
    except ImportError as e:
        raise RuntimeError("writing DALI records needs nvidia-dali (its wds2idx); "
                           "install it or pass --no-records") from e
    return IndexCreator


class ShardWriter:
    """Append samples; a new shard starts every ``shard_size`` samples."""

    def __init__(self, folder: Path, shard_size: int):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.IndexCreator = _index_creator()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.shards: list[dict] = []
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0
        self.crcs: list[int] = []  # per sample: pipelines/checks.py

    def write(self, index: int, label: int, image: bytes, ext: str,
              size: tuple[int, int]) -> None:
        """``size``: (height, width) of the image once decoded (EXIF applied)."""
        if self._tar is None or self._in_shard == self.shard_size:
            self._open_next()
        key = f"{index:09d}"
        meta = np.array([label, index, *size], dtype="<i8").tobytes()
        members = [(f"{key}.{ext}", image), (f"{key}.meta", meta)]
        self.crcs.append(crc_records_sample(image, meta))
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            self._tar.addfile(info, io.BytesIO(payload))
        self._in_shard += 1
        self.shards[-1]["count"] += 1

    def _open_next(self) -> None:
        self._close_current()
        name = f"shard-{len(self.shards):06d}.tar"
        self.shards.append({"tar": name, "index": name[:-4] + ".idx", "count": 0})
        self._tar = tarfile.open(self.folder / name, "w", format=tarfile.USTAR_FORMAT)
        self._in_shard = 0

    def _close_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        shard = self.shards[-1]
        with self.IndexCreator(str(self.folder / shard["tar"]),
                               str(self.folder / shard["index"]), verbose=False) as ic:
            ic.create_index()

    def close(self) -> list[dict]:
        """Closes the last shard and writes the per-sample checksums."""
        self._close_current()
        (self.folder.parent / RECORDS_CHECKS).write_bytes(
            np.array(self.crcs, dtype="<u4").tobytes())
        return self.shards
