"""Compositing, trimap and cropping utilities shared by every matting dataset.

All functions work on numpy arrays in HWC layout (``(H, W, 3)`` images, ``(H, W)`` masks) and
are pure: randomness only comes from the ``np.random.Generator`` passed in, never from global
state, so a sample stays a pure function of its index in every DataLoader worker.

Trimap convention (the project's data contract): float32 with values exactly in {0, 0.5, 1}
(0 = background, 0.5 = unknown, 1 = foreground). 8-bit files map ``< 85 -> 0``,
``>= 170 -> 1``, everything else to 0.5; writing maps ``0 -> 0, 0.5 -> 128, 1 -> 255``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "TRIMAP_BACKGROUND",
    "TRIMAP_UNKNOWN",
    "TRIMAP_FOREGROUND",
    "composite",
    "quantize_trimap",
    "trimap_to_uint8",
    "ellipse_kernel",
    "binary_erosion",
    "trimap_from_alpha",
    "crop_around_unknown",
]

TRIMAP_BACKGROUND = 0.0
TRIMAP_UNKNOWN = 0.5
TRIMAP_FOREGROUND = 1.0

# Alpha values closer than this to 0 / 1 count as pure background / foreground (DIM, ViTMatte).
ALPHA_EPS = 1e-5
# 8-bit trimap thresholds (METHOD §1): below LOW background, from HIGH on foreground
TRIMAP_LOW_U8 = 85
TRIMAP_HIGH_U8 = 170


def composite(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite a foreground over a background: ``fg * alpha + bg * (1 - alpha)``.

    Args:
        fg: (H, W, 3) float in [0, 1].
        bg: (H, W, 3) float in [0, 1].
        alpha: (H, W) or (H, W, 1) float in [0, 1].

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    if alpha.ndim == 2:
        alpha = alpha[..., None]
    if fg.shape != bg.shape or fg.shape[:2] != alpha.shape[:2] or alpha.shape[2] != 1:
        raise ValueError(
            f"shape mismatch: fg {fg.shape}, bg {bg.shape}, alpha {alpha.shape} "
            "(expected (H,W,3), (H,W,3), (H,W) or (H,W,1))"
        )
    alpha = alpha.astype(np.float32, copy=False)
    # bg + alpha * (fg - bg) is the same formula with one fewer full-size product.
    image = bg.astype(np.float32, copy=False) + alpha * (fg.astype(np.float32, copy=False) - bg)
    return np.clip(image, 0.0, 1.0, out=image)


def quantize_trimap(trimap_u8: np.ndarray) -> np.ndarray:
    """Map an 8-bit trimap (0..255) to float32 values in {0, 0.5, 1}.

    ``< 85 -> 0`` (background), ``>= 170 -> 1`` (foreground), otherwise 0.5 (unknown).

    Args:
        trimap_u8: (H, W) integer (or float on the 0..255 scale) array.

    Returns:
        (H, W) float32 with values in {0, 0.5, 1}.
    """
    values = np.asarray(trimap_u8)
    trimap = np.full(values.shape, TRIMAP_UNKNOWN, dtype=np.float32)
    trimap[values < TRIMAP_LOW_U8] = TRIMAP_BACKGROUND
    trimap[values >= TRIMAP_HIGH_U8] = TRIMAP_FOREGROUND
    return trimap


def trimap_to_uint8(trimap: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_trimap`: {0, 0.5, 1} -> {0, 128, 255} as uint8.

    Args:
        trimap: (H, W) float array with values in {0, 0.5, 1} (other values snap to the nearest).

    Returns:
        (H, W) uint8 with values in {0, 128, 255}.
    """
    trimap = np.asarray(trimap)
    out = np.full(trimap.shape, 128, dtype=np.uint8)
    out[trimap < 0.25] = 0
    out[trimap >= 0.75] = 255
    return out


