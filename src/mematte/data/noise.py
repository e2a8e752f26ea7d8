"""Smooth and multi-octave value noise for the synthetic data (textures, smoke, backgrounds).

Random values on a coarse control grid, evaluated at every pixel as a uniform cubic B-spline
(C2-smooth, no grid artefacts). The spline is written as two small matrix products, one per
axis, which on one core is much faster than general interpolation routines; a B-spline is also
not what ``cv2.resize`` / ``torch.nn.functional.interpolate`` compute (their cubic kernels
interpolate the control values and overshoot; the B-spline smooths them).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["smooth_noise", "fractal_noise", "unit_noise"]

# std of a cubic-B-spline-upsampled grid of unit-variance values is ~0.48 (0.69 per axis);
# multiplying by this brings smooth_noise back to roughly unit variance without a full-size
# reduction.
_BSPLINE_STD_CORRECTION = 2.1


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


def unit_noise(
    rng: np.random.Generator, height: int, width: int, cells: float, octaves: int
) -> np.ndarray:
    """(height, width) float32 fractal noise squashed to [0, 1] (mean ~0.5)."""
    noise = fractal_noise(rng, height, width, cells, octaves, rng.uniform(0.4, 0.65))[0]
    noise *= 0.22
    noise += 0.5
    return np.clip(noise, 0.0, 1.0, out=noise)

