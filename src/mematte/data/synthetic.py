"""Procedural matting data: the project's embedded default dataset (no download needed).

Every sample is a foreground RGB, an alpha matte and a background RGB drawn from a generator
that produces the structures that make matting hard:

* hair / fur: hundreds of curved, tapering strands 0.25-2 px wide with anti-aliased partial
  coverage, growing out of a solid body (portrait-like heads, organic blobs, polygons);
* soft semi-transparent regions: smoke (low-frequency noise alpha in ~0.2-0.8 with fuzzy
  borders) and glass (sharp outline, translucent interior, denser rim);
* holes through solid regions (background visible through the foreground), nets / lace;
* sharp solid edges (polygons, ellipses) with 1-px anti-aliasing, sometimes defocused.

Foreground colours are textured (smooth colour fields + multi-octave noise + grain), usually
distinct from the background and sometimes deliberately camouflaged. Backgrounds mix
multi-octave value noise, warped stripes / checkers at random angles, gradients and blurred
shapes (bokeh).

Determinism: a sample is a pure function of ``(seed, split, index)`` through
``np.random.default_rng([seed, split_id, index])``; no global RNG is touched, so results are
identical across processes, DataLoader workers and reruns. Splits use different ``split_id``
values and therefore never share samples.

Internals work channels-first (``(3, H, W)``) for cheap broadcasting and convert to the public
HWC layout at the end. Noise is generated on a coarse grid and upsampled with a cubic B-spline
written as two small matrix products (much faster than interpolation routines on one core).

CLI: ``python -m mematte.data.synthetic --out DIR [--split test] [--num 20] [--seed 0]``
writes a split in the "folder" layout (see :func:`write_folder_dataset`).
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mematte.data.composition import (
    composite,
    crop_around_unknown,
    trimap_from_alpha,
    trimap_to_uint8,
)
from mematte.image_io import write_png
from mematte.metrics import to_uint8

__all__ = [
    "SPLIT_IDS",
    "split_id",
    "smooth_noise",
    "fractal_noise",
    "generate_background",
    "generate_foreground",
    "SyntheticMattingSource",
    "merge_foregrounds",
    "SyntheticMattingTrainSet",
    "SyntheticMattingEvalSet",
    "write_folder_dataset",
    "main",
]

SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# Extra entries appended to the sample's seed sequence for the independent random streams a
# dataset needs on top of the sample content (augmentation, trimap, eval image size).
_STREAM_AUGMENT = 1
_STREAM_TRIMAP = 2
_STREAM_SIZE = 3

# std of a cubic-B-spline-upsampled grid of unit-variance values is ~0.48 (0.69 per axis);
# multiplying by this brings smooth_noise back to roughly unit variance without a full-size
# reduction.
_BSPLINE_STD_CORRECTION = 2.1


def split_id(split: str) -> int:
    """Integer id of a split name ("train" | "val" | "test")."""
    try:
        return SPLIT_IDS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}") from None


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


# --------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------
def _bspline_weights(position: np.ndarray, num_ctrl: int) -> np.ndarray:
    """Uniform cubic B-spline basis as a (len(position), num_ctrl) float32 matrix.

    ``position`` are coordinates on the control grid (clamped to ``[1, num_ctrl - 2]``, where
    all four supporting control points exist); ``matrix @ control_values`` evaluates the
    C2-smooth spline there.
    """
    position = np.clip(position.astype(np.float32), 1.0, num_ctrl - 2.0)
    base = np.minimum(position.astype(np.int64), num_ctrl - 3)  # floor: position >= 1
    f = position - base
    g = 1.0 - f
    f3 = f * f * f
    matrix = np.zeros((position.size, num_ctrl), dtype=np.float32)
    flat = matrix.reshape(-1)
    first = np.arange(position.size) * num_ctrl + base - 1
    flat[first] = g * g * g * (1.0 / 6.0)
    flat[first + 1] = (3.0 * f3 - 6.0 * f * f + 4.0) * (1.0 / 6.0)
    flat[first + 2] = (3.0 * (f + f * f - f3) + 1.0) * (1.0 / 6.0)
    flat[first + 3] = f3 * (1.0 / 6.0)
    return matrix


# The two matrix builders below are memoised: they are pure functions of two ints, the same
# sizes recur in every sample, and building one costs about as much as using it. Callers never
# modify the returned tensors, so results never depend on the cache. They are torch tensors
# because the products use torch.matmul (see _upsample_grid).
@functools.lru_cache(maxsize=512)
def _bspline_matrix(num_out: int, num_ctrl: int) -> torch.Tensor:
    """(num_out, num_ctrl) matrix sampling a ``num_ctrl``-point B-spline at ``num_out`` pixels.

    The control points span the output with one extra point on each side, so there are no
    border artefacts. Returned as a torch tensor (memoised; never modified in place).
    """
    position = (np.arange(num_out, dtype=np.float32) + 0.5) * ((num_ctrl - 3) / num_out) + 1.0
    return torch.from_numpy(_bspline_weights(position, num_ctrl))


@functools.lru_cache(maxsize=512)
def _resample_matrix(num_fine: int, num_coarse: int) -> torch.Tensor:
    """(num_fine, num_coarse) matrix evaluating a coarse control grid at a finer grid's points.

    Both grids span the same output extent (control point j of an n-point grid sits at output
    coordinate (j - 1) / (n - 3)). Memoised; never modified in place.
    """
    position = (np.arange(num_fine, dtype=np.float32) - 1.0) * ((num_coarse - 3) / (num_fine - 3)) + 1.0
    return torch.from_numpy(_bspline_weights(position, num_coarse))


def _control_shape(height: int, width: int, cells: float) -> tuple[int, int]:
    longest = max(height, width)
    return max(int(round(cells * height / longest)), 1) + 3, max(int(round(cells * width / longest)), 1) + 3


def _random_grid(
    rng: np.random.Generator, channels: int, ctrl_h: int, ctrl_w: int, scale: float
) -> np.ndarray:
    """(channels, ctrl_h, ctrl_w) float32 control values, zero-mean with std ``scale``.

    Uniform rather than normal values: 4x cheaper to draw, same look once smoothed.
    """
    grid = rng.random((channels, ctrl_h, ctrl_w), dtype=np.float32)
    grid -= 0.5
    grid *= np.float32(scale * math.sqrt(12.0))
    return grid


def _upsample_grid(grid: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray:
    """(C, h, w) control grid -> (C, height, width) float32 B-spline surface (two matmuls)."""
    _, ctrl_h, ctrl_w = grid.shape
    up_y = _bspline_matrix(height, ctrl_h)
    up_x = up_y if (width, ctrl_w) == (height, ctrl_h) else _bspline_matrix(width, ctrl_w)
    # torch rather than numpy matmul: numpy's OpenBLAS spawns busy-waiting threads that double
    # the cost of the whole generator on small shared machines, while torch follows
    # torch.set_num_threads (1 in DataLoader workers).
    grid = torch.as_tensor(grid)
    return torch.matmul(torch.matmul(up_y, grid), up_x.T).numpy()


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: float, channels: int = 1
) -> np.ndarray:
    """Smooth value noise: random values on a coarse grid, cubic-B-spline upsampled.

    Args:
        rng: random source.
        height, width: output size in pixels.
        cells: number of noise features along the longer side (frequency).
        channels: independent noise channels.

    Returns:
        (channels, height, width) float32, roughly zero-mean and unit-variance.
    """
    grid = _random_grid(rng, channels, *_control_shape(height, width, cells), _BSPLINE_STD_CORRECTION)
    return _upsample_grid(grid, height, width)


def fractal_noise(
    rng: np.random.Generator,
    height: int,
    width: int,
    cells: float,
    octaves: int = 4,
    persistence: float = 0.5,
    channels: int = 1,
) -> np.ndarray:
    """Multi-octave value noise (frequency doubles, amplitude * ``persistence`` per octave).

    Octaves finer than ``max(height, width) / 8`` cells are dropped (grain covers that range).
    The octaves are summed on the finest control grid (coarse grids are resampled onto it with
    small matrices) and upsampled to full resolution once, so the cost is close to that of a
    single :func:`smooth_noise`.

    Returns:
        (channels, height, width) float32, roughly zero-mean and unit-variance.
    """
    max_cells = max(height, width) / 8
    octave_cells = [cells * 2**k for k in range(octaves) if k == 0 or cells * 2**k <= max_cells]
    fine_h, fine_w = _control_shape(height, width, octave_cells[-1])
    amplitudes = [persistence**k for k in range(len(octave_cells))]
    norm = math.sqrt(sum(a * a for a in amplitudes))
    fine_scale = _BSPLINE_STD_CORRECTION * amplitudes[-1] / norm
    fine = torch.from_numpy(_random_grid(rng, channels, fine_h, fine_w, fine_scale))
    for octave_cell, amplitude in zip(octave_cells[:-1], amplitudes[:-1]):
        ctrl_h, ctrl_w = _control_shape(height, width, octave_cell)
        coarse = _random_grid(rng, channels, ctrl_h, ctrl_w, _BSPLINE_STD_CORRECTION * amplitude / norm)
        resample_y, resample_x = _resample_matrix(fine_h, ctrl_h), _resample_matrix(fine_w, ctrl_w)
        fine += torch.matmul(torch.matmul(resample_y, torch.from_numpy(coarse)), resample_x.T)
    return _upsample_grid(fine, height, width)


def _unit_noise(
    rng: np.random.Generator, height: int, width: int, cells: float, octaves: int
) -> np.ndarray:
    """(height, width) float32 fractal noise squashed to [0, 1] (mean ~0.5)."""
    noise = fractal_noise(rng, height, width, cells, octaves, rng.uniform(0.4, 0.65))[0]
    noise *= 0.22
    noise += 0.5
    return np.clip(noise, 0.0, 1.0, out=noise)


# --------------------------------------------------------------------------------------------
# Anti-aliased shape rasterisation (signed distances, evaluated in a bounding window only)
# --------------------------------------------------------------------------------------------
class _Window:
    """Axis-aligned pixel window of a (height, width) canvas with local coordinate vectors.

    Attributes:
        rows, cols: slices into the canvas.
        ys: (h, 1) float32 pixel-centre row coordinates; xs: (1, w) float32 column coordinates.
    """

    def __init__(self, rows: slice, cols: slice) -> None:
        self.rows, self.cols = rows, cols
        self.ys = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
        self.xs = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start


def _window(height: int, width: int, cx: float, cy: float, rx: float, ry: float) -> _Window | None:
    """Window covering centre +- radius (plus 2 px for anti-aliasing), None if off-canvas.

    Callers add half the edge softness to the radii so blurred outlines are not truncated.
    """
    x0, x1 = max(int(math.floor(cx - rx)) - 2, 0), min(int(math.ceil(cx + rx)) + 3, width)
    y0, y1 = max(int(math.floor(cy - ry)) - 2, 0), min(int(math.ceil(cy + ry)) + 3, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return _Window(slice(y0, y1), slice(x0, x1))


def _coverage(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """Pixel coverage from a signed distance (negative inside): 1-px ramp * ``softness``."""
    coverage = signed_distance * (-1.0 / softness)
    coverage += 0.5
    return np.clip(coverage, 0.0, 1.0, out=coverage)


def _random_convex_polygon(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Edge normal angles (sorted) and edge distances of a random bounded convex polygon.

    Consecutive normals are less than pi apart, which keeps the half-plane intersection bounded.
    """
    num_edges = int(rng.integers(3, 9))
    jitter = 0.15 if num_edges == 3 else 0.35
    step = 2 * math.pi / num_edges
    angles = (np.arange(num_edges) + rng.uniform(-jitter, jitter, num_edges)) * step
    angles += rng.uniform(0, 2 * math.pi)
    distances = radius * rng.uniform(0.65, 1.0, num_edges)
    return angles.astype(np.float32), distances.astype(np.float32)


