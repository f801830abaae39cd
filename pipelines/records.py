"""Random access to converted records without DALI: the WebDataset shards via
their DALI index files (offsets), for the torchvision baseline and for tests."""

from __future__ import annotations

import io
import json
import mmap
from pathlib import Path

import numpy as np
from PIL import Image


def open_rgb(data: bytes) -> Image.Image:
    """A record's encoded image as an RGB PIL image."""
    return Image.open(io.BytesIO(data)).convert("RGB")


class Records:
    """records[i] -> (encoded image bytes, label, index), i in dataset order."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        mpath = self.dir / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"{mpath}: missing; is {self.dir} a converted dataset?")
        self.manifest = json.loads(mpath.read_text())
        rec = self.manifest["outputs"]["records"]
        if not rec:
            raise FileNotFoundError(f"{self.dir}: converted without records (--no-records)")
        self.tars = [str(self.dir / "records" / s["tar"]) for s in rec["shards"]]
        self.idxs = [str(self.dir / "records" / s["index"]) for s in rec["shards"]]
        self.entries = []  # (shard, img_offset, img_size, meta_offset)
        for k, idx in enumerate(self.idxs):
            lines = Path(idx).read_text().splitlines()[1:]
            for line in lines:
                parts = line.split()
                comp = {parts[j]: (int(parts[j + 1]), int(parts[j + 2]))
                        for j in range(0, len(parts), 4)}
                img = comp.get("jpg") or comp.get("png")
                self.entries.append((k, img[0], img[1], comp["meta"][0]))
        self._maps: dict[int, mmap.mmap] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _map(self, k: int) -> mmap.mmap:
        if k not in self._maps:  # opened lazily: each DataLoader worker maps its own
            with open(self.tars[k], "rb") as f:
                self._maps[k] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[k]

    def __getitem__(self, i: int) -> tuple[bytes, int, int]:
        k, off, size, moff = self.entries[i]
        m = self._map(k)
        label, index = np.frombuffer(m[moff:moff + 16], dtype="<i8")
        return m[off:off + size], int(label), int(index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state
