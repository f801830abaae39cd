"""Random access to converted records without DALI's reader: the WebDataset
shards via their DALI index files (offsets). Every backend that reads records
(torchvision, dali-gpu and dali-cpu through ``fn.external_source``) reads them
here, so they all read sample i from the same bytes."""

from __future__ import annotations

import io
import mmap
import sys
from pathlib import Path

import numpy as np
from PIL import Image

META_FIELDS = ("label", "index", "height", "width")  # int64 little-endian, per sample


def open_rgb(data: bytes) -> Image.Image:
    """A record's encoded image as an RGB PIL image."""
    return Image.open(io.BytesIO(data)).convert("RGB")


class Records:
    """records[i] -> (encoded image bytes, label, index), i in dataset order;
    ``table()`` -> (N, 4) int64 [label, index, height, width] for every sample."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        from pipelines.integrity import read_manifest
        self.manifest = read_manifest(self.dir)
        rec = self.manifest["outputs"].get("records")
        if not rec:
            raise FileNotFoundError(f"{self.dir}: converted without records (--no-records)")
        from pipelines.integrity import check_sizes
        try:
            names = [(f"records/{s['tar']}", f"records/{s['index']}") for s in rec["shards"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{self.dir / 'manifest.json'}: its list of shards is damaged "
                             f"({type(e).__name__}: {e}); re-convert the dataset") from None
        check_sizes(self.dir, self.manifest, [n for pair in names for n in pair])
        self.tars = [str(self.dir / t) for t, _ in names]
        self.idxs = [str(self.dir / i) for _, i in names]
        rows = []  # (shard, img_offset, img_size, meta_offset, meta_size)
        for k, idx in enumerate(self.idxs):
            try:
                for line in Path(idx).read_text().splitlines()[1:]:
                    parts = line.split()
                    comp = {parts[j]: (int(parts[j + 1]), int(parts[j + 2]))
                            for j in range(0, len(parts), 4)}
                    img = comp.get("jpg") or comp.get("png")
                    rows.append((k, img[0], img[1], *comp["meta"]))
            except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as e:
                raise ValueError(f"{idx}: not a readable DALI index ({type(e).__name__}: {e}); "
                                 "the file is damaged: re-convert the dataset") from None
        self.entries = np.array(rows, dtype=np.int64).reshape(-1, 5)
        sizes = np.array([Path(t).stat().st_size for t in self.tars], dtype=np.int64)
        ends = np.maximum(self.entries[:, 1] + self.entries[:, 2],
                          self.entries[:, 3] + self.entries[:, 4])
        bad = (self.entries[:, 1:] < 0).any(axis=1) | (ends > sizes[self.entries[:, 0]])
        if bad.any():
            k = int(self.entries[np.flatnonzero(bad)[0], 0])
            raise ValueError(f"{self.idxs[k]}: points past the end of {self.tars[k]}: the "
                             "index or the shard is damaged; re-convert the dataset")
        from pipelines import checks
        self.crcs = checks.load(self.dir, self.manifest, checks.RECORDS_CHECKS, len(rows))
        self._maps: dict[int, mmap.mmap] = {}
        self._table: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def where(self, i: int) -> str:
        """Sample i's place on disk, for messages: shard file and byte offset."""
        k, off = int(self.entries[i][0]), int(self.entries[i][1])
        return f"sample {i} ({self.tars[k]}, image at byte {off})"

    def _map(self, k: int) -> mmap.mmap:
        if k not in self._maps:  # opened lazily: each DataLoader worker maps its own
            with open(self.tars[k], "rb") as f:
                # ACCESS_COPY: views of it are writable numpy arrays (DALI's external
                # source wants those) without copying; nothing is ever written back.
                self._maps[k] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._maps[k]

    def __getitem__(self, i: int) -> tuple[bytes, int, int]:
        k, off, size, moff, _ = self.entries[i].tolist()
        m = self._map(k)
        label, index = np.frombuffer(m[moff:moff + 16], dtype="<i8")
        return m[off:off + size], int(label), int(index)

    def damaged(self, ids) -> np.ndarray:
        """Bool mask over ``ids``: samples whose bytes (image and meta) do not match
        the converter's checksum. A dataset without checksums (converted before tool
        1.3) gets the one check its bytes allow: the image starts as a JPEG or a PNG
        does. A zeroed or overwritten image is then never handed to a decoder (DALI
        2.4's CPU decoder was seen to crash the process on one, not raise)."""
        ids = np.asarray(ids, dtype=np.int64)
        bad = np.zeros(len(ids), dtype=bool)
        if self.crcs is None:
            for j, (k, off, size) in enumerate(self.entries[ids, :3].tolist()):
                head = bytes(memoryview(self._map(k))[off:off + min(size, 8)])
                bad[j] = not head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"))
            return bad
        from pipelines.checks import crc_records_sample
        for j, (k, off, size, moff, msize) in enumerate(self.entries[ids].tolist()):
            m = memoryview(self._map(k))
            bad[j] = crc_records_sample(m[off:off + size], m[moff:moff + msize]) \
                != self.crcs[ids[j]]
        return bad

    @property
    def damage(self) -> str:
        """What ``damaged`` found, for messages."""
        return ("checksum mismatch" if self.crcs is not None else
                "not a JPEG or PNG image (the dataset has no per-sample checksums to check)")

    def encoded(self, ids) -> list[np.ndarray]:
        """The encoded images of samples ``ids`` as uint8 arrays that view the
        shards' memory maps (no copy; the pages are read by whoever reads them)."""
        out = []
        for k, off, size in self.entries[np.asarray(ids, dtype=np.int64), :3].tolist():
            out.append(np.frombuffer(self._map(k), dtype=np.uint8, count=size, offset=off))
        return out

    def table(self) -> np.ndarray:
        """(N, 4) int64: label, index, height, width of every sample (read once,
        vectorised per shard). Records converted before the size was stored in
        the meta member (16-byte meta) get it from each image's header instead."""
        if self._table is not None:
            return self._table
        out = np.zeros((len(self), 4), dtype=np.int64)
        old = []
        for k in range(len(self.tars)):
            rows = np.flatnonzero(self.entries[:, 0] == k)
            if not len(rows):
                continue
            whole = np.frombuffer(self._map(k), dtype=np.uint8)
            width = self.entries[rows, 4]
            for n_bytes, n_fields in ((32, 4), (16, 2)):
                sel = rows[width == n_bytes]
                offs = self.entries[sel, 3][:, None] + np.arange(n_bytes)
                out[sel, :n_fields] = whole[offs].view("<i8").reshape(-1, n_fields)
            if ((width != 32) & (width != 16)).any():
                raise ValueError(f"{self.tars[k]}: a .meta member is neither 16 nor 32 bytes; "
                                 "not a dataset written by tools/convert_dataset.py")
            old += rows[width == 16].tolist()
        if old:
            print(f"{self.dir}: records converted before image sizes were stored; reading "
                  f"{len(old)} image headers (re-convert to skip this)", file=sys.stderr)
            for i in old:
                w, h = Image.open(io.BytesIO(self[i][0])).size  # header only
                out[i, 2:] = h, w
        # Crop boxes are drawn from these sizes before decoding: a size that cannot be
        # an image's (a damaged meta member of a dataset without per-sample checksums)
        # would fail deep in a sampler; name it here.
        bad = np.flatnonzero((out[:, 2] < 1) | (out[:, 3] < 1) | (out[:, 2:] > 1 << 20).any(1))
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{self.where(i)}: its record says the image is "
                             f"{out[i, 3]}x{out[i, 2]} pixels; the record is damaged "
                             f"({len(bad)} such): re-convert the dataset")
        self._table = out
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state