def _polygon_signed_distance(
    height: int,
    width: int,
    cx: float,
    cy: float,
    angles: np.ndarray,
    distances: np.ndarray,
    margin: float = 0.0,
) -> tuple[_Window, np.ndarray] | None:
    """Signed distance (max over half-planes; exact along edges) of a convex polygon.

    Evaluated in a window reaching ``margin`` px beyond the polygon (use half the softness).
    Returns the window and a (h, w) float32 signed distance inside it, or None if off-canvas.
    """
    # Vertices = intersections of consecutive edge lines; their extent bounds the window.
    cos_a, sin_a = np.cos(angles), np.sin(angles)
    following = np.arange(1, angles.size + 1) % angles.size  # index of the next edge
    cos_b, sin_b, distances_b = cos_a[following], sin_a[following], distances[following]
    det = cos_a * sin_b - sin_a * cos_b
    det = np.where(np.abs(det) < 1e-6, 1e-6, det)
    vx = (distances * sin_b - distances_b * sin_a) / det
    vy = (distances_b * cos_a - distances * cos_b) / det
    extent = float(np.max(np.hypot(vx, vy))) + margin
    window = _window(height, width, cx, cy, extent, extent)
    if window is None:
        return None
    local_x, local_y = window.xs - np.float32(cx), window.ys - np.float32(cy)
    signed_distance = np.full(window.shape, -np.inf, dtype=np.float32)
    edge = np.empty(window.shape, dtype=np.float32)
    for c, s, d in zip(cos_a, sin_a, distances):
        np.add(c * local_x - d, s * local_y, out=edge)  # (1,w) + (h,1): one full-size op
        np.maximum(signed_distance, edge, out=signed_distance)
    return window, signed_distance


def _ellipse_signed_distance(
    height: int, width: int, cx: float, cy: float, ra: float, rb: float, theta: float, margin: float = 0.0
) -> tuple[_Window, np.ndarray] | None:
    """First-order signed distance ``g / |grad g|`` of a rotated ellipse (exact at the outline).

    Evaluated in a window reaching ``margin`` px beyond the ellipse; None if off-canvas.
    """
    extent = max(ra, rb) + margin
    window = _window(height, width, cx, cy, extent, extent)
    if window is None:
        return None
    c, s = math.cos(theta), math.sin(theta)
    local_x, local_y = window.xs - np.float32(cx), window.ys - np.float32(cy)
    u = c * local_x + s * local_y
    v = c * local_y - s * local_x
    inv_a2, inv_b2 = 1.0 / (ra * ra), 1.0 / (rb * rb)
    uu, vv = u * u, v * v
    g = uu * inv_a2 + vv * inv_b2 - 1.0
    gradient = np.sqrt(uu * (4 * inv_a2 * inv_a2) + vv * (4 * inv_b2 * inv_b2))
    gradient += 1e-6
    g /= gradient
    return window, g