def ellipse_kernel(size: int) -> np.ndarray:
    """Elliptical structuring element, identical to ``cv2.getStructuringElement(MORPH_ELLIPSE)``.

    Args:
        size: side length in pixels (>= 1).

    Returns:
        (size, size) bool array; its anchor (centre) is ``(size // 2, size // 2)``.
    """
    if size < 1:
        raise ValueError(f"kernel size must be >= 1, got {size}")
    radius = size // 2
    kernel = np.zeros((size, size), dtype=bool)
    for row in range(size):
        dy = row - radius
        if radius == 0:
            half_width = 0
        else:
            # Same integer rounding as OpenCV (cvRound = round half to even) so the trimaps match
            # the ones the ViTMatte / DIM reference pipelines produce.
            half_width = int(np.rint(radius * np.sqrt(max(radius * radius - dy * dy, 0) / radius**2)))
        kernel[row, max(radius - half_width, 0) : min(radius + half_width + 1, size)] = True
    return kernel


def _row_segments(kernel: np.ndarray) -> list[tuple[int, int, int]]:
    """Split every kernel row into contiguous runs of True: list of (row, first_col, length)."""
    segments = []
    for row in range(kernel.shape[0]):
        cols = np.flatnonzero(kernel[row])
        if cols.size == 0:
            continue
        # Break the row where consecutive True columns are not adjacent.
        breaks = np.flatnonzero(np.diff(cols) > 1) + 1
        for run in np.split(cols, breaks):
            segments.append((row, int(run[0]), int(run.size)))
    return segments


