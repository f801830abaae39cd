"""Decode any image file the converter meets into 8-bit RGB, or say why not.

One function, ``load_rgb``, is the only place where source pixels are made;
both outputs (the .beton and the WebDataset records) are written from it, so
they agree with each other and with what the tests decode.

Conversions, and why:
- CMYK / YCCK JPEGs, palette, grayscale, 1-bit: ``PIL.Image.convert("RGB")``.
- 16-bit grayscale (PIL mode I;16 / I): scaled to 8 bits by v >> 8 (v / 257
  rounded down); PIL's own convert would clip everything above 255 to white.
- An alpha channel is composited over white (the usual "page" background);
  dropping alpha instead would show whatever colour hides under transparency.
- EXIF orientation is applied, so every decoder downstream (DALI's, FFCV's)
  sees the same upright pixels whether or not it honours EXIF.
- ``max_res``: the longer side is reduced to ``max_res`` with a Lanczos
  (antialiased) resize; JPEGs are first decoded at a reduced DCT scale
  (``Image.draft``), which makes a 9000x9000 JPEG cheap.
- Size limit: an image whose header declares more than ``MAX_PIXELS`` is
  refused before any pixel is decoded (a 1.4 MB PNG can declare 38000x38000,
  4.3 GB of pixels), and a MemoryError while decoding is a bad image too.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 9000x9000 image is 81 Mpx, below PIL's default bomb limit; allow up to
# 1 Gpx explicitly and report anything larger as a problem, not a crash. PIL
# itself only raises DecompressionBombError above *twice* MAX_IMAGE_PIXELS (it
# merely warns in between), so load_rgb checks the declared size itself.
MAX_PIXELS = 1 << 30
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class BadImage(Exception):
    """The file cannot be turned into an image; str(e) is the reason."""


@dataclass
class Decoded:
    rgb: np.ndarray  # (H, W, 3) uint8
    changed: bool  # pixels differ from a plain decode of the original bytes
    source_format: str  # PIL's format name (JPEG, PNG, ...)
    source_mode: str  # PIL's mode before conversion


def load_rgb(data: bytes, max_res: int | None = None) -> Decoded:
    """Decode ``data`` (a whole file's bytes) to uint8 RGB HWC."""
    if len(data) == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        return _load_rgb(data, max_res)
    except MemoryError:  # a size within the limit that still does not fit here
        raise BadImage("too large to decode in the memory available") from None


def _load_rgb(data: bytes, max_res: int | None) -> Decoded:
    try:
        with warnings.catch_warnings():  # PIL warns between 1x and 2x its limit; we refuse
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        fmt, mode = img.format or "?", img.mode
        w, h = img.size
        if w * h > MAX_PIXELS:  # before any pixel is decoded: see MAX_PIXELS
            raise BadImage(f"too large: declares {w}x{h} = {w * h / 1e6:.0f} Mpx, above the "
                           f"limit of {MAX_PIXELS / 1e6:.0f} Mpx")
        drafted = False
        if max_res and fmt == "JPEG" and max(img.size) > 2 * max_res:
            # Decode at 1/2, 1/4 or 1/8 scale, never below max_res: the image
            # is resized below anyway, so the pixels change either way.
            img.draft("RGB", _fit(img.size, max_res))
            drafted = True
        img.load()
        orientation = img.getexif().get(0x0112, 1)
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large: {e}") from None
    except OSError as e:  # truncated or corrupt data
        raise BadImage(f"corrupt or truncated: {e}") from None
    except (SyntaxError, ValueError, EOFError, IndexError, struct.error, ZeroDivisionError) as e:
        # what PIL's plugins raise on malformed headers and data
        raise BadImage(f"corrupt: {type(e).__name__}: {e}") from None

    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    try:
        rgb, converted = _to_rgb(img)
    except (OSError, ValueError) as e:
        raise BadImage(f"cannot convert mode {mode} to RGB: {e}") from None
    changed = drafted or converted or orientation != 1
    if max_res and max(rgb.shape[:2]) > max_res:
        rgb, changed = shrink(rgb, max_res), True
    return Decoded(np.ascontiguousarray(rgb, dtype=np.uint8), changed, fmt, mode)


def pixels(raw, max_res: int | None = None) -> Decoded:
    """A source item (a file's bytes, or an HWC uint8 array) as RGB pixels: what
    both outputs are written from."""
    if isinstance(raw, np.ndarray):
        rgb = shrink(raw, max_res) if max_res else raw
        return Decoded(np.ascontiguousarray(rgb), True, "array", "RGB")
    return load_rgb(raw, max_res)


def pixel_digest(rgb: np.ndarray) -> bytes:
    """16-byte BLAKE2b of decoded pixels and their shape: the converter's two
    passes compare it to prove both outputs got the same pixels."""
    h = hashlib.blake2b(np.asarray(rgb.shape, dtype="<i8").tobytes(), digest_size=16)
    h.update(np.ascontiguousarray(rgb).data)
    return h.digest()


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, bool]:
    """Return (uint8 RGB array, whether anything but a plain RGB decode happened)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img), False
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.int64)
        a = np.clip(a, 0, 65535) >> 8
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2), True
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).round()
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2), True
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")), True
    return np.asarray(img.convert("RGB")), True


def shrink(rgb: np.ndarray, max_res: int) -> np.ndarray:
    """Lanczos-resize so that the longer side is ``max_res`` (no-op when already within)."""
    if max(rgb.shape[:2]) <= max_res:
        return rgb
    w, h = _fit((rgb.shape[1], rgb.shape[0]), max_res)
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS))


def _fit(size: tuple[int, int], max_res: int) -> tuple[int, int]:
    """(w, h) scaled so that the longer side is max_res, aspect kept."""
    w, h = size
    s = max_res / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def encode(rgb: np.ndarray, codec: str, quality: int) -> bytes:
    """Encode RGB uint8 as 'jpg' (4:4:4 chroma, quality) or lossless 'png'."""
    buf = io.BytesIO()
    img = Image.fromarray(rgb)
    if codec == "jpg":
        # subsampling=0 (4:4:4): CIFAR-size images lose visibly with 4:2:0.
        img.save(buf, format="JPEG", quality=quality, subsampling=0)
    elif codec == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    return buf.getvalue()
