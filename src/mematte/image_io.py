"""Robust image reading and atomic PNG writing for practitioners' files.

Files from cameras, phones and editing tools come in many shapes: EXIF-rotated JPEGs, 16-bit
PNG/TIFF, RGBA, palette, greyscale, CMYK, half-copied downloads. Everything here returns
plain uint8 numpy arrays in the orientation a viewer shows, or raises one
:class:`ImageReadError` that names the file and says what is wrong with it.

Conventions: images are ``(H, W, 3)`` uint8 RGB, grey maps (trimaps, masks) ``(H, W)``
uint8 0..255. 16-bit data is scaled to 8 bits (``round(v / 257)``, so 65535 → 255), never
clipped. Decoding is forced (``img.load()``) so a truncated file fails here, not later.
Truncation is only detected while ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is False (PIL's
default); some libraries flip that process-wide flag.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mematte.atomic import atomic_path

log = logging.getLogger("mematte")

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "is_image_file",
    "list_images",
    "read_gray",
    "read_image",
    "read_size",
    "to_uint8",
    "write_png",
]

# Lower-case suffixes read as images (folder listings and trimap/mask matching).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

# PIL modes that carry 16 (or 32) bits per pixel in one channel.
_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(ValueError):
    """A file could not be read as an image (missing, empty, truncated, not an image)."""


# --------------------------------------------------------------------------- listing
def is_image_file(path: Path) -> bool:
    """True for a visible file with an image suffix (hidden files such as macOS ``._x.png``
    AppleDouble companions are not images even though their suffix says so)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(path: str | Path) -> list[Path]:
    """One image file, or the image files of a folder (not recursive), sorted by name.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a folder without images, or a file whose suffix is not an image suffix.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{path} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return [path]
    files = sorted(p for p in path.iterdir() if is_image_file(p))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
    return files


# --------------------------------------------------------------------------- reading
def _owned(array: np.ndarray) -> np.ndarray:
    """A contiguous, writable array: views of PIL buffers are read-only, which torch warns about."""
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _existing_file(path: str | Path) -> Path:
    """``path`` as a Path, or :class:`ImageReadError` when it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes); re-export or re-copy it")
    return path


def read_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image as :func:`read_image` returns it, from the header only.

    Nothing is decoded (fast checks of whole dataset roots); EXIF orientations that rotate by
    90° swap the sides, as ``read_image`` does.

    Raises:
        ImageReadError: missing, empty (0 bytes) or unidentifiable file.
    """
    path = _existing_file(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not an image PIL can read ({err})") from None
    return (width, height) if orientation in _TRANSPOSED_ORIENTATIONS else (height, width)


def _open_decoded(path: str | Path) -> Image.Image:
    """Open, fully decode and EXIF-orient an image, or raise :class:`ImageReadError`."""
    path = _existing_file(path)
    try:
        # the context closes the file also for multi-frame formats (TIFF, animated WebP),
        # which keep it open after load(); the transposed copy outlives it
        with Image.open(path) as img:
            img.load()  # Image.open only reads the header: decode now so truncation surfaces here
            return _exif_upright(img, path)
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{path}: not an image PIL can read (unknown or unsupported format)"
        ) from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(
            f"{path}: {err} If you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports corrupt data as any of these
        raise ImageReadError(f"{path}: truncated or corrupt image: {err}") from None


def _exif_upright(img: Image.Image, path: Path) -> Image.Image:
    """A copy of a decoded image turned as its EXIF orientation says (as viewers show it)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:  # malformed EXIF: the pixels are still fine
        log.warning("%s: cannot apply EXIF orientation (%s); using the stored orientation", path, err)
        return img.copy()