def binary_erosion(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Binary erosion where pixels outside the image count as "mask" (borders never erode).

    Equivalent to ``cv2.erode`` with its default border and an anchor at ``kernel.shape // 2``.
    The mask is edge-replicated before eroding; for convex symmetric kernels (ellipses) this is
    exactly the same as treating the outside as True.

    Implementation: every kernel row is a horizontal run of True pixels, so the erosion is the AND
    over rows of vertically shifted horizontal run-erosions; run-erosions of increasing length
    are built incrementally (``run[L + 1](x) = run[L](x) & mask(x + L)``). That is ~2 * size
    boolean passes instead of size**2 multiply-adds (torch conv2d needs ~0.5 s for a 640**2 mask
    and a 29x29 kernel on one core; this takes a few ms).

    Args:
        mask: (H, W) bool (any dtype; nonzero = True).
        kernel: (kh, kw) bool structuring element.

    Returns:
        (H, W) bool eroded mask.
    """
    mask = np.asarray(mask, dtype=bool)
    kernel = np.asarray(kernel, dtype=bool)
    if mask.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"expected 2-D mask and kernel, got {mask.shape} and {kernel.shape}")
    if not kernel.any():
        raise ValueError("kernel has no True element")
    height, width = mask.shape
    kh, kw = kernel.shape
    anchor_y, anchor_x = kh // 2, kw // 2
    padded = np.pad(mask, ((anchor_y, kh - 1 - anchor_y), (anchor_x, kw - 1 - anchor_x)), mode="edge")

    segments_by_length: dict[int, list[tuple[int, int]]] = {}
    for row, first_col, length in _row_segments(kernel):
        segments_by_length.setdefault(length, []).append((row, first_col))

    eroded = np.ones((height, width), dtype=bool)
    run = padded.copy()  # run[y, x] = AND of padded[y, x : x + length]
    for length in range(1, max(segments_by_length) + 1):
        if length > 1:
            # Keep the full width so column indices stay aligned with `padded`; the last
            # columns become invalid but are never read for this length.
            np.logical_and(run[:, : -(length - 1)], padded[:, length - 1 :], out=run[:, : -(length - 1)])
        for row, first_col in segments_by_length.get(length, ()):
            eroded &= run[row : row + height, first_col : first_col + width]
    return eroded


def trimap_from_alpha(
    alpha: np.ndarray,
    rng: np.random.Generator,
    kernel_range: tuple[int, int] = (1, 30),
    reference_size: int = 640,
) -> np.ndarray:
    """Random trimap from an alpha matte, following the DIM / ViTMatte ``GenTrimap`` recipe.

    Pure foreground (``alpha >= 1 - 1e-5``) and pure background (``alpha <= 1e-5``) are eroded
    by elliptical kernels whose sizes are drawn independently from ``[kernel_range[0],
    kernel_range[1])`` (1..29 by default) at ``reference_size`` and scaled by
    ``max(H, W) / reference_size`` (at least 1), so small images get proportionally thinner
    unknown bands. Everything else is unknown, hence every 1e-5 < alpha < 1 - 1e-5 pixel is 0.5.

    Args:
        alpha: (H, W) float in [0, 1].
        rng: source of the two kernel sizes (two ``integers`` draws: foreground, background).
        kernel_range: half-open range of kernel sizes at ``reference_size``.
        reference_size: image side the kernel sizes refer to.

    Returns:
        (H, W) float32 trimap with values in {0, 0.5, 1}.
    """
    alpha = np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[-1] == 1:
        alpha = alpha[..., 0]
    if alpha.ndim != 2:
        raise ValueError(f"alpha must be (H, W), got {alpha.shape}")
    scale = max(alpha.shape) / reference_size

    def draw_kernel() -> np.ndarray:
        size = int(rng.integers(kernel_range[0], kernel_range[1]))
        return ellipse_kernel(max(1, int(round(size * scale))))

    fg_kernel, bg_kernel = draw_kernel(), draw_kernel()
    fg_mask = binary_erosion(alpha >= 1.0 - ALPHA_EPS, fg_kernel)
    bg_mask = binary_erosion(alpha <= ALPHA_EPS, bg_kernel)
    trimap = np.full(alpha.shape, TRIMAP_UNKNOWN, dtype=np.float32)
    trimap[fg_mask] = TRIMAP_FOREGROUND
    trimap[bg_mask] = TRIMAP_BACKGROUND
    return trimap


def _as_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def crop_around_unknown(
    arrays: Mapping[str, np.ndarray],
    trimap: np.ndarray,
    crop_size: int | tuple[int, int],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Crop every array with the same window, centred on a random unknown trimap pixel.

    The centre is a uniformly drawn pixel with ``trimap == 0.5`` (a uniform random pixel when
    there is none); the window is then shifted to lie inside the image. When the image is
    smaller than the crop along an axis, every array is reflect-padded along it first (the
    padding is split at random between the two sides). Reflection is used for *all* arrays,
    alpha and trimap included, so the padded sample stays self-consistent
    (``image == composite(fg, bg, alpha)`` still holds and the trimap stays in {0, 0.5, 1});
    zero-padding alpha under a reflected image would teach the model wrong labels.

    Args:
        arrays: name -> (H, W) or (H, W, C) array, all with the trimap's H and W.
        trimap: (H, W) float trimap with values in {0, 0.5, 1}.
        crop_size: output (height, width), or one int for a square crop.
        rng: source of the centre and padding offsets.

    Returns:
        name -> (crop_h, crop_w[, C]) array (a view when no padding was needed).
    """
    crop_h, crop_w = _as_pair(crop_size)
    height, width = trimap.shape[:2]
    for name, array in arrays.items():
        if array.shape[:2] != (height, width):
            raise ValueError(f"array '{name}' has shape {array.shape}, trimap has {trimap.shape}")

    unknown = np.flatnonzero(trimap == TRIMAP_UNKNOWN)
    if unknown.size > 0:
        centre_y, centre_x = divmod(int(unknown[rng.integers(unknown.size)]), width)
    else:
        centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))

    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    pad_top = int(rng.integers(pad_h + 1)) if pad_h else 0
    pad_left = int(rng.integers(pad_w + 1)) if pad_w else 0
    top = min(max(centre_y + pad_top - crop_h // 2, 0), height + pad_h - crop_h)
    left = min(max(centre_x + pad_left - crop_w // 2, 0), width + pad_w - crop_w)

    cropped = {}
    for name, array in arrays.items():
        if pad_h or pad_w:
            pad_width = [(pad_top, pad_h - pad_top), (pad_left, pad_w - pad_left)]
            pad_width += [(0, 0)] * (array.ndim - 2)
            array = np.pad(array, pad_width, mode="reflect")
        cropped[name] = array[top : top + crop_h, left : left + crop_w]
    return cropped
