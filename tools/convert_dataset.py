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

Unreadable files (corrupt, empty, not an image, not a regular file: a FIFO, a
device, a socket; images declaring more than 1 Gpx) are skipped, listed in the
manifest and on stderr; the exit status is 0 unless nothing valid was found or
--strict was given. The source is read twice (records, then the .beton); a
file that changes in between ends the conversion, named (both outputs must
hold the same pixels). A worker that fails or dies ends it too, within seconds,
naming its file (conversion/workers.py). Outputs are written under
temporary names and moved into place at the end: an interrupted or failed run
leaves nothing under a final name, and Ctrl-C prints one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from conversion import workers as cw
from conversion.beton_pass import write_beton
from conversion.image_decode import BadImage, encode, pixel_digest, pixels
from conversion.sources import FORMATS, SourceError, open_source
from conversion.staging import OutputError, StagedOutput
from pipelines import cli

TOOL_VERSION = "1.3"  # 1.1: record meta holds the image size too; 1.2: file integrity;
                      # 1.3: per-sample checksums (pipelines/checks.py)
OUTPUTS = ["data.beton", "data.beton.crc32", "records", "manifest.json"]
CHUNK = 32  # samples per task of the records pass

# Finite ranges of the numeric options, checked before any work (pipelines/cli.py).
RANGES = {
    "compress_probability": cli.Range(0, 1),  # a probability
    "quality": cli.Range(1, 100, integer=True),  # JPEG's quality scale
    "max_res": cli.Range(1, 65535, integer=True),  # JPEG's largest side
    # up to 10 million samples per tar: the largest useful shard is the dataset
    "shard_size": cli.Range(1, 10 ** 7, integer=True),
    # processes forked at once; more than a machine's cores gains nothing
    "workers": cli.Range(1, 1024, integer=True),
}

# Set in the parent before forking; workers inherit them (no pickling of arrays).
_SOURCE = None
_OPTS: dict = {}
_INFLIGHT: cw.InFlight | None = None


def _prepare(i: int):
    """Sample i -> (i, (h, w), problem, record bytes, pixel digest, fatal). Bad data is
    a problem (the file is skipped); anything else is fatal (ends the conversion)."""
    try:
        raw = _SOURCE.read(i)
        dec = pixels(raw, _OPTS["max_res"])
        h, w = dec.rgb.shape[:2]
        record = None
        if _OPTS["records"]:
            codec = _OPTS["codec"]
            if codec == "jpg" and dec.source_format == "JPEG" and not dec.changed:
                record = raw  # the original bytes: no second lossy encode
            else:
                record = encode(dec.rgb, codec, _OPTS["quality"])
        return i, (h, w), None, record, pixel_digest(dec.rgb), None
    except BadImage as e:
        return i, None, str(e), None, None, None
    except OSError as e:  # unreadable file (permissions, I/O, vanished)
        return i, None, f"cannot read: {e.strerror or e}", None, None, None
    except MemoryError:
        return i, None, "too large to decode in the memory available", None, None, None
    except Exception as e:  # noqa: BLE001 - a worker's failure: named, never a traceback
        return i, None, None, None, None, (f"{cw.name(_SOURCE.key(i))}: {type(e).__name__}: "
                                           f"{cli.shown(str(e), 200)}; nothing was written")


def _prepare_chunk(bounds: tuple[int, int]) -> list:
    out = []
    for i in range(*bounds):
        _INFLIGHT.set(i)
        out.append(_prepare(i))
    _INFLIGHT.set(-1)
    return out


def _overlap(src, out, inside: bool = True) -> str | None:
    """Why --out cannot be used with the source folder ``src``, or None: the same
    folder, one inside the other (an --out inside an ImageFolder becomes one of
    its classes on the next run; an --out holding the source is not ours to fill).
    ``inside``: check an --out inside ``src`` too (only for the data folder
    itself: SRC may hold cifar-10-batches-py next to the output)."""
    s, o = Path(src).resolve(), Path(out).resolve()
    if s == o:
        return "is the source folder itself"
    if inside and o.is_relative_to(s):
        return "is inside the source folder"
    if s.is_relative_to(o):
        return "holds the source folder"
    return None


