"""Convert an image dataset into an FFCV .beton and DALI-readable WebDataset records.

    python -m tools.convert_dataset SRC --out DIR [--split train] [options]

SRC is an ImageFolder tree (SRC/<split>/<class>/<image> or SRC/<class>/<image>),
a CIFAR-10/100 python directory or an STL-10 binary directory; the format is
detected, or named with --format. DIR receives:

    data.beton      FFCV: fields image (RGBImageField), label (int), index (int)
    data.beton.crc32  per-sample checksums of the .beton (pipelines/checks.py)
    records/        WebDataset shards shard-NNNNNN.tar + DALI index .idx each,
                    samples.crc32 (per-sample checksums)
    manifest.json   source, format, split, counts, classes, options, problems,
                    size and SHA-256 of every file above

Unreadable files are skipped, listed in the manifest and on stderr; the exit
status is 0 unless nothing valid was found or --strict was given. Outputs are
written under temporary names and moved into place at the end: an interrupted
run leaves nothing under a final name.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines import cli
from tools.image_decode import BadImage, Decoded, encode, load_rgb, shrink
from tools.sources import FORMATS, SourceError, open_source
from tools.staging import OutputError, StagedOutput

TOOL_VERSION = "1.3"  # 1.1: record meta holds the image size too; 1.2: file integrity;
                      # 1.3: per-sample checksums (pipelines/checks.py)
OUTPUTS = ["data.beton", "data.beton.crc32", "records", "manifest.json"]

# Set in the parent before forking; workers inherit it (no pickling of arrays).
_SOURCE = None
_OPTS: dict = {}


def _pixels(raw, max_res: int | None) -> Decoded:
    """Source item (file bytes or HWC uint8 array) -> RGB pixels."""
    if isinstance(raw, np.ndarray):
        rgb = shrink(raw, max_res) if max_res else raw
        return Decoded(np.ascontiguousarray(rgb), True, "array", "RGB")
    return load_rgb(raw, max_res)


def _prepare(i: int):
    """Worker: validate sample i and produce its record bytes. Never raises for bad data."""
    try:
        raw = _SOURCE.read(i)
        dec = _pixels(raw, _OPTS["max_res"])
    except BadImage as e:
        return i, None, str(e), None
    except OSError as e:  # unreadable file (permissions, I/O)
        return i, None, f"cannot read: {e}", None
    h, w = dec.rgb.shape[:2]
    record = None
    if _OPTS["records"]:
        codec = _OPTS["codec"]
        if codec == "jpg" and dec.source_format == "JPEG" and not dec.changed:
            record = raw  # the original bytes: no second lossy encode
        else:
            record = encode(dec.rgb, codec, _OPTS["quality"])
    return i, (h, w), None, record


class _BetonDataset:
    """What FFCV's DatasetWriter reads: (image, label, index) for each valid sample."""

    def __init__(self, source, valid: list[int], max_res: int | None):
        self.source, self.valid, self.max_res = source, valid, max_res

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, j: int):
        i = self.valid[j]
        return _pixels(self.source.read(i), self.max_res).rgb, self.source.label(i), j


