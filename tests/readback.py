"""Read converted outputs back with the stock readers only (FFCV Loader, DALI
fn.readers.webdataset), so the tests check the files, not our own loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def manifest(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def read_records(out: Path, batch_size: int = 64):
    """All samples of out/records, in order: (list of HWC uint8 arrays, labels, indices).
    The meta member's stored (height, width) must be each decoded image's size."""
    from nvidia.dali import fn, pipeline_def, types

    shards = manifest(out)["outputs"]["records"]["shards"]
    folder = Path(out) / "records"
    tars = [str(folder / s["tar"]) for s in shards]
    idxs = [str(folder / s["index"]) for s in shards]
    total = sum(s["count"] for s in shards)

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None)
    def pipe():
        img, meta = fn.readers.webdataset(
            paths=tars, index_paths=idxs, ext=["jpg;png", "meta"],
            dtypes=[types.UINT8, types.INT64], missing_component_behavior="error",
            random_shuffle=False, pad_last_batch=True, name="reader")
        return fn.decoders.image(img, device="cpu", output_type=types.RGB), meta

    p = pipe()
    p.build()
    images, metas = [], []
    while len(images) < total:
        img, meta = p.run()
        images += [np.array(img.at(k)) for k in range(len(img))]
        metas += [np.array(meta.at(k)) for k in range(len(meta))]
    images, metas = images[:total], np.stack(metas[:total])
    assert metas.shape[1] == 4 and [tuple(m) for m in metas[:, 2:].tolist()] == \
        [im.shape[:2] for im in images], "meta sizes differ from the decoded images"
    return images, metas[:, 0], metas[:, 1]


def read_beton(out: Path, batch_size: int = 100):
    """All samples of out/data.beton through the stock FFCV Loader, in order.
    SimpleRGBImageDecoder needs one image size for the whole file."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(Path(out) / "data.beton"), batch_size=batch_size, num_workers=1,
                    order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()],
                               "index": [IntDecoder()]})
    images, labels, indices = [], [], []
    for img, lab, idx in loader:
        images.append(np.array(img))
        labels.append(np.array(lab).reshape(-1))
        indices.append(np.array(idx).reshape(-1))
    return np.concatenate(images), np.concatenate(labels), np.concatenate(indices)


def beton_sizes(out: Path) -> list[tuple[int, int]]:
    """(height, width) of every image stored in the .beton, from its metadata."""
    from ffcv.reader import Reader

    r = Reader(str(Path(out) / "data.beton"))
    meta = r.metadata["f0"]
    return list(zip(meta["height"].tolist(), meta["width"].tolist()))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