def _refuse_overlap(src, out, inside: bool = True) -> None:
    why = _overlap(src, out, inside)
    if why:
        raise OutputError(f"--out {out} {why} {src}; choose an output folder outside the "
                          "source (nothing was written)")


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
    p.add_argument("--compress-probability", default=0.5,
                   type=cli.ranged(RANGES["compress_probability"], "--compress-probability"),
                   help="fraction stored as JPEG with --write-mode proportion, in "
                        f"{RANGES['compress_probability']}")
    p.add_argument("--max-res", default=None, type=cli.ranged(RANGES["max_res"], "--max-res"),
                   help="downscale so that the longer side is at most this many pixels, in "
                        f"{RANGES['max_res']}")
    p.add_argument("--quality", default=90, type=cli.ranged(RANGES["quality"], "--quality"),
                   help=f"JPEG quality for re-encoded images, in {RANGES['quality']}")
    p.add_argument("--record-codec", choices=["jpg", "png"], default="jpg",
                   help="codec for records that must be re-encoded (JPEG sources within "
                        "--max-res keep their original bytes)")
    p.add_argument("--shard-size", default=10000,
                   type=cli.ranged(RANGES["shard_size"], "--shard-size"),
                   help=f"samples per tar shard, in {RANGES['shard_size']}")
    p.add_argument("--no-beton", action="store_true", help="do not write data.beton")
    p.add_argument("--no-records", action="store_true", help="do not write records/")
    p.add_argument("--workers", default=min(os.cpu_count() or 1, 1024),
                   type=cli.ranged(RANGES["workers"], "--workers"),
                   help=f"parallel worker processes, in {RANGES['workers']}")
    p.add_argument("--strict", action="store_true",
                   help="fail (and write nothing) if any file is unreadable")
    p.add_argument("--overwrite", action="store_true",
                   help="replace this tool's outputs in a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_debug(p)
    args = p.parse_args(argv)
    if args.no_beton and args.no_records:
        p.error("--no-beton and --no-records together leave nothing to write")
    return args


def convert(args) -> dict:
    """Run the conversion; returns the manifest. Raises SourceError/OutputError/ValueError."""
    global _SOURCE, _OPTS, _INFLIGHT
    _refuse_overlap(args.src, args.out, inside=False)  # before any work; the data folder below
    if not args.no_beton and importlib.util.find_spec("ffcv") is None:
        raise OutputError("writing data.beton needs ffcv, which is not installed here; "
                          "install it (pip install -e .[ffcv]) or pass --no-beton")
    staged = StagedOutput(args.out, OUTPUTS, overwrite=args.overwrite, tool="convert_dataset")
    source = open_source(args.src, args.format, args.split)
    _refuse_overlap(source.root, args.out)  # e.g. SRC/cifar-10-batches-py, SRC/train
    _SOURCE = source
    _OPTS = {"max_res": args.max_res, "records": not args.no_records,
             "codec": args.record_codec, "quality": args.quality}
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    say(f"{source.format} {source.root} split={source.split}: {len(source)} candidate images")

    t0 = time.perf_counter()
    with staged as stage:
        from conversion.wds_writer import ShardWriter
        shards = None if args.no_records else ShardWriter(stage / "records", args.shard_size)
        valid, heights, widths, digests = [], [], [], []
        problems = list(getattr(source, "unreadable", []))
        for p in problems:
            tqdm.write(f"problem: {p['file']}: {p['reason']}", file=sys.stderr)
        _INFLIGHT = cw.InFlight(min(args.workers, 1024))
        tasks = [(s, min(s + CHUNK, len(source))) for s in range(0, len(source), CHUNK)]
        results = cw.ordered_map(_prepare_chunk, tasks, args.workers, _INFLIGHT, source.key)
        bar = tqdm(total=len(source), disable=args.quiet, desc="decode+records", unit="img")
        try:
            for chunk in results:
                bar.update(len(chunk))
                for i, hw, problem, record, digest, fatal in chunk:
                    if fatal is not None:
                        raise cw.WorkerFailed(fatal)
                    if problem is not None:
                        problems.append({"file": source.key(i), "reason": problem})
                        tqdm.write(f"skipped {cw.name(source.key(i))}: {problem}",
                                   file=sys.stderr)
                        continue
                    if shards is not None:
                        shards.write(len(valid), source.label(i), record,
                                     "jpg" if record[:2] == b"\xff\xd8" else "png", hw)
                    valid.append(i)
                    heights.append(hw[0])
                    widths.append(hw[1])
                    digests.append(digest)
        finally:
            results.close()  # on any early exit: its workers are stopped here, now
            bar.close()
        shard_list = shards.close() if shards is not None else []
        t1 = time.perf_counter()
        if not valid:
            raise SourceError(f"{source.root}: no readable images "
                              f"({len(problems)} files failed to decode)")
        if args.strict and problems:
            raise SourceError(f"{source.root}: {len(problems)} unreadable files or folders "
                              "and --strict was given; nothing written")
        beton_seconds = 0.0
        if not args.no_beton:
            largest = 3 * max(h * w for h, w in zip(heights, widths))
            beton_seconds = write_beton(stage / "data.beton", source, valid,
                                        np.frombuffer(b"".join(digests), np.uint8)
                                        .reshape(-1, 16), largest, args, stage)
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
