"""Image sources the converter reads: ImageFolder trees, CIFAR-10/100 python
pickles and STL-10 binaries, behind one small interface.

A source is a random-access list of samples: ``len(src)``, ``src.key(i)``
(a name for messages and the manifest), ``src.label(i)`` (-1 = unlabelled) and
``src.read(i)``, which returns either a file's bytes (to be decoded) or a
uint8 HWC array (already pixels). Sources are built in the parent process and
inherited by forked workers, so arrays stay shared (STL-10 is memory-mapped:
its unlabelled split is 2.7 GB).

Hostile sources: CIFAR pickles are read by an unpickler that admits only
containers and numpy arrays (a pickle can name any callable: plain
``pickle.load`` of a crafted batches.meta runs a shell command), and an image
file is opened without ever blocking and read only when it is a regular file
of a sane size (a FIFO named x.jpg would block forever, a link to /dev/zero
never ends).
"""

from __future__ import annotations

import errno
import os
import pickle
import stat
from pathlib import Path

import numpy as np

from conversion.image_decode import MAX_PIXELS, BadImage
from pipelines.cli import shown

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm"}
FORMATS = ("imagefolder", "cifar10", "cifar100", "stl10")


class SourceError(Exception):
    """The source as a whole is unusable; the message is one line for the user."""


class ImageFolder:
    """root/<class>/<image>; classes are the sorted sub-folder names (torchvision's
    convention). A folder with images and no sub-folders is read as unlabelled."""

    format = "imagefolder"

    def __init__(self, root: Path):
        self.root = root
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.ignored: list[str] = []
        # folders that could not be listed (permissions, I/O errors) or class folders
        # without one image: reported as problems, never dropped silently
        self.unreadable: list[dict] = []
        if subdirs:
            self.classes = [d.name for d in subdirs]
            for label, d in enumerate(subdirs):
                before = len(self.files)
                self._scan(d, label)
                if len(self.files) == before:
                    self.unreadable.append({"file": str(d.relative_to(root)) + "/",
                                            "reason": "class folder without a readable image"})
        else:
            self.classes = []
            self._scan(root, -1)

    def _scan(self, folder: Path, label: int) -> None:
        def failed(e: OSError) -> None:
            where = Path(e.filename) if e.filename else folder
            self.unreadable.append({"file": str(where.relative_to(self.root)) + "/",
                                    "reason": f"cannot list the folder: {e.strerror or e}"})

        found = []
        for dirpath, dirnames, filenames in os.walk(folder, onerror=failed):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
        for p in sorted(found):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                self.files.append(p)
                self.labels.append(label)
            else:
                self.ignored.append(str(p.relative_to(self.root)))

    def __len__(self) -> int:
        return len(self.files)

    def key(self, i: int) -> str:
        return str(self.files[i].relative_to(self.root))

    def label(self, i: int) -> int:
        return self.labels[i]

    def read(self, i: int) -> bytes:
        return read_regular_file(self.files[i])


