"""Strands (hair, fur, grass) for the synthetic foregrounds: vectorised random-walk curves
splatted with bilinear weights, giving anti-aliased partial coverage down to 0.25 px wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["draw_hair"]


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


def draw_hair(
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