def _wide_gray_to_uint8(array: np.ndarray) -> np.ndarray:
    """16/32-bit integer grey → uint8 by ``round(v / 257)`` (0..65535 → 0..255, clipped)."""
    scaled = np.rint(array.astype(np.float64) / 257.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _float_gray_to_uint8(array: np.ndarray) -> np.ndarray:
    """Float grey (PIL mode ``F``) → uint8: [0, 1] data is scaled by 255, else taken as 0..255."""
    array = np.nan_to_num(array.astype(np.float64))
    if array.size and array.min() >= 0.0 and array.max() <= 1.0:
        array = array * 255.0
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _gray_plane(img: Image.Image) -> np.ndarray | None:
    """(H, W) uint8 for single-channel modes (8-bit, 16-bit, 32-bit int, float, 1-bit)."""
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in _WIDE_GRAY_MODES:
        return _wide_gray_to_uint8(np.asarray(img))
    if img.mode == "F":
        return _float_gray_to_uint8(np.asarray(img))
    if img.mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    return None


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """Any PIL mode → (H, W, 3) uint8 RGB; alpha channels are dropped (not composited)."""
    gray = _gray_plane(img)
    if gray is not None:
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P":
        # palette images may carry transparency; going through RGBA keeps PIL from warning
        img = img.convert("RGBA")
    if img.mode in ("LA", "La"):
        return np.repeat(np.asarray(img.getchannel(0), dtype=np.uint8)[..., None], 3, axis=2)
    if img.mode != "RGB":
        try:
            # RGBA/RGBa/RGBX drop the 4th channel; CMYK (Adobe-inverted JPEGs are undone by
            # the decoder) and YCbCr use PIL's conversions
            img = img.convert("RGB")
        except (ValueError, OSError) as err:
            raise ImageReadError(f"{path}: cannot convert PIL mode {img.mode} to RGB: {err}") from None
    return np.asarray(img, dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as upright 8-bit RGB.

    EXIF orientation is applied; 16-bit data is scaled to 8 bits; RGBA/LA drop alpha;
    greyscale, palette, CMYK and YCbCr become RGB.

    Args:
        path: the image file.

    Returns:
        (H, W, 3) uint8 RGB, H × W as a viewer shows it.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt or unsupported file.
    """
    path = Path(path)
    img = _open_decoded(path)
    rgb = _to_rgb(img, path)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageReadError(f"{path}: decoded to shape {rgb.shape}, expected (H, W, 3)")
    return _owned(rgb)


def read_gray(path: str | Path, alpha_if_present: bool = False) -> np.ndarray:
    """Read a trimap or mask as upright 8-bit grey.

    Multi-channel files are converted with PIL's luma (``L``), which returns grey values
    unchanged when the channels are equal (the usual RGB-saved trimap). With
    ``alpha_if_present``, a file with a non-opaque alpha channel (an RGBA cutout from a
    background remover) yields that alpha instead.

    Args:
        path: the trimap / mask file.
        alpha_if_present: use a varying alpha channel as the grey map.

    Returns:
        (H, W) uint8.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt or unsupported file.
    """
    return _owned(_gray_of(_open_decoded(path), Path(path), alpha_if_present))


def _gray_of(img: Image.Image, path: Path, alpha_if_present: bool) -> np.ndarray:
    """(H, W) uint8 grey of a decoded image (see :func:`read_gray`)."""
    gray = _gray_plane(img)
    if gray is not None:
        return gray
    if img.mode == "P":
        img = img.convert("RGBA")
    if alpha_if_present and img.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.uint8)
        if alpha.size and alpha.min() < 255:
            return alpha
    if img.mode == "LA":
        return np.asarray(img.getchannel("L"), dtype=np.uint8)
    try:
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8)
    except (ValueError, OSError) as err:
        raise ImageReadError(f"{path}: cannot convert PIL mode {img.mode} to grey: {err}") from None


# --------------------------------------------------------------------------- writing
def to_uint8(array: np.ndarray, bits: int = 8) -> np.ndarray:
    """Scale an array to ``bits``-bit integers: the one rule for what is saved and what is scored.

    Float data is taken as [0, 1] (clipped) and rounded to nearest with halves up, MATLAB's
    ``im2uint8`` rounding (a trimap value 0.5 becomes 128), in the input's precision (float64
    stays float64; anything else works in float32), so a map scored by :mod:`mematte.metrics`
    equals the PNG written from it. uint8 input is widened by ×257 for 16 bits; uint16 input is
    kept at 16 bits and narrowed by ``round(v / 257)`` at 8 bits.

    Returns:
        uint8 (bits=8) or uint16 (bits=16) array of the same shape.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits={bits}: PNG output supports 8 or 16")
    array = np.asarray(array)
    top = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    if array.dtype.kind == "f":
        # one working copy, scaled in place (a 6000×5000 RGBA cutout is 480 MB of it in float32)
        work = np.float64 if array.dtype == np.float64 else np.float32
        scaled = np.nan_to_num(array.astype(work, copy=True), copy=False)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        scaled *= top
        scaled += 0.5
        return np.floor(scaled, out=scaled).astype(dtype)
    if array.dtype == np.uint8:
        return array if bits == 8 else array.astype(np.uint16) * 257
    if array.dtype == np.uint16:
        return array if bits == 16 else _wide_gray_to_uint8(array)
    raise TypeError(f"cannot save dtype {array.dtype}: pass float in [0, 1], uint8 or uint16")


def write_png(path: str | Path, array: np.ndarray, bits: int = 8) -> Path:
    """Write a PNG atomically: into a temp file in the same folder, then ``os.replace``.

    A crash or an error never leaves a half-written file under ``path`` (nor the temp file).

    Args:
        path: destination (parent folders are created).
        array: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; float in [0, 1], uint8 or uint16.
        bits: 8, or 16 (single-channel only: PIL writes 16-bit PNGs as grey ``I;16``).

    Returns:
        The written path.
    """
    path = Path(path)
    data = to_uint8(array, bits)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if bits == 16 and data.ndim != 2:
        raise ValueError(f"16-bit PNG output needs a single-channel (H, W) array, got {data.shape}")
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] in (3, 4))):
        raise ValueError(f"expected (H, W), (H, W, 3) or (H, W, 4), got {data.shape}")
    image = Image.fromarray(np.ascontiguousarray(data))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path

