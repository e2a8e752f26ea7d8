"""Pictures of what the net did: matting panels and routing maps (uint8 RGB arrays).

* :func:`matting_panel` — image | trimap | prediction | ground truth | error, side by side
  (the validation panels logged to W&B by :class:`mematte.callbacks.MattingPanels`).
* :func:`routing_overlay` — per routed block, which tokens went to global attention, tinted
  over the image (``predict.py routing_overlay=true``, the W&B routing maps, the demo
  notebook).

Everything is drawn on downscaled copies (``max_side``), never at full resolution, so an 8K
input costs a thumbnail's worth of memory here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mematte.models.vit import RoutingInfo

__all__ = ["error_colormap", "matting_panel", "routing_overlay"]

_TINT = np.array([255.0, 150.0, 0.0], dtype=np.float32)  # orange: tokens with global attention
_GAP = 4  # pixels between tiles


def _label(draw: ImageDraw.ImageDraw, x: int, y: int, text: str) -> None:
    """White text with a black shadow: readable on light and dark tiles alike."""
    draw.text((x + 4, y + 3), text, fill=(0, 0, 0))
    draw.text((x + 3, y + 2), text, fill=(255, 255, 255))


def _fit(h: int, w: int, max_side: int) -> tuple[int, int]:
    """(ph, pw) of an h × w picture shrunk to at most ``max_side`` (never enlarged)."""
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _gray_to_rgb(values: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] → (H, W, 3) uint8."""
    gray = np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def error_colormap(error: np.ndarray) -> np.ndarray:
    """Absolute error (H, W) in [0, 1] → (H, W, 3) uint8, black → red → yellow → white.

    A "hot" ramp: small errors stay dark, so the few badly wrong pixels stand out.
    """
    e = np.clip(np.asarray(error, dtype=np.float32), 0.0, 1.0) * 3.0
    rgb = np.stack([np.clip(e, 0, 1), np.clip(e - 1, 0, 1), np.clip(e - 2, 0, 1)], axis=-1)
    return np.rint(rgb * 255.0).astype(np.uint8)


def matting_panel(
    image: np.ndarray,
    trimap: np.ndarray,
    prediction: np.ndarray,
    ground_truth: np.ndarray | None = None,
    max_side: int = 384,
    title: str | None = None,
) -> np.ndarray:
    """Image | trimap | prediction | ground truth | error, labelled, one row.

    Args:
        image: (H, W, 3) uint8.
        trimap: (H, W) float in {0, 0.5, 1}.
        prediction: (H, W) float alpha in [0, 1].
        ground_truth: (H, W) float alpha in [0, 1]; None drops the last two tiles.
        max_side: longest side of each tile in pixels.
        title: drawn on the image tile (e.g. the sample name).

    Returns:
        (ph, k·pw + (k − 1)·4, 3) uint8 with k = 5 tiles (3 without ground truth). The error
        tile is |prediction − ground truth| in the trimap's unknown region (black elsewhere),
        labelled with its mean there.
    """
    h, w = image.shape[:2]
    for name, array in (("trimap", trimap), ("prediction", prediction), ("ground_truth", ground_truth)):
        if array is not None and array.shape[:2] != (h, w):
            raise ValueError(f"{name} is {array.shape[:2]} but the image is {(h, w)}")
    tiles: list[tuple[str, np.ndarray]] = [
        (title or "image", image),
        ("trimap", _gray_to_rgb(trimap)),
        ("prediction", _gray_to_rgb(prediction)),
    ]
    if ground_truth is not None:
        unknown = np.isclose(trimap, 0.5)
        error = np.where(unknown, np.abs(np.asarray(prediction, np.float32) - ground_truth), 0.0)
        mean = float(error[unknown].mean()) * 1000 if unknown.any() else 0.0
        tiles += [("ground truth", _gray_to_rgb(ground_truth)), (f"|error| unknown, mean {mean:.1f}e-3", error_colormap(error))]
    ph, pw = _fit(h, w, max_side)
    canvas = Image.new("RGB", (len(tiles) * pw + (len(tiles) - 1) * _GAP, ph))
    draw = ImageDraw.Draw(canvas)
    for k, (label, tile) in enumerate(tiles):
        picture = Image.fromarray(tile)
        if (pw, ph) != (w, h):
            picture = picture.resize((pw, ph), Image.Resampling.BOX)
        x0 = k * (pw + _GAP)
        canvas.paste(picture, (x0, 0))
        _label(draw, x0, 0, label)
    return np.asarray(canvas)