def write_beton(path: Path, source, valid: list[int], args) -> float:
    """Write the .beton; returns the seconds spent writing (FFCV's import excluded)."""
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if args.quiet:  # FFCV draws its own bar with no switch to turn it off
        ffcv.writer.tqdm = lambda *a, **k: tqdm(*a, **{**k, "disable": True})

    image = RGBImageField(write_mode=args.write_mode, max_resolution=args.max_res,
                          jpeg_quality=args.quality,
                          compress_probability=args.compress_probability)
    writer = DatasetWriter(str(path), {"image": image, "label": IntField(), "index": IntField()},
                           num_workers=args.workers)
    # FFCV's 'proportion' mode draws with np.random in the workers: seed for repeatability.
    np.random.seed(0)
    t0 = time.perf_counter()
    writer.from_indexed_dataset(_BetonDataset(source, valid, args.max_res), chunksize=256)
    return time.perf_counter() - t0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="convert_dataset",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m tools.convert_dataset ../shared/cifar10 --split test "
               "--out data/cifar10-test --write-mode raw",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", help="source directory")
    p.add_argument("--out", required=True, help="output directory (created; must be empty "
                   "unless --overwrite)")
    # Not argparse `choices`: a wrong name gets one clear line from open_source.
    p.add_argument("--format", default=None,
                   help=f"source format, one of {', '.join(FORMATS)}; detected when omitted")
    p.add_argument("--split", default=None,
                   help="split to convert: train/test (CIFAR, ImageFolder sub-folder), "
                        "train/test/unlabeled (STL-10); default train, or the whole "
                        "folder for an ImageFolder without split sub-folders")
    p.add_argument("--write-mode", choices=["jpg", "raw", "proportion"], default="jpg",
                   help="how the .beton stores images (raw: exact pixels, larger)")
    p.add_argument("--compress-probability", type=float, default=0.5,
                   help="fraction stored as JPEG with --write-mode proportion")
    p.add_argument("--max-res", type=int, default=None,
                   help="downscale so that the longer side is at most this many pixels")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality for re-encoded images")
    p.add_argument("--record-codec", choices=["jpg", "png"], default="jpg",
                   help="codec for records that must be re-encoded (JPEG sources within "
                        "--max-res keep their original bytes)")
    p.add_argument("--shard-size", type=int, default=10000, help="samples per tar shard")
    p.add_argument("--no-beton", action="store_true", help="do not write data.beton")
    p.add_argument("--no-records", action="store_true", help="do not write records/")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="parallel worker processes")
    p.add_argument("--strict", action="store_true",
                   help="fail (and write nothing) if any file is unreadable")
    p.add_argument("--overwrite", action="store_true",
                   help="replace this tool's outputs in a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug(p)
    args = p.parse_args(argv)
    if args.no_beton and args.no_records:
        p.error("--no-beton and --no-records together leave nothing to write")
    if not 1 <= args.quality <= 100:
        p.error("--quality must be in 1..100")
    if args.max_res is not None and args.max_res < 1:
        p.error("--max-res must be positive")
    if args.shard_size < 1 or args.workers < 1:
        p.error("--shard-size and --workers must be positive")
    return args


def convert(args) -> dict:
    """Run the conversion; returns the manifest. Raises SourceError/OutputError/ValueError."""
    global _SOURCE, _OPTS
    staged = StagedOutput(args.out, OUTPUTS, overwrite=args.overwrite)
    source = open_source(args.src, args.format, args.split)
    _SOURCE = source
    _OPTS = {"max_res": args.max_res, "records": not args.no_records,
             "codec": args.record_codec, "quality": args.quality}
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    say(f"{source.format} {source.root} split={source.split}: {len(source)} candidate images")

    t0 = time.perf_counter()
    with staged as stage:
        from tools.wds_writer import ShardWriter
        shards = None if args.no_records else ShardWriter(stage / "records", args.shard_size)
        valid, heights, widths = [], [], []
        problems = list(getattr(source, "unreadable", []))
        for p in problems:
            tqdm.write(f"problem: {p['file']}: {p['reason']}", file=sys.stderr)
        ctx = mp.get_context("fork")
        with ctx.Pool(args.workers) as pool:
            results = pool.imap(_prepare, range(len(source)), chunksize=64)
            for i, hw, problem, record in tqdm(results, total=len(source), disable=args.quiet,
                                                desc="decode+records", unit="img"):
                if problem is not None:
                    problems.append({"file": source.key(i), "reason": problem})
                    tqdm.write(f"skipped {source.key(i)}: {problem}", file=sys.stderr)
                    continue
                if shards is not None:
                    shards.write(len(valid), source.label(i), record,
                                 "jpg" if record[:2] == b"\xff\xd8" else "png", hw)
                valid.append(i)
                heights.append(hw[0])
                widths.append(hw[1])
        shard_list = shards.close() if shards is not None else []
        t1 = time.perf_counter()
        if not valid:
            raise SourceError(f"{source.root}: no readable images "
                              f"({len(problems)} files failed to decode)")
        if args.strict and problems:
            raise SourceError(f"{source.root}: {len(problems)} unreadable files or folders "
                              "and --strict was given; nothing written")
        beton_seconds = 0.0 if args.no_beton else write_beton(stage / "data.beton", source,
                                                              valid, args)
        tables = {}
        if not args.no_beton:  # read back: the bytes FFCV's reader will hand the decoder
            from pipelines.checks import BETON_CHECKS, beton_crcs
            crcs, tables["data.beton"] = beton_crcs(stage / "data.beton")
            (stage / BETON_CHECKS).write_bytes(crcs.tobytes())

        labels = np.array([source.label(i) for i in valid])
        from pipelines.checks import BETON_CHECKS, RECORDS_CHECKS
        from pipelines.integrity import describe
        written = [f"records/{s[k]}" for s in shard_list for k in ("tar", "index")]
        written += [] if args.no_records else [RECORDS_CHECKS]
        written += [] if args.no_beton else ["data.beton", BETON_CHECKS]
        manifest = {
            "tool": "convert_dataset", "tool_version": TOOL_VERSION,
            "source": str(Path(args.src).resolve()), "format": source.format,
            "split": source.split,
            "counts": {"candidates": len(source), "written": len(valid),
                       # files; a folder problem (a name ending in /) is no candidate
                       "skipped": sum(not p["file"].endswith("/") for p in problems),
                       "folder_problems": sum(p["file"].endswith("/") for p in problems),
                       "ignored_non_images": len(source.ignored),
                       "per_class": ({c: int((labels == k).sum())
                                      for k, c in enumerate(source.classes)}
                                     if source.classes else {}),
                       "unlabelled": int((labels < 0).sum())},
            "classes": source.classes,
            "image_size": {"min_hw": [min(heights), min(widths)],
                           "max_hw": [max(heights), max(widths)]},
            "options": {k: getattr(args, k) for k in
                        ("write_mode", "compress_probability", "max_res", "quality",
                         "record_codec", "shard_size", "workers", "strict")},
            "outputs": {"beton": None if args.no_beton else "data.beton",
                        "records": None if args.no_records else
                        {"folder": "records", "shards": shard_list,
                         "meta": ["label", "index", "height", "width"]}},
            "integrity": {name: describe(stage / name) for name in written},
            "tables_sha256": tables,  # the .beton's metadata + allocation tables
            "problems": problems,
            "ignored": source.ignored[:1000],
            "seconds": {"decode_and_records": round(t1 - t0, 3), "beton": round(beton_seconds, 3)},
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        staged.commit(last="manifest.json")
    return manifest


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        m = convert(args)
    except (SourceError, OutputError) as e:
        print(f"convert_dataset: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, file too large, permissions: nothing was committed
        print(f"convert_dataset: error: cannot write under {args.out}: "
              f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''} (disk full?); "
              "nothing was written and earlier outputs there are kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert_dataset: interrupted; nothing was written", file=sys.stderr)
        return 130
    c, s = m["counts"], m["seconds"]
    what = [x for x, on in (("data.beton", m["outputs"]["beton"]),
                            (f"records/ ({len(m['outputs']['records']['shards'])} shards)"
                             if m["outputs"]["records"] else "", m["outputs"]["records"])) if on]
    folders = (f"; {c['folder_problems']} class folders without a readable image"
               if c.get("folder_problems") else "")
    print(f"wrote {c['written']} images ({c['skipped']} skipped{folders}) to {args.out}: "
          f"{', '.join(what)}, manifest.json  "
          f"[{c['written'] / max(s['decode_and_records'] + s['beton'], 1e-9):.0f} img/s]")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "convert_dataset"))