def _blob_signed_distance(
    rng: np.random.Generator,
    height: int,
    width: int,
    cx: float,
    cy: float,
    ra: float,
    rb: float,
    theta: float,
    roughness: float,
    margin: float = 0.0,
) -> tuple[_Window, np.ndarray] | None:
    """Organic shape: an ellipse whose outline is pushed around by smooth noise.

    f = roughness * noise + 1 - rho (rho = elliptic radius); the shape is f > 0 and the signed
    distance is ``-f / |grad f|`` (finite differences), exact enough for 1-px anti-aliasing.
    """
    extent = max(ra, rb) * (1.0 + 3.2 * roughness) + margin
    window = _window(height, width, cx, cy, extent, extent)
    if window is None:
        return None
    win_h, win_w = window.shape
    c, s = math.cos(theta), math.sin(theta)
    local_x, local_y = window.xs - np.float32(cx), window.ys - np.float32(cy)
    u = (c * local_x + s * local_y) * (1.0 / ra)
    v = (c * local_y - s * local_x) * (1.0 / rb)
    # Noise frequency relative to the blob, not to the window, so shapes look alike at any size.
    cells = rng.uniform(2.0, 6.0) * max(win_h, win_w) / (2 * max(ra, rb))
    field = smooth_noise(rng, win_h, win_w, cells)[0]
    field *= roughness
    field += 1.0
    field -= np.sqrt(u * u + v * v)
    if min(win_h, win_w) < 2:
        return window, -field
    grad_y, grad_x = np.gradient(field)
    norm = np.sqrt(grad_x * grad_x + grad_y * grad_y)
    norm += 1e-4
    field /= norm
    np.negative(field, out=field)
    return window, field