# Larger than any image within the pixel limit can need (uncompressed RGBA at
# MAX_PIXELS); a bigger file is never read into memory.
MAX_FILE_BYTES = 4 * MAX_PIXELS
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file (after symlinks) of at most
    MAX_FILE_BYTES; BadImage otherwise. Never blocks: the file is opened with
    O_NONBLOCK and checked with fstat on the descriptor itself, so a file that
    was swapped for a FIFO after the scan is refused, not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket (or a FIFO's writer side): not a file
            raise BadImage("not a regular file (a socket)") from None
        raise
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a file")
            raise BadImage(f"not a regular file ({kind}); skipped without reading")
        if st.st_size > MAX_FILE_BYTES:
            raise BadImage(f"too large: {st.st_size} bytes, above the limit of "
                           f"{MAX_FILE_BYTES} bytes for one image file")
        # Read what fstat says plus one byte (read(n) allocates n bytes up front:
        # never the limit itself), then on, bounded, in case the file grows.
        parts, total, want = [], 0, st.st_size + 1
        while part := f.read(min(want, MAX_FILE_BYTES + 1 - total)):
            parts.append(part)
            total += len(part)
            if total > MAX_FILE_BYTES:
                raise BadImage(f"too large: more than {MAX_FILE_BYTES} bytes (it grew while "
                               "being read)")
            want = 1 << 20
    return b"".join(parts)


class ArraySource:
    """Pixels already decoded: (N, H, W, 3) uint8 plus labels."""

    def __init__(self, fmt: str, root: Path, images: np.ndarray, labels: np.ndarray,
                 classes: list[str], names: list[str]):
        self.format, self.root = fmt, root
        self.images, self.labels, self.classes, self.names = images, labels, classes, names
        self.ignored: list[str] = []

    def __len__(self) -> int:
        return len(self.images)

    def key(self, i: int) -> str:
        return self.names[i]

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def read(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[i])


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it (bytes written by Python 3:
    ``encode(str, "latin1")``), and only that: no other codec is reachable."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {shown(encoding)} is not how "
                                     "bytes are pickled")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The globals a CIFAR-10/100 python pickle names, whichever Python and numpy
    wrote it: numpy's array reconstruction (``numpy.core`` before numpy 2.0,
    ``numpy._core`` after; ``_frombuffer`` for protocol 5), ``scalar`` for a numpy
    number, and ``_codecs.encode`` for bytes in Python 3's protocol 2. Each makes
    only an array, a dtype, a number or bytes."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Admits builtin containers and numpy arrays only (the standard of
    ``torch.load(weights_only=True)``): a pickle naming any other global (os.system,
    builtins.exec, a class whose construction runs code) is refused before
    anything it names is imported or called."""

    _allowed = None

    def find_class(self, module: str, name: str):
        if _CifarUnpickler._allowed is None:
            _CifarUnpickler._allowed = _allowed_globals()
        found = _CifarUnpickler._allowed.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


class _Refused(pickle.UnpicklingError):
    pass


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise SourceError(f"{path}: missing")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise SourceError(f"{path}: refused: the pickle names {shown(str(e), 80)}, which no "
                          "CIFAR python file holds (a crafted pickle runs code when loaded); "
                          "nothing of it was run. Use the original CIFAR files") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same problem
        raise SourceError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: "
                          f"{shown(str(e), 120)})") from None
    if not isinstance(d, dict):
        raise SourceError(f"{path}: not a CIFAR python pickle (holds a {type(d).__name__}, "
                          "not a dict)")
    return d


def _cifar_rows(path: Path, d: dict, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if b"data" not in d or label_key not in d:
        raise SourceError(f"{path}: not a CIFAR batch (no {b'data'!r} / {label_key!r})")
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:
        raise SourceError(f"{path}: {b'data'!r} / {label_key!r} are not arrays of numbers "
                          f"({type(e).__name__}: {shown(str(e), 120)})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise SourceError(f"{path}: data has shape {data.shape} with {len(labels)} labels; "
                          "expected (N, 3072) with N labels")
    # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar(root: Path, split: str, hundred: bool) -> ArraySource:
    if split not in ("train", "test"):
        raise SourceError(f"{root}: CIFAR has splits train and test, not {split!r}")
    if hundred:
        files = [root / split]
        meta = _unpickle(root / "meta")
        classes, label_key = meta.get(b"fine_label_names"), b"fine_labels"
    else:
        files = ([root / f"data_batch_{k}" for k in range(1, 6)] if split == "train"
                 else [root / "test_batch"])
        meta = _unpickle(root / "batches.meta")
        classes, label_key = meta.get(b"label_names"), b"labels"
    if not isinstance(classes, (list, tuple)) or not classes:
        raise SourceError(f"{root}: meta file has no list of label names")
    images, labels, names = [], [], []
    for path in files:
        x, y = _cifar_rows(path, _unpickle(path), label_key)
        images.append(x)
        labels.append(y)
        names += [f"{path.name}[{i}]" for i in range(len(x))]
    classes = [c.decode(errors="replace") if isinstance(c, bytes) else str(c) for c in classes]
    y = np.concatenate(labels)
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise SourceError(f"{root}: labels outside 0..{len(classes) - 1}")
    return ArraySource("cifar100" if hundred else "cifar10", root,
                       np.concatenate(images), y, classes, names)


STL_SIDE = 96


def stl10(root: Path, split: str) -> ArraySource:
    if split not in ("train", "test", "unlabeled"):
        raise SourceError(f"{root}: STL-10 has splits train, test and unlabeled, not {split!r}")
    xpath = root / f"{split}_X.bin"
    if not xpath.is_file():
        raise SourceError(f"{xpath}: missing")
    per_image = 3 * STL_SIDE * STL_SIDE
    size = xpath.stat().st_size
    if size == 0 or size % per_image:
        raise SourceError(f"{xpath}: {size} bytes is not a whole number of "
                          f"{STL_SIDE}x{STL_SIDE}x3 images")
    n = size // per_image
    # Each image is stored channel by channel, each channel column-major.
    raw = np.memmap(xpath, dtype=np.uint8, mode="r", shape=(n, 3, STL_SIDE, STL_SIDE))
    images = raw.transpose(0, 3, 2, 1)
    names_file = root / "class_names.txt"
    classes = names_file.read_text().split() if names_file.is_file() else [str(k) for k in range(10)]
    if split == "unlabeled":
        labels = np.full(n, -1, dtype=np.int64)
    else:
        ypath = root / f"{split}_y.bin"
        if not ypath.is_file():
            raise SourceError(f"{ypath}: missing")
        labels = np.fromfile(ypath, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
        if len(labels) != n:
            raise SourceError(f"{ypath}: {len(labels)} labels for {n} images in {xpath.name}")
        if n and (labels.min() < 0 or labels.max() >= len(classes)):
            raise SourceError(f"{ypath}: labels outside 1..{len(classes)}")
    return ArraySource("stl10", root, images, labels, classes,
                       [f"{xpath.name}[{i}]" for i in range(n)])


def detect(root: Path) -> tuple[str, Path]:
    """Guess the format of ``root`` (or of the usual sub-folder inside it)."""
    for base in (root, root / "cifar-10-batches-py", root / "cifar-100-python",
                 root / "stl10_binary"):
        if (base / "batches.meta").is_file():
            return "cifar10", base
        if (base / "meta").is_file() and (base / "train").is_file():
            return "cifar100", base
        if any((base / f"{s}_X.bin").is_file() for s in ("train", "test", "unlabeled")):
            return "stl10", base
    return "imagefolder", root


def open_source(src: str | Path, fmt: str | None, split: str | None):
    """Open SRC as format ``fmt`` (or detect it) and select ``split``."""
    root = Path(src)
    if not root.exists():
        raise SourceError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    if fmt is not None and fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    detected, base = detect(root)
    fmt = fmt or detected
    if fmt != detected and fmt != "imagefolder":
        # Named explicitly: look for the usual sub-folder, else take root as given.
        base = next((b for b in (root / "cifar-10-batches-py", root / "cifar-100-python",
                                 root / "stl10_binary") if b.is_dir()), root)
    if fmt == "cifar10":
        source = cifar(base, split or "train", hundred=False)
    elif fmt == "cifar100":
        source = cifar(base, split or "train", hundred=True)
    elif fmt == "stl10":
        source = stl10(base, split or "train")
    else:
        folder = root / (split or "train")
        if folder.is_dir():
            source = ImageFolder(folder)
        elif split is None:
            source, split = ImageFolder(root), "all"
        else:
            raise SourceError(f"{folder}: split folder {split!r} not found")
    source.split = split or "train"
    if len(source) == 0:
        raise SourceError(f"{source.root}: no images found ({fmt})")
    return source
