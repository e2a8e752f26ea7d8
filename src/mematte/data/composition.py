"""Compositing, trimap and cropping utilities shared by every matting dataset.

All functions work on numpy arrays in HWC layout (``(H, W, 3)`` images, ``(H, W)`` masks;
:func:`quantise_trimap` also on torch tensors) and are pure: randomness only comes from the ``np.random.Generator`` passed in, never from global
state, so a sample stays a pure function of its index in every DataLoader worker.

Trimap convention (the project's data contract): float32 with values exactly in {0, 0.5, 1}
(0 = background, 0.5 = unknown, 1 = foreground). 8-bit files map ``< 85 -> 0``,
``>= 170 -> 1``, everything else to 0.5 (:func:`quantise_trimap`, the one rule for files,
datasets and the predictor); writing maps ``0 -> 0, 0.5 -> 128, 1 -> 255``. Morphology is
OpenCV's (``cv2.getStructuringElement`` / ``cv2.erode``), as in the DIM and ViTMatte pipelines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import cv2
import numpy as np
import torch

__all__ = [
    "TRIMAP_BACKGROUND",
    "TRIMAP_UNKNOWN",
    "TRIMAP_FOREGROUND",
    "composite",
    "quantise_trimap",
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
# 8-bit trimap thresholds (docs/method.md, ViTMatte): below LOW background, from HIGH on foreground
TRIMAP_LOW_U8 = 85
TRIMAP_HIGH_U8 = 170

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


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


def quantise_trimap(trimap: ArrayOrTensor) -> ArrayOrTensor:
    """The project's one trimap rule: any trimap to float32 values in {0, 0.5, 1}.

    Below a third of the value range is background, from two thirds on foreground, unknown in
    between: uint8 ``< 85 -> 0``, ``>= 170 -> 1``; float in [0, 1] ``< 85/255 -> 0``,
    ``>= 170/255 -> 1`` (the same thresholds on the [0, 1] scale). Numpy arrays (dataset
    files) and torch tensors (the predictor, on any device) go through this same function.

    Args:
        trimap: (...) uint8 0..255, or float in [0, 1]; numpy array or torch tensor.

    Returns:
        (...) float32 with values in {0, 0.5, 1}, of the input's kind (and device).

    Raises:
        TypeError: another dtype (e.g. int64: convert 8-bit trimaps to uint8).
        ValueError: a float trimap outside [0, 1].
    """
    is_tensor = isinstance(trimap, torch.Tensor)
    values = trimap if is_tensor else np.asarray(trimap)
    is_uint8 = values.dtype == (torch.uint8 if is_tensor else np.uint8)
    is_float = values.is_floating_point() if is_tensor else np.issubdtype(values.dtype, np.floating)
    if is_uint8:
        low, high = TRIMAP_LOW_U8, TRIMAP_HIGH_U8
    elif is_float:
        empty = (values.numel() if is_tensor else values.size) == 0
        if not empty and (values.min() < 0 or values.max() > 1):
            raise ValueError("a float trimap must lie in [0, 1] (or pass uint8 0..255)")
        low, high = TRIMAP_LOW_U8 / 255.0, TRIMAP_HIGH_U8 / 255.0
    else:
        raise TypeError(f"trimap dtype {values.dtype} unsupported: pass uint8 0..255 or float in [0, 1]")
    # 0.5 per threshold reached: 0 (background), 0.5 (unknown), 1 (foreground)
    if is_tensor:
        return ((values >= low).float() + (values >= high).float()) * 0.5
    return ((values >= low).astype(np.float32) + (values >= high)) * np.float32(0.5)


def trimap_to_uint8(trimap: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantise_trimap`: {0, 0.5, 1} -> {0, 128, 255} as uint8.

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
    """Elliptical structuring element: ``cv2.getStructuringElement(MORPH_ELLIPSE, (size, size))``.

    The kernel of the DIM / ViTMatte trimap generators, so trimaps match theirs bit for bit.

    Args:
        size: side length in pixels (>= 1).

    Returns:
        (size, size) bool array; its anchor (centre) is ``(size // 2, size // 2)``.
    """
    if size < 1:
        raise ValueError(f"kernel size must be >= 1, got {size}")
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)).astype(bool)


def binary_erosion(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.erode`` of a boolean mask: pixels outside the image count as "mask", so the image
    border never erodes (OpenCV's default border for erosion); anchor at the kernel's centre.

    Args:
        mask: (H, W) bool (any dtype; nonzero = True).
        kernel: (kh, kw) bool structuring element.

    Returns:
        (H, W) bool eroded mask.
    """
    mask, kernel = np.asarray(mask), np.asarray(kernel)
    if mask.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"expected 2-D mask and kernel, got {mask.shape} and {kernel.shape}")
    if not kernel.any():
        raise ValueError("kernel has no True element")
    eroded = cv2.erode(np.ascontiguousarray(mask != 0).view(np.uint8), kernel.astype(np.uint8))
    return eroded.view(bool)


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