def _routing_tile(image: Image.Image, decision: np.ndarray, image_hw: tuple[int, int], patch: int) -> np.ndarray:
    """One overlay tile: the (downscaled) image dimmed, routed tokens tinted.

    Args:
        image: the image already resized to the tile size (pw, ph).
        decision: (Hg, Wg) bool token grid of the padded image.
        image_hw: (H, W) of the original image (the grid covers its padded version).
        patch: token side in image pixels.

    Returns:
        (ph, pw, 3) uint8.
    """
    h, w = image_hw
    pixels = np.asarray(image, dtype=np.float32)
    ph, pw = pixels.shape[:2]
    # tile pixel centre → original pixel → token (nearest), no full-resolution upsampling
    rows = np.minimum(((np.arange(ph) + 0.5) * h / ph).astype(np.int64) // patch, decision.shape[0] - 1)
    cols = np.minimum(((np.arange(pw) + 0.5) * w / pw).astype(np.int64) // patch, decision.shape[1] - 1)
    routed = decision[rows[:, None], cols[None, :]]
    out = pixels * 0.35
    out[routed] = 0.5 * pixels[routed] + 0.5 * _TINT
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def routing_overlay(
    image: np.ndarray,
    routing: Sequence[RoutingInfo],
    patch: int,
    block_indexes: Sequence[int] | None = None,
    max_side: int = 1024,
    sample: int = 0,
) -> np.ndarray:
    """Where routed blocks sent tokens to global attention, one labelled tile per block.

    Tiles (image dimmed, routed tokens tinted orange) are laid out in a near-square grid
    (side by side for 2 blocks, 2 × 2 for the usual 4), each at most ``max_side`` pixels.

    Args:
        image: (H, W, 3) uint8, the unpadded input of batch element ``sample``.
        routing: per routed block :class:`RoutingInfo` of the batch.
        patch: token side in pixels (16).
        block_indexes: block numbers for the labels (default 0, 1, ...).
        max_side: longest tile side in pixels.
        sample: which batch element's decisions to draw.

    Returns:
        (rows·ph + gaps, cols·pw + gaps, 3) uint8.
    """
    if not routing:
        raise ValueError("no routing decisions to draw (ViTMatte nets have no routed blocks)")
    h, w = image.shape[:2]
    ph, pw = _fit(h, w, max_side)
    small = Image.fromarray(image)
    if (pw, ph) != (w, h):
        small = small.resize((pw, ph), Image.Resampling.BOX)
    n = len(routing)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (cols * pw + (cols - 1) * _GAP, rows * ph + (rows - 1) * _GAP))
    draw = ImageDraw.Draw(canvas)
    indexes = list(block_indexes) if block_indexes is not None else list(range(n))
    for k, info in enumerate(routing):
        hg, wg = info.grid
        decision = info.decision[sample].detach().float().cpu().numpy().reshape(hg, wg) > 0.5
        x0, y0 = (k % cols) * (pw + _GAP), (k // cols) * (ph + _GAP)
        canvas.paste(Image.fromarray(_routing_tile(small, decision, (h, w), patch)), (x0, y0))
        _label(draw, x0, y0, f"block {indexes[k]}: {decision.mean():.0%} global")
    return np.asarray(canvas)
