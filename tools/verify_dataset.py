"""Check a converted dataset against its manifest, reading every byte.

    python -m tools.verify_dataset DIR

Checks the size and SHA-256 of every file the manifest lists (shards, their
.idx, data.beton, the checksum files); where a file differs, the CRC-32 of each
of its samples (pipelines/checks.py) names the damaged ones. Then, for a
dataset with both outputs, it decodes every sample from the records and from
the .beton and checks that they hold the same image and label (see
``compare_outputs``): the files can match the manifest and still disagree with
each other (a source file that changed between the converter's two passes, as
converters before issue 20 let happen).
Exit status 0 when everything matches, 1 when something does not (the list is
printed), 2 for bad arguments. Loaders check sizes and per-sample checksums as
they read; this reads everything at once, e.g. after copying a dataset to a
cluster's scratch disk.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines import checks, cli
from pipelines.integrity import read_manifest, verify


def damaged_samples(data_dir: Path, manifest: dict, progress: bool) -> list[str]:
    """One line per sample whose bytes fail their checksum, records and .beton."""
    problems = []
    if manifest["outputs"].get("records"):
        from pipelines.records import Records
        rec = Records(data_dir)
        if rec.crcs is not None:
            ids = np.arange(len(rec))
            for start in tqdm(range(0, len(rec), 1024), disable=not progress, unit="batch",
                              desc="records samples"):
                chunk = ids[start:start + 1024]
                problems += [f"{rec.where(i)}: checksum mismatch"
                             for i in chunk[rec.damaged(chunk)]]
    beton = data_dir / "data.beton"
    if manifest["outputs"].get("beton") and (data_dir / checks.BETON_CHECKS).is_file():
        want = checks.load(data_dir, manifest, checks.BETON_CHECKS,
                           (data_dir / checks.BETON_CHECKS).stat().st_size // 4)
        got, tables = checks.beton_crcs(beton)
        if tables != (manifest.get("tables_sha256") or {}).get("data.beton", tables):
            problems.append(f"{beton}: its sample tables differ from the manifest's")
        elif want is not None:
            problems += [f"sample {i} ({beton}): checksum mismatch"
                         for i in np.flatnonzero(got != want)]
    return problems


# Where one side went through a lossy JPEG encode and re-encoding the other side
# (as the converter did) does not reproduce its bytes (e.g. another libjpeg on
# this machine), the two decodes must agree within this luma PSNR. Measured
# here: the same pixels through one JPEG encode at quality >= 50 (or two, at any
# quality) stay at >= 22 dB even for pure noise, the worst case; two different
# images, even of one synthetic class on the same background, are <= 18 dB.
MIN_LUMA_PSNR = 20.0


def _luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    weights = np.array([0.299, 0.587, 0.114])
    mse = np.mean((a.astype(np.float64) @ weights - b.astype(np.float64) @ weights) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _why_different(record: bytes, beton: bytes, beton_jpeg: bool, hw: tuple[int, int],
                   quality: int) -> str | None:
    """Why sample's record and .beton image are not the same image, or None.

    Exact where it can be: pixels equal (both lossless: a raw .beton and a PNG
    record, or the source's own JPEG bytes), or the lossy side's bytes are what
    the converter's encoder makes from the other side's pixels (records: PIL at
    ``quality``, 4:4:4; .beton: FFCV's OpenCV encoder). Otherwise within
    MIN_LUMA_PSNR where a side is lossy; never for two lossless sides."""
    from PIL import Image

    from conversion.image_decode import encode
    record_jpeg = record[:2] == b"\xff\xd8"
    a = np.asarray(Image.open(io.BytesIO(record)).convert("RGB"))
    if beton_jpeg:
        b = np.asarray(Image.open(io.BytesIO(beton)).convert("RGB"))
    else:
        h, w = hw
        b = np.frombuffer(beton, np.uint8, count=h * w * 3).reshape(h, w, 3)
    if a.shape != b.shape:
        return f"sizes differ ({a.shape[0]}x{a.shape[1]} and {b.shape[0]}x{b.shape[1]})"
    if np.array_equal(a, b):
        return None
    if not record_jpeg and not beton_jpeg:
        return "pixels differ (both are lossless: they must be equal)"
    if record_jpeg and not beton_jpeg and encode(b, "jpg", quality) == record:
        return None  # the record is the .beton's pixels, encoded as the converter does
    if beton_jpeg:
        from ffcv.fields.rgb_image import encode_jpeg
        if encode_jpeg(a, quality).tobytes() == beton:
            return None  # the .beton's JPEG is the record's pixels, encoded as FFCV does
    psnr = _luma_psnr(a, b)
    if psnr >= MIN_LUMA_PSNR:
        return None
    return (f"pixels differ: luma PSNR {psnr:.1f} dB, below the {MIN_LUMA_PSNR:.0f} dB that "
            "JPEG compression alone explains")


def compare_outputs(data_dir: Path, manifest: dict, progress: bool) -> list[str]:
    """One line per sample whose records and .beton images (or labels) differ."""
    from ffcv.fields.rgb_image import IMAGE_MODES

    from pipelines.loader_ffcv import open_beton
    from pipelines.records import Records

    rec = Records(data_dir)
    beton = open_beton(data_dir)
    names = beton.reader.field_names
    meta = beton.reader.metadata[f"f{names.index('image')}"]
    labels = np.asarray(beton.reader.metadata[f"f{names.index('label')}"], dtype=np.int64)
    index = np.asarray(beton.reader.metadata[f"f{names.index('index')}"], dtype=np.int64)
    if len(rec) != len(labels):
        return [f"{data_dir}: the records hold {len(rec)} samples, data.beton {len(labels)}"]
    quality = int(manifest.get("options", {}).get("quality", 90))
    data = np.memmap(beton.path, dtype=np.uint8, mode="r")
    problems = []
    for i in tqdm(range(len(rec)), disable=not progress, unit="img",
                  desc="records vs data.beton"):
        image, label, rec_index = rec[i]
        where = f"sample {i} ({rec.where(i).split('(', 1)[1]} and {beton.path})"
        if label != labels[i] or rec_index != i or index[i] != i:
            problems.append(f"{where}: labels or indices differ (records {label}/{rec_index}, "
                            f".beton {labels[i]}/{index[i]})")
            continue
        p, n = int(beton.ptr[i]), int(beton.size[i])
        why = _why_different(bytes(image), data[p:p + n].tobytes(),
                             int(meta[i]["mode"]) == IMAGE_MODES["jpg"],
                             (int(meta[i]["height"]), int(meta[i]["width"])), quality)
        if why:
            problems.append(f"{where}: {why}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="verify_dataset", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help="a converted dataset folder (tools/convert_dataset.py output)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug(p)
    a = p.parse_args(argv)
    data_dir = Path(a.data)
    manifest = read_manifest(data_dir)
    if not manifest.get("integrity"):
        print(f"{data_dir}: converted by tool version {manifest.get('tool_version', '?')}, "
              "before the manifest recorded checksums: nothing to verify; re-convert",
              file=sys.stderr)
        return 1
    problems = verify(data_dir, manifest)
    if problems:  # a file differs: name the samples in it that are damaged
        try:
            problems += damaged_samples(data_dir, manifest, not a.quiet)
        except ValueError as e:  # e.g. a truncated shard: no sample can be located
            problems.append(f"per-sample checks not possible: {e}")
    both = bool(manifest["outputs"].get("records") and manifest["outputs"].get("beton"))
    compared = False
    if both and not problems:  # the files are the converter's: do they agree?
        if importlib.util.find_spec("ffcv") is None:
            print(f"{data_dir}: records and data.beton not compared: reading the .beton "
                  "needs ffcv, not installed here", file=sys.stderr)
        else:
            problems += compare_outputs(data_dir, manifest, not a.quiet)
            compared = True
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    n = len(manifest["integrity"])
    print(f"{data_dir}: {n} files" + (
        f": {len(problems)} problems" if problems else
        " and every sample match the manifest"
        + (", and the records and data.beton hold the same images" if compared else "")))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "verify_dataset"))
