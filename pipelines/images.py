"""Whole decoded images of a converted dataset, from whichever format it was
converted to: the records (records/) or, for a dataset converted with
--no-records, the .beton. For what needs every image un-augmented (feature
extraction for the probes, embeddings), not for training (the loaders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.integrity import read_manifest


class Images:
    """images[i] -> (RGB uint8 HWC array, label), i in dataset order."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        self.manifest = read_manifest(self.dir)
        outputs = self.manifest["outputs"]
        self._records = self._beton = None
        if outputs.get("records"):
            from pipelines.records import Records
            self._records = Records(self.dir)
            self._labels = self._records.table()[:, 0]
        elif outputs.get("beton"):
            self._open_beton()
        else:
            raise ValueError(f"{self.dir / 'manifest.json'}: lists neither records nor a "
                             ".beton; re-convert the dataset")

    def _open_beton(self) -> None:
        from ffcv.fields.rgb_image import IMAGE_MODES

        from pipelines.loader_ffcv import open_beton
        beton = open_beton(self.dir)
        reader, path = beton.reader, beton.path
        self._crcs, self._ptr, self._size = beton.crcs, beton.ptr, beton.size
        names = reader.field_names
        self._meta = reader.metadata[f"f{names.index('image')}"]
        self._labels = np.asarray(reader.metadata[f"f{names.index('label')}"], dtype=np.int64)
        self._jpg = IMAGE_MODES["jpg"]
        self._beton = np.memmap(path, dtype=np.uint8, mode="r")
        self._path = path

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from pipelines.records import open_rgb
        if self._records is not None:
            if self._records.damaged([i])[0]:
                raise ValueError(f"{self._records.where(i)}: damaged (checksum mismatch); "
                                 "re-convert the dataset or restore the file")
            data, label, _ = self._records[i]
            return np.asarray(open_rgb(data)), int(label)
        p, n = int(self._ptr[i]), int(self._size[i])
        data = self._beton[p:p + n]
        if self._crcs is not None:
            import zlib
            if zlib.crc32(data) != int(self._crcs[i]):
                raise ValueError(f"sample {i} ({self._path}, image at byte {p}): damaged "
                                 "(checksum mismatch); re-convert the dataset")
        m = self._meta[i]
        if m["mode"] == self._jpg:
            return np.asarray(open_rgb(data.tobytes())), int(self._labels[i])
        h, w = int(m["height"]), int(m["width"])
        return np.asarray(data[:h * w * 3]).reshape(h, w, 3).copy(), int(self._labels[i])