# --------------------------------------------------------------------------------------------
# Strands (hair, fur, grass): vectorised random-walk curves splatted with bilinear weights
# --------------------------------------------------------------------------------------------
def _splat(height: int, width: int, x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Accumulate point weights into a (height, width) grid with bilinear (tent) splatting.

    Points off-canvas are clamped into a 2-px margin that is cropped away, so they never leak
    into the image. (``np.add.at`` into a float32 grid: several times faster here than
    ``np.bincount``, which needs 4N-long float64 copies.)

    Args:
        x, y: (N,) float32 point positions in pixels (pixel centres at integer coordinates).
        weight: (N,) float32 weight of each point.

    Returns:
        (height, width) float32 grid.
    """
    pad = 2
    padded_w = width + 2 * pad
    fx = np.clip(x + np.float32(pad), 0.0, width + pad)
    fy = np.clip(y + np.float32(pad), 0.0, height + pad)
    floor_x, floor_y = np.floor(fx), np.floor(fy)
    fx -= floor_x  # fractional parts, float32
    fy -= floor_y
    index = floor_y.astype(np.intp)
    index *= padded_w
    index += floor_x.astype(np.intp)
    weight_bottom = weight * fy
    weight_top = weight - weight_bottom
    grid = np.zeros((height + 2 * pad) * padded_w, dtype=np.float32)
    for offset, row_weight in ((0, weight_top), (padded_w, weight_bottom)):
        right = row_weight * fx
        np.add.at(grid, index + offset, row_weight - right)
        np.add.at(grid, index + (offset + 1), right)
    return grid.reshape(height + 2 * pad, padded_w)[pad:-pad, pad:-pad]


def _splat_nearest(
    height: int, width: int, x: np.ndarray, y: np.ndarray, weights: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Like :func:`_splat` with nearest-pixel splatting (4x cheaper, for smooth attributes).

    Returns one (height, width) float32 grid per weight array, all splatted at the same points.
    """
    ix = np.clip(np.rint(x).astype(np.intp), -1, width)
    iy = np.clip(np.rint(y).astype(np.intp), -1, height)
    index = (iy + 1) * (width + 2) + ix + 1
    grids = []
    for weight in weights:
        grid = np.zeros((height + 2) * (width + 2), dtype=np.float32)
        np.add.at(grid, index, weight)
        grids.append(grid.reshape(height + 2, width + 2)[1:-1, 1:-1])
    return grids


def _segment_cumsum(values: np.ndarray, segment_start: np.ndarray, segment_id: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at every segment (segments are contiguous runs).

    Args:
        values: (N,) array; segment_start: (n,) first index of each segment;
        segment_id: (N,) segment of each element.

    Returns:
        (N,) float64 per-segment running sums.
    """
    total = np.cumsum(values, dtype=np.float64)
    before_segment = total[segment_start] - values[segment_start]
    return total - before_segment[segment_id]


def _grow_strands(
    rng: np.random.Generator,
    root_x: np.ndarray,
    root_y: np.ndarray,
    start_angle: np.ndarray,
    length: np.ndarray,
    width: np.ndarray,
    flow_angle: float,
    flow_strength: float,
    curl_amplitude: float,
    curl_wavelength: float,
    wander: float,
    taper: float,
    step: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sample points along curved strands; each point carries the strand area it represents.

    The heading of strand i at arc length s is its start angle, bent towards ``flow_angle``
    (gravity / combing) as s grows, plus a sinusoidal curl and a random-walk wander. Width
    tapers linearly to ``(1 - taper) * width`` at the tip. Strands wider than 1.2 px are drawn
    as two parallel sub-strands so their centre reaches full coverage.

    All strands are concatenated into one flat array of points (no padding to the longest
    strand); per-strand running sums use a segmented cumsum. A 1 px step makes the bilinear
    splat an exact partition of unity along axis-aligned strands (no beading; measured to be
    as smooth as 0.5 px at other angles, and 0.7 px beads by ~7%).

    Returns:
        x, y (N,) float32 point positions, area (N,) float32 point weights (px^2) and
        strand_id (N,) int64 (to give strands individual colours).
    """
    num = root_x.size
    counts = np.maximum(np.ceil(length / step).astype(np.int64), 1)
    first = np.cumsum(counts) - counts
    strand_id = np.repeat(np.arange(num), counts)
    arc = (np.arange(strand_id.size) - first[strand_id]).astype(np.float32) * np.float32(step)
    progress = arc / length[strand_id]
    # Bend towards the flow direction along the shortest angular path.
    to_flow = ((flow_angle - start_angle + math.pi) % (2 * math.pi) - math.pi) * np.float32(flow_strength)
    heading = start_angle[strand_id] + to_flow[strand_id] * progress * np.sqrt(progress)
    phase = rng.uniform(0, 2 * math.pi, num).astype(np.float32)
    frequency = (2 * math.pi / (curl_wavelength * rng.uniform(0.7, 1.4, num))).astype(np.float32)
    if curl_amplitude > 0:
        heading += np.float32(curl_amplitude) * np.sin(arc * frequency[strand_id] + phase[strand_id])
    # Random-walk wander from uniform steps (cheaper than normal ones; std = wander).
    wander_steps = rng.random(strand_id.size, dtype=np.float32)
    wander_steps -= 0.5
    wander_steps *= np.float32(wander * math.sqrt(12.0))
    heading += _segment_cumsum(wander_steps, first, strand_id).astype(np.float32)
    cos_h, sin_h = np.cos(heading), np.sin(heading)
    # Exclusive running sums: the first point of each strand sits on its root.
    step32 = np.float32(step)
    x = root_x[strand_id] + (_segment_cumsum(cos_h, first, strand_id) - cos_h).astype(np.float32) * step32
    y = root_y[strand_id] + (_segment_cumsum(sin_h, first, strand_id) - sin_h).astype(np.float32) * step32
    point_width = width[strand_id] * (1.0 - np.float32(taper) * progress)

    thick = point_width > 1.2
    if thick.any():
        offset = point_width[thick] * 0.25
        nx, ny = -sin_h[thick] * offset, cos_h[thick] * offset
        half = point_width[thick] * 0.5
        x = np.concatenate([x[~thick], x[thick] + nx, x[thick] - nx])
        y = np.concatenate([y[~thick], y[thick] + ny, y[thick] - ny])
        point_width = np.concatenate([point_width[~thick], half, half])
        strand_id = np.concatenate([strand_id[~thick], strand_id[thick], strand_id[thick]])
    return x, y, point_width * np.float32(step), strand_id


def _boundary_roots(
    rng: np.random.Generator, body: np.ndarray, count: int, sector_centre: float, sector_half_width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Random points on the anti-aliased outline of ``body`` and their outward normal angles.

    Only outline points whose normal lies within the angular sector are used (hair grows on
    the top of a head, not everywhere), unless fewer than 20 qualify.
    Returns (x, y, normal_angle) arrays of length ``count`` or None if there is no outline.
    """
    height, width = body.shape
    outline = np.flatnonzero((body > 0.05) & (body < 0.95))
    if outline.size == 0:
        return None
    oy, ox = np.divmod(outline, width)
    # Central differences 3 px apart: the outline is only 1-2 px wide, so this sees it whole.
    grad_x = body[oy, np.minimum(ox + 3, width - 1)] - body[oy, np.maximum(ox - 3, 0)]
    grad_y = body[np.minimum(oy + 3, height - 1), ox] - body[np.maximum(oy - 3, 0), ox]
    normal = np.arctan2(-grad_y, -grad_x)
    in_sector = np.abs((normal - sector_centre + math.pi) % (2 * math.pi) - math.pi) <= sector_half_width
    if np.count_nonzero(in_sector) >= 20:
        ox, oy, normal = ox[in_sector], oy[in_sector], normal[in_sector]
    pick = rng.integers(ox.size, size=count)
    return ox[pick].astype(np.float32), oy[pick].astype(np.float32), normal[pick].astype(np.float32)


def _draw_hair(
    rng: np.random.Generator, body: np.ndarray, scale: float, style: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Hair ("hair") or fur ("fur") growing out of the outline of ``body``.

    Returns (coverage, brightness): (H, W) float32 strand coverage in [0, 1] and a (H, W)
    float32 per-strand brightness factor (~1) used to colour individual strands.
    """
    height, width = body.shape
    if style == "fur":
        count = int(rng.integers(600, 2000) * scale)
        lengths_max = rng.uniform(4.0, 16.0) * scale
        sector = (rng.uniform(-math.pi, math.pi), rng.uniform(1.2, math.pi))
        widths = rng.uniform(0.4, 1.3, count)
        flow_strength, curl, wander = rng.uniform(0.0, 0.4), rng.uniform(0.0, 0.3), 0.05
        spread = 0.6
    else:
        count = int(rng.integers(200, 800) * scale)
        lengths_max = rng.uniform(0.08, 0.35) * max(height, width)
        sector = (-math.pi / 2 + rng.normal(0, 0.4), rng.uniform(0.8, math.pi))
        # Mostly fine strands, a few thick ones (locks seen slightly out of focus).
        widths = rng.uniform(0.4, 1.0, count) * np.where(rng.uniform(size=count) < 0.15, 2.0, 1.0)
        flow_strength, wander = rng.uniform(0.2, 1.0), rng.uniform(0.01, 0.04)
        curl_kind = rng.uniform()  # straight 35%, wavy 45%, curly 20%
        if curl_kind < 0.35:
            curl = 0.0
        else:
            curl = rng.uniform(0.05, 0.25) if curl_kind < 0.8 else rng.uniform(0.3, 0.8)
        spread = 0.45
    if count == 0:
        return None
    roots = _boundary_roots(rng, body, count, *sector)
    if roots is None:
        return None
    root_x, root_y, normal = roots
    # Start slightly inside the body so strands emerge from it instead of floating next to it.
    depth = rng.uniform(0.0, 4.0, count).astype(np.float32)
    root_x -= np.cos(normal) * depth
    root_y -= np.sin(normal) * depth
    start_angle = (normal + rng.normal(0.0, spread, count)).astype(np.float32)
    lengths = (lengths_max * rng.uniform(0.25, 1.0, count)).astype(np.float32)
    widths = widths.astype(np.float32)

    # A few long, very thin flyaway strands: the hardest low-alpha structures.
    num_flyaway = int(rng.integers(0, 25) * scale) if style == "hair" else 0
    if num_flyaway:
        pick = rng.integers(count, size=num_flyaway)
        root_x, root_y = np.concatenate([root_x, root_x[pick]]), np.concatenate([root_y, root_y[pick]])
        flyaway_angle = start_angle[pick] + rng.normal(0, 0.5, num_flyaway).astype(np.float32)
        start_angle = np.concatenate([start_angle, flyaway_angle])
        flyaway_length = (lengths_max * rng.uniform(1.0, 1.8, num_flyaway)).astype(np.float32)
        lengths = np.concatenate([lengths, flyaway_length])
        widths = np.concatenate([widths, rng.uniform(0.25, 0.6, num_flyaway).astype(np.float32)])

    x, y, area, strand_id = _grow_strands(
        rng,
        root_x,
        root_y,
        start_angle,
        lengths,
        widths,
        flow_angle=math.pi / 2 + rng.normal(0.0, 0.5),  # mostly gravity (+y is down)
        flow_strength=flow_strength,
        curl_amplitude=curl,
        curl_wavelength=rng.uniform(15.0, 60.0) * scale,
        wander=wander,
        taper=rng.uniform(0.3, 0.9),
    )
    brightness = rng.uniform(0.6, 1.4, root_x.size).astype(np.float32)[strand_id]
    density = _splat(height, width, x, y, area)
    # Per-strand brightness as a coverage-weighted average; nearest splatting is enough here
    # because it only modulates colour, never alpha.
    point_count, weighted_brightness = _splat_nearest(height, width, x, y, [area, area * brightness])
    weighted_brightness += 1e-4
    point_count += 1e-4
    weighted_brightness /= point_count
    return np.minimum(density, 1.0), weighted_brightness


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------
def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB in [0, 1] drawn in HSV (all hues, mostly saturated, varied brightness)."""
    hue, saturation, value = rng.uniform(), rng.uniform() ** 0.7, rng.uniform(0.08, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)


def _foreground_colour(rng: np.random.Generator, background_colour: np.ndarray | None) -> np.ndarray:
    """A foreground base colour: far from ``background_colour`` usually, close to it sometimes."""
    if background_colour is not None and rng.uniform() < 0.25:
        # Camouflage: the hard case where colour alone cannot separate foreground from background.
        return np.clip(background_colour + rng.uniform(-0.1, 0.1, 3), 0.0, 1.0).astype(np.float32)
    colour = _random_colour(rng)
    for _ in range(4):
        if background_colour is None or np.abs(colour - background_colour).sum() > 0.35:
            break
        colour = _random_colour(rng)
    return colour


def _add_grain(rng: np.random.Generator, field: np.ndarray, max_sigma: float) -> None:
    """Add grain of std U(0, max_sigma) to a (H, W) float32 field in place.

    Applied to the shared luminance field (one channel: 3x cheaper, looks like sensor noise).
    """
    sigma = rng.uniform(0.0, max_sigma)
    if sigma > 0.004:
        # Uniform grain from raw bytes: ~10x cheaper than normal samples, looks the same.
        height, width = field.shape
        grain = np.frombuffer(rng.bytes(height * width), dtype=np.uint8).astype(np.float32)
        grain = grain.reshape(height, width)
        grain -= 127.5
        grain *= np.float32(sigma / 73.9)  # std of uniform bytes is 73.9
        field += grain


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------
def _lerp_colours(t: np.ndarray, colour_a: np.ndarray, colour_b: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 ``a + t * (b - a)`` for a (H, W) field t."""
    out = t[None] * (colour_b - colour_a)[:, None, None]
    out += colour_a[:, None, None]  # in place: fresh full-size temporaries are costly here
    return out


def _background_noise(rng: np.random.Generator, height: int, width: int, palette: np.ndarray) -> np.ndarray:
    """Multi-octave value noise mapped through a 3-colour palette (quadratic Bezier in RGB)."""
    t = _unit_noise(rng, height, width, rng.uniform(1.5, 8.0), int(rng.integers(2, 6)))
    s = 1.0 - t
    image = palette[0][:, None, None] * (s * s)[None]
    image += palette[1][:, None, None] * (2 * s * t)[None]
    image += palette[2][:, None, None] * (t * t)[None]
    return image


def _background_stripes(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray
) -> np.ndarray:
    """Stripes or a checkerboard at a random angle and period, optionally warped (fabric-like)."""
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(4.0, max(4.0, 0.25 * max(height, width)))
    # Edge width from crisp (1 px, anti-aliased) to sine-like.
    edge = rng.uniform(1.0, max(1.0, period / 2)) if rng.uniform() < 0.5 else 1.0
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    warp = None
    if rng.uniform() < 0.5:
        warp = smooth_noise(rng, height, width, rng.uniform(1.0, 4.0))[0]
        warp *= np.float32(rng.uniform(0.1, 0.5))

    def square_wave(angle: float) -> np.ndarray:
        u = (math.cos(angle) / period) * xs + (math.sin(angle) / period) * ys
        if warp is not None:
            u = u + warp
        triangle = np.abs(u - np.floor(u) - 0.5)  # 0..0.5, period 1
        return np.clip((triangle - 0.25) * (period / edge) + 0.5, 0.0, 1.0)

    pattern = square_wave(theta)
    if rng.uniform() < 0.4:
        other = square_wave(theta + math.pi / 2)
        pattern = pattern + other - 2 * pattern * other  # soft XOR -> checkerboard
    return _lerp_colours(pattern.astype(np.float32), palette[0], palette[1])


def _background_gradient(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray
) -> np.ndarray:
    """Linear or radial gradient between two palette colours."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    size = max(height, width)
    if rng.uniform() < 0.5:
        theta = rng.uniform(0, 2 * math.pi)
        t = (math.cos(theta) * xs + math.sin(theta) * ys) * (1.0 / size) + rng.uniform(-0.5, 0.5)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) * (1.0 / (size * rng.uniform(0.4, 1.2)))
    return _lerp_colours(np.clip(t, 0.0, 1.0).astype(np.float32), palette[0], palette[1])


def _background_shapes(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray
) -> np.ndarray:
    """Random polygons / ellipses, sharp or heavily blurred (bokeh), over a gradient."""
    image = _background_gradient(rng, height, width, palette)
    size = max(height, width)
    for _ in range(int(rng.integers(4, 16))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = size * rng.uniform(0.03, 0.25)
        softness = 1.0 if rng.uniform() < 0.4 else rng.uniform(2.0, 0.4 * radius + 2.0)
        if rng.uniform() < 0.5:
            result = _polygon_signed_distance(
                height, width, cx, cy, *_random_convex_polygon(rng, radius), margin=softness / 2
            )
        else:
            rb, theta = radius * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi)
            result = _ellipse_signed_distance(height, width, cx, cy, radius, rb, theta, softness / 2)
        colour = palette[int(rng.integers(3))] if rng.uniform() < 0.5 else _random_colour(rng)
        opacity = rng.uniform(0.5, 1.0)
        if result is None:
            continue
        window, signed_distance = result
        coverage = _coverage(signed_distance, softness)
        coverage *= opacity
        region = image[:, window.rows, window.cols]
        region += coverage[None] * (colour[:, None, None] - region)
    return image


_BACKGROUND_KINDS = (_background_noise, _background_stripes, _background_gradient, _background_shapes)


def generate_background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background image.

    Kinds: colourised multi-octave noise, (warped) stripes / checkers, gradients, blurred
    shapes, or a noise-masked mix of two kinds; then low-frequency illumination and grain.

    Returns:
        bg: (3, H, W) float32 in [0, 1] (channels-first; the public API transposes);
        dominant_colour: (3,) float32, used to pick a (dis)similar foreground colour.
    """
    palette = np.stack([_random_colour(rng) for _ in range(3)])
    if rng.uniform() < 0.3:
        # Low-contrast palettes: flat-ish studio backdrops and dim scenes are common too.
        palette = palette[:1] + (palette - palette[:1]) * np.float32(rng.uniform(0.1, 0.5))
    kind = int(rng.integers(len(_BACKGROUND_KINDS)))
    image = _BACKGROUND_KINDS[kind](rng, height, width, palette)
    if rng.uniform() < 0.2:
        other_kind = _BACKGROUND_KINDS[int(rng.integers(len(_BACKGROUND_KINDS)))]
        other = other_kind(rng, height, width, palette[::-1].copy())
        mask = smooth_noise(rng, height, width, rng.uniform(1.0, 4.0))[0]
        mask *= np.float32(rng.uniform(0.5, 4.0))  # contrast: sharp or gradual transitions
        mask += 0.5
        np.clip(mask, 0.0, 1.0, out=mask)
        image += mask[None] * (other - image)
    # Smooth illumination, fine luminance texture and grain in one multiplicative field, plus
    # a little colour noise, so that no region is perfectly flat.
    luminance = fractal_noise(rng, height, width, rng.uniform(1.0, 3.0), 5, rng.uniform(0.3, 0.6))[0]
    luminance *= np.float32(rng.uniform(0.0, 0.15))
    luminance += 1.0
    _add_grain(rng, luminance, 0.04)
    image *= luminance[None]
    if rng.uniform() < 0.5:
        colour_noise = smooth_noise(rng, height, width, rng.uniform(4.0, 16.0), channels=3)
        colour_noise *= np.float32(rng.uniform(0.0, 0.04))
        image += colour_noise
    np.clip(image, 0.0, 1.0, out=image)
    return image, palette[0]


# --------------------------------------------------------------------------------------------
# Foregrounds
# --------------------------------------------------------------------------------------------
def _union_into(canvas: np.ndarray, window: _Window, coverage: np.ndarray) -> None:
    """canvas = max(canvas, coverage) inside the window (union of anti-aliased shapes)."""
    region = canvas[window.rows, window.cols]
    np.maximum(region, coverage, out=region)


def _draw_body(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """Solid body coverage (H, W) float32 in [0, 1] and its kind.

    Kinds: "portrait" (head + neck + shoulders rising from the bottom edge), "blob" (organic
    shape), "polygons" (union of sharp convex polygons), "ellipses" (union of ellipses).
    """
    body = np.zeros((height, width), dtype=np.float32)
    size = min(height, width)
    kind = str(rng.choice(["portrait", "blob", "polygons", "ellipses"], p=[0.3, 0.3, 0.2, 0.2]))
    # Mostly sharp, sometimes defocused outlines (a real difficulty of natural images).
    softness = 1.0 if rng.uniform() < 0.8 else rng.uniform(1.5, 5.0)
    margin = softness / 2
    parts: list[tuple[_Window, np.ndarray] | None] = []
    if kind == "portrait":
        head_r = size * rng.uniform(0.16, 0.28)
        head_x, head_y = width * rng.uniform(0.3, 0.7), height * rng.uniform(0.3, 0.55)
        head_ra, head_tilt = head_r * rng.uniform(0.8, 0.95), rng.normal(0, 0.2)
        head = _blob_signed_distance(rng, height, width, head_x, head_y, head_ra, head_r, head_tilt, 0.06, margin)
        parts.append(head)
        shoulders_x = head_x + rng.normal(0, 0.05) * width
        shoulders_y = height * rng.uniform(1.0, 1.15)
        shoulders_ra = size * rng.uniform(0.35, 0.6)
        shoulders_rb = height - head_y + head_r * rng.uniform(-0.2, 0.3)
        parts.append(_ellipse_signed_distance(
            height, width, shoulders_x, shoulders_y, shoulders_ra, shoulders_rb, rng.normal(0, 0.1), margin
        ))
        neck_y, neck_ra, neck_rb = head_y + head_r, head_r * 0.45, head_r * 1.1
        parts.append(_ellipse_signed_distance(height, width, head_x, neck_y, neck_ra, neck_rb, 0.0, margin))
    else:
        num_parts = 1 if kind == "blob" else int(rng.integers(1, 4))
        centre_x, centre_y = width * rng.uniform(0.25, 0.75), height * rng.uniform(0.25, 0.75)
        for _ in range(num_parts):
            radius = size * rng.uniform(0.12, 0.35)
            cx = centre_x + rng.normal(0, 0.12) * width
            cy = centre_y + rng.normal(0, 0.12) * height
            if kind == "blob":
                rb, theta = radius * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)
                roughness = rng.uniform(0.1, 0.35)
                parts.append(
                    _blob_signed_distance(rng, height, width, cx, cy, radius, rb, theta, roughness, margin)
                )
            elif kind == "polygons":
                polygon = _random_convex_polygon(rng, radius)
                parts.append(_polygon_signed_distance(height, width, cx, cy, *polygon, margin=margin))
            else:
                rb, theta = radius * rng.uniform(0.35, 1.0), rng.uniform(0, math.pi)
                parts.append(_ellipse_signed_distance(height, width, cx, cy, radius, rb, theta, margin))
    for part in parts:
        if part is not None:
            _union_into(body, part[0], _coverage(part[1], softness))
    return body, kind


def _cut_holes(rng: np.random.Generator, body: np.ndarray) -> None:
    """Punch anti-aliased holes (background visible through the object) into ``body`` in place."""
    height, width = body.shape
    interior = np.flatnonzero(body > 0.99)
    if interior.size == 0:
        return
    # Estimate the body's size from its area so holes scale with it.
    body_radius = math.sqrt(interior.size / math.pi)
    for _ in range(int(rng.integers(1, 7))):
        cy, cx = divmod(int(interior[rng.integers(interior.size)]), width)
        radius = body_radius * rng.uniform(0.05, 0.3)
        if rng.uniform() < 0.5:
            rb, theta = radius * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi)
            result = _ellipse_signed_distance(height, width, cx, cy, radius, rb, theta)
        else:
            result = _polygon_signed_distance(height, width, cx, cy, *_random_convex_polygon(rng, radius))
        if result is None:
            continue
        window, signed_distance = result
        region = body[window.rows, window.cols]
        region *= 1.0 - _coverage(signed_distance, 1.0)


def _draw_soft_region(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """Semi-transparent region, "smoke" or "glass". Returns ((H, W) float32 alpha, kind)."""
    alpha = np.zeros((height, width), dtype=np.float32)
    size = min(height, width)
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    radius = size * rng.uniform(0.15, 0.4)
    if rng.uniform() < 0.5:
        # Fuzzy envelope (edges fade over many pixels) times a low-frequency density field.
        fuzziness = rng.uniform(4.0, 0.5 * radius + 4.0)
        rb, theta = radius * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)
        result = _blob_signed_distance(rng, height, width, cx, cy, radius, rb, theta, 0.3, fuzziness / 2)
        if result is None:
            return alpha, "smoke"
        window, signed_distance = result
        win_h, win_w = window.shape
        envelope = _coverage(signed_distance, fuzziness)
        density = _unit_noise(rng, win_h, win_w, rng.uniform(2.0, 6.0) * max(win_h, win_w) / radius, 4)
        density *= 0.6
        density += 0.2
        alpha[window.rows, window.cols] = envelope * density * np.float32(rng.uniform(0.7, 1.0))
        return alpha, "smoke"
    if rng.uniform() < 0.5:
        result = _polygon_signed_distance(height, width, cx, cy, *_random_convex_polygon(rng, radius))
    else:
        rb, theta = radius * rng.uniform(0.4, 1.0), rng.uniform(0, math.pi)
        result = _ellipse_signed_distance(height, width, cx, cy, radius, rb, theta)
    if result is None:
        return alpha, "glass"
    window, signed_distance = result
    win_h, win_w = window.shape
    base = rng.uniform(0.15, 0.6)
    # Glass: translucent interior, denser rim (light refracted at the edge), slight waviness.
    rim = np.clip(1.0 + signed_distance * np.float32(1.0 / rng.uniform(2.0, 8.0)), 0.0, 1.0)
    opacity = np.float32(base) + rim * np.float32(rng.uniform(0.1, 0.9 - base))
    opacity += smooth_noise(rng, win_h, win_w, rng.uniform(2.0, 5.0))[0] * np.float32(0.05)
    alpha[window.rows, window.cols] = _coverage(signed_distance, 1.0) * np.clip(opacity, 0.05, 0.95)
    return alpha, "glass"


def _draw_net(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Thin (warped) grid lines - a net, lace or fence - inside a large region. (H, W) float32."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    period = max(3.0, rng.uniform(6.0, 30.0) * max(height, width) / 320)
    line_width = rng.uniform(0.6, max(0.6, min(3.0, period / 3)))
    warp = smooth_noise(rng, height, width, rng.uniform(1.0, 3.0), channels=2)
    warp *= np.float32(rng.uniform(0.0, 0.6))
    net = np.zeros((height, width), dtype=np.float32)
    theta = rng.uniform(0, math.pi)
    for angle, warp_field in ((theta, warp[0]), (theta + rng.uniform(0.35, 0.65) * math.pi, warp[1])):
        u = (math.cos(angle) / period) * xs + (math.sin(angle) / period) * ys + warp_field
        distance = np.abs(u - np.floor(u) - 0.5) * np.float32(period)  # px to the nearest line
        np.maximum(net, np.clip(line_width * 0.5 + 0.5 - distance, 0.0, 1.0), out=net)
    region = _polygon_signed_distance(
        height, width, rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height,
        *_random_convex_polygon(rng, min(height, width) * rng.uniform(0.3, 0.7)),
    )
    mask = np.zeros((height, width), dtype=np.float32)
    if region is not None:
        mask[region[0].rows, region[0].cols] = _coverage(region[1], 1.0)
    return net * mask


def generate_foreground(
    rng: np.random.Generator, height: int, width: int, background_colour: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A foreground object with its alpha matte.

    Layers (each present at random, at least one always): a solid body (portrait / blob /
    polygons / ellipses) with holes, hair or fur growing from it, a smoke or glass region and a
    net. Alphas are combined as ``1 - prod(1 - alpha_i)``; colours are per-layer base colours
    on a shared texture, mixed by layer coverage.

    Args:
        rng: random source.
        height, width: canvas size.
        background_colour: (3,) dominant background colour to stay away from (or, sometimes,
            deliberately close to); None for no constraint.

    Returns:
        fg: (3, H, W) float32 in [0, 1] (channels-first), defined everywhere;
        alpha: (H, W) float32 in [0, 1].
    """
    scale = max(height, width) / 320
    # (alpha, base colour, luminance texture strength) per layer.
    layers: list[tuple[np.ndarray, np.ndarray, float]] = []
    body_colour = _foreground_colour(rng, background_colour)
    brightness = None

    has_body = rng.uniform() < 0.9
    if has_body:
        body, body_kind = _draw_body(rng, height, width)
        hair_prob = {"portrait": 0.9, "blob": 0.7, "polygons": 0.25, "ellipses": 0.4}[body_kind]
        if rng.uniform() < hair_prob:
            # Grown before the holes are cut so that hair roots lie on the outer outline only.
            style = "hair" if (body_kind == "portrait" or rng.uniform() < 0.5) else "fur"
            hair = _draw_hair(rng, body, scale, style)
            if hair is not None:
                hair_alpha, brightness = hair
                hair_colour = body_colour * np.float32(rng.uniform(0.6, 1.3)) + rng.normal(0, 0.08, 3)
                layers.append((hair_alpha, np.clip(hair_colour, 0, 1).astype(np.float32), 0.1))
        if rng.uniform() < (0.25 if body_kind == "portrait" else 0.45):
            _cut_holes(rng, body)
        layers.insert(0, (body, body_colour, rng.uniform(0.05, 0.25)))
    if not has_body or rng.uniform() < 0.3:
        soft_alpha, soft_kind = _draw_soft_region(rng, height, width)
        soft_colour = _random_colour(rng)
        if soft_kind == "glass":
            soft_colour = np.float32(0.6) + np.float32(0.4) * soft_colour  # pale tint
        layers.append((soft_alpha, soft_colour, 0.1))
    if rng.uniform() < (0.5 if not has_body else 0.12):
        layers.append((_draw_net(rng, height, width), _foreground_colour(rng, background_colour), 0.1))

    # Union of the layers' alphas; colour = coverage-weighted mix of the layers' colours (the
    # first layer's colour where nothing covers), times a shared luminance field.
    if len(layers) == 1:
        alpha = layers[0][0]
        weights = [None]
        texture_strength: np.ndarray | float = layers[0][2]
    else:
        transparency = 1.0 - layers[0][0]
        weight_sum = layers[0][0] + np.float32(1e-3)
        for layer_alpha, _, _ in layers[1:]:
            transparency *= 1.0 - layer_alpha
            weight_sum += layer_alpha
        alpha = 1.0 - transparency
        inv_weight_sum = 1.0 / weight_sum
        weights = [layer_alpha * inv_weight_sum for layer_alpha, _, _ in layers]
        weights[0] += np.float32(1e-3) * inv_weight_sum
        texture_strength = sum(weight * np.float32(layer[2]) for weight, layer in zip(weights, layers))

    # Luminance: material texture / shading, per-strand brightness (individual hairs stay
    # visible inside the hair mass) and grain.
    shading = fractal_noise(rng, height, width, rng.uniform(2.0, 24.0), 4, rng.uniform(0.4, 0.7))[0]
    shading *= texture_strength
    shading += 1.0
    if brightness is not None:
        shading *= brightness
    _add_grain(rng, shading, 0.025)
    fg = layers[0][1][:, None, None] * (shading if weights[0] is None else shading * weights[0])[None]
    for weight, (_, colour, _) in zip(weights[1:], layers[1:]):
        fg += colour[:, None, None] * (shading * weight)[None]
    if rng.uniform() < 0.5:  # gentle colour drift
        colour_drift = smooth_noise(rng, height, width, rng.uniform(1.0, 4.0), channels=3)
        colour_drift *= np.float32(rng.uniform(0.0, 0.06))
        fg += colour_drift
    np.clip(fg, 0.0, 1.0, out=fg)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    return fg, alpha


# --------------------------------------------------------------------------------------------
# Public sources and datasets
# --------------------------------------------------------------------------------------------
def _to_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> contiguous (H, W, C) (np.stack is ~3x faster than a transposed copy)."""
    return np.stack(list(image), axis=-1)


def _hwc_view(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) view without copying (numpy ufuncs keep the CHW memory order)."""
    return image.transpose(1, 2, 0)


class SyntheticMattingSource:
    """Deterministic generator of (fg, alpha, bg) triplets.

    A sample is a pure function of ``(seed, split, index, size)``; splits never share samples.

    Args:
        seed: dataset seed.
        size: default canvas size, an int (square) or (height, width).
    """

    def __init__(self, seed: int = 0, size: tuple[int, int] | int = 320) -> None:
        self.seed = int(seed)
        self.size = _as_hw(size)

    def rng(self, split: str, index: int, *stream: int) -> np.random.Generator:
        """The generator for sample ``index`` of ``split`` (extra ints select side streams)."""
        return np.random.default_rng([self.seed, split_id(split), int(index), *stream])

    def sample(
        self, split: str, index: int, size: tuple[int, int] | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generate one sample.

        Args:
            split: "train" | "val" | "test".
            index: sample index (>= 0).
            size: canvas (height, width) or int; defaults to the source's size.

        Returns:
            fg: (H, W, 3) float32 in [0, 1]; alpha: (H, W) float32 in [0, 1];
            bg: (H, W, 3) float32 in [0, 1].
        """
        fg, alpha, bg = self.sample_chw(split, index, size)
        return _to_hwc(fg), alpha, _to_hwc(bg)

    def sample_chw(
        self, split: str, index: int, size: tuple[int, int] | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same sample as :meth:`sample` in channels-first layout (no layout conversion cost).

        Returns:
            fg: (3, H, W) float32; alpha: (H, W) float32; bg: (3, H, W) float32; all in [0, 1].
        """
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        height, width = _as_hw(size) if size is not None else self.size
        rng = self.rng(split, index)
        bg, bg_colour = generate_background(rng, height, width)
        fg, alpha = generate_foreground(rng, height, width, bg_colour)
        return fg, alpha, bg


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W) -> (1, H, W) or (H, W, C) -> (C, H, W) float32 tensor (owns its memory).

    HWC views of channels-first memory (see ``_hwc_view``) become a cheap contiguous copy.
    """
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))


def merge_foregrounds(
    fg: np.ndarray, alpha: np.ndarray, fg_over: np.ndarray, alpha_over: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Layer a second foreground over a first (ViTMatte / GCA "composite two foregrounds").

    ``alpha = 1 - (1 - alpha) * (1 - alpha_over)``; the colour is the exact "over" operator
    unpremultiplied, ``(alpha_over * fg_over + (1 - alpha_over) * alpha * fg) / alpha``, so the
    result composites onto any background exactly like the two layers stacked (ViTMatte's
    ``fg * a + fg2 * (1 - a)`` is an approximation of this). Where the merged alpha is 0 the
    colour is the first foreground's.

    Args:
        fg, fg_over: (H, W, 3) float32 in [0, 1]; alpha, alpha_over: (H, W) float32 in [0, 1].

    Returns:
        (merged fg (H, W, 3) float32, merged alpha (H, W) float32).
    """
    merged_alpha = 1.0 - (1.0 - alpha) * (1.0 - alpha_over)
    weight_over = alpha_over / np.maximum(merged_alpha, 1e-6)
    weight_under = (1.0 - alpha_over) * alpha / np.maximum(merged_alpha, 1e-6)
    merged_fg = weight_over[..., None] * fg_over + weight_under[..., None] * fg
    empty = merged_alpha <= 1e-6
    merged_fg[empty] = fg[empty]
    return np.clip(merged_fg, 0.0, 1.0).astype(np.float32), merged_alpha.astype(np.float32)


class SyntheticMattingTrainSet(Dataset):
    """Training samples: synthetic composites with random trimaps, cropped around unknown pixels.

    Per sample: generate (fg, alpha, bg) at ``max(image_size, crop_size)`` (synthetic data can
    be rendered at any size, so the crop never needs padding), with probability ``merge_prob``
    layer a second foreground over the first, draw a trimap with :func:`trimap_from_alpha`,
    crop with :func:`crop_around_unknown` and composite. Deterministic in ``(seed, index)``.

    Args:
        num_samples: dataset length.
        seed: dataset seed.
        image_size: side of the generated canvas.
        crop_size: side of the returned crop (512 as in ViTMatte; e.g. 128 on CPU).
        merge_prob: probability of merging a second foreground.
        raw_layers: return the raw (fg, alpha, bg) canvas instead, and leave merge, affine,
            trimap, crop, jitter and composite to the batch augmentation
            (:class:`mematte.data.augment.MattingAugment`, ``data=synthetic_augment``): the
            pipeline real foregrounds go through.

    Returns (``__getitem__``): dict with "image", "fg", "bg" (3, crop, crop) float32 in [0, 1],
    "alpha" (1, crop, crop) float32 in [0, 1], "trimap" (1, crop, crop) float32 in {0, 0.5, 1},
    "name" str ("synthetic_train_00042"). With ``raw_layers``: "fg", "bg" (3, S, S),
    "alpha" (1, S, S) and "name", S = ``image_size``.
    """

    split = "train"

    def __init__(
        self,
        num_samples: int = 2000,
        seed: int = 0,
        image_size: int = 320,
        crop_size: int = 512,
        merge_prob: float = 0.5,
        raw_layers: bool = False,
    ) -> None:
        if num_samples < 1 or image_size < 1 or crop_size < 1:
            raise ValueError("num_samples, image_size and crop_size must be >= 1")
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.crop_size = int(crop_size)
        self.merge_prob = float(merge_prob)
        self.raw_layers = bool(raw_layers)
        self.source = SyntheticMattingSource(seed, max(self.image_size, self.crop_size))

    @property
    def needs_augment(self) -> bool:
        """Raw layers must go through the batch augmentation (the data module checks)."""
        return self.raw_layers

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        fg, alpha, bg = self.source.sample_chw(self.split, index)
        name = f"synthetic_{self.split}_{index:05d}"
        if self.raw_layers:
            return {"fg": _to_tensor(_hwc_view(fg)), "alpha": _to_tensor(alpha),
                    "bg": _to_tensor(_hwc_view(bg)), "name": name}
        fg, bg = _hwc_view(fg), _hwc_view(bg)
        rng = self.source.rng(self.split, index, _STREAM_AUGMENT)
        if rng.uniform() < self.merge_prob:
            height, width = alpha.shape
            fg_over, alpha_over = generate_foreground(rng, height, width)
            fg, alpha = merge_foregrounds(fg, alpha, _hwc_view(fg_over), alpha_over)
        trimap = trimap_from_alpha(alpha, rng)
        arrays = {"fg": fg, "bg": bg, "alpha": alpha, "trimap": trimap}
        crop = crop_around_unknown(arrays, trimap, self.crop_size, rng)
        image = composite(crop["fg"], crop["bg"], crop["alpha"])
        return {
            "image": _to_tensor(image),
            "alpha": _to_tensor(crop["alpha"]),
            "trimap": _to_tensor(crop["trimap"]),
            "fg": _to_tensor(crop["fg"]),
            "bg": _to_tensor(crop["bg"]),
            "name": name,
        }


class SyntheticMattingEvalSet(Dataset):
    """Validation / test samples: full-size composites with a fixed trimap per sample.

    Height and width are drawn per sample from ``[min_size, max_size]`` and are deliberately
    usually *not* multiples of 32 (about 15% are snapped to one, so both paths of the model's
    padding are exercised). Everything is deterministic in ``(seed, split, index)``.

    Args:
        split: "val" | "test".
        num_samples: dataset length.
        seed: dataset seed.
        min_size, max_size: inclusive range of each image side.
        return_fg_bg: also return "fg" / "bg" (off by default: the eval contract has none;
            useful to export them with :func:`write_folder_dataset`).

    Returns (``__getitem__``): dict with "image" (3, H, W) float32 in [0, 1], "alpha"
    (1, H, W) float32 in [0, 1], "trimap" (1, H, W) float32 in {0, 0.5, 1}, "name" str
    ("synthetic_test_00007").
    """

    def __init__(
        self,
        split: str = "val",
        num_samples: int = 50,
        seed: int = 0,
        min_size: int = 200,
        max_size: int = 360,
        return_fg_bg: bool = False,
    ) -> None:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.split = split
        self.num_samples = int(num_samples)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.return_fg_bg = return_fg_bg
        self.source = SyntheticMattingSource(seed)

    def __len__(self) -> int:
        return self.num_samples

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of sample ``index`` (cheap: no image is generated)."""
        rng = self.source.rng(self.split, index, _STREAM_SIZE)
        sides = []
        for _ in range(2):
            side = int(rng.integers(self.min_size, self.max_size + 1))
            snapped = (side // 32) * 32
            if rng.uniform() < 0.15 and snapped >= self.min_size:
                side = snapped
            sides.append(side)
        return sides[0], sides[1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        fg, alpha, bg = self.source.sample_chw(self.split, index, self.image_size(index))
        fg, bg = _hwc_view(fg), _hwc_view(bg)
        trimap = trimap_from_alpha(alpha, self.source.rng(self.split, index, _STREAM_TRIMAP))
        sample: dict[str, torch.Tensor | str] = {
            "image": _to_tensor(composite(fg, bg, alpha)),
            "alpha": _to_tensor(alpha),
            "trimap": _to_tensor(trimap),
            "name": f"synthetic_{self.split}_{index:05d}",
        }
        if self.return_fg_bg:
            sample["fg"], sample["bg"] = _to_tensor(fg), _to_tensor(bg)
        return sample


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) or (H, W) uint8.

    Uses the metrics' quantiser so files on disk round exactly as predictions are scored.
    """
    array = to_uint8(tensor.detach().cpu().float().numpy())
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def write_folder_dataset(dataset: Dataset, root: str | Path, with_fg_bg: bool = False) -> int:
    """Write a dataset in the "folder" layout and return the number of samples written.

    Layout: ``root/image/<name>.png`` (RGB), ``root/alpha/<name>.png`` (8-bit gray),
    ``root/trimap/<name>.png`` (8-bit, values 0/128/255) and, if ``with_fg_bg`` and the
    samples have them, ``root/fg/<name>.png`` and ``root/bg/<name>.png``. Every file is
    written atomically.

    Args:
        dataset: map-style dataset returning the project's sample dicts.
        root: output folder (created).
        with_fg_bg: also write foreground / background colours when available.
    """
    root = Path(root)
    folders = ["image", "alpha", "trimap"] + (["fg", "bg"] if with_fg_bg else [])
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        sample = dataset[index]
        name = sample["name"]
        write_png(root / "image" / f"{name}.png", _to_uint8(sample["image"]))
        write_png(root / "alpha" / f"{name}.png", _to_uint8(sample["alpha"]))
        write_png(root / "trimap" / f"{name}.png", trimap_to_uint8(sample["trimap"][0].numpy()))
        if with_fg_bg:
            for key in ("fg", "bg"):
                if key in sample:
                    write_png(root / key / f"{name}.png", _to_uint8(sample[key]))
    return len(dataset)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write a synthetic split in the folder layout."""
    parser = argparse.ArgumentParser(
        prog="python -m mematte.data.synthetic",
        description="Write synthetic matting samples (image/alpha/trimap PNGs) in the folder layout.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--split", default="test", choices=["val", "test"], help="split to write")
    parser.add_argument("--num", type=int, default=20, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--min-size", type=int, default=200, help="smallest image side")
    parser.add_argument("--max-size", type=int, default=360, help="largest image side")
    parser.add_argument("--with-fg-bg", action="store_true", help="also write fg/ and bg/")
    args = parser.parse_args(argv)
    dataset = SyntheticMattingEvalSet(
        args.split, args.num, args.seed, args.min_size, args.max_size, return_fg_bg=args.with_fg_bg
    )
    count = write_folder_dataset(dataset, args.out, with_fg_bg=args.with_fg_bg)
    folders = "image, alpha, trimap" + (", fg, bg" if args.with_fg_bg else "")
    print(f"wrote {count} {args.split} samples (seed {args.seed}) to {args.out} ({folders})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
