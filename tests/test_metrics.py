"""Tests of the DIM-MATLAB-compatible matting metrics on maps small enough to work out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mematte.metrics import (
    MSE,
    SAD,
    Conn,
    Grad,
    MattingMetrics,
    connectivity_error,
    gaussian_derivative_filters,
    gradient_error,
    mse,
    region_mask,
    sad,
    to_uint8,
)

PER_IMAGE_FUNCTIONS = (sad, mse, gradient_error, connectivity_error)


def _band_trimap(height: int, width: int, col_start: int, col_stop: int) -> np.ndarray:
    """uint8 (H, W): background left, unknown columns [col_start, col_stop), foreground right."""
    trimap = np.zeros((height, width), dtype=np.uint8)
    trimap[:, col_start:col_stop] = 128
    trimap[:, col_stop:] = 255
    return trimap


def _step(height: int, width: int, edge_col: int, high: int = 255) -> np.ndarray:
    """uint8 (H, W): 0 left of ``edge_col``, ``high`` from it on."""
    image = np.zeros((height, width), dtype=np.uint8)
    image[:, edge_col:] = high
    return image


def _smooth_alpha(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W): a blurred random blob, so all metrics see edges and partial alpha."""
    rng = np.random.default_rng(seed)
    alpha = ndimage.gaussian_filter(rng.random((height, width)), 2.0)
    alpha = (alpha - alpha.min()) / (alpha.max() - alpha.min())
    return to_uint8(alpha)


# ---------------------------------------------------------------------------------------------
# Quantisation and regions
# ---------------------------------------------------------------------------------------------
def test_to_uint8_rounds_half_up_and_clips() -> None:
    values = np.array([0.0, 0.5, 1.0, 2.0 / 255, -0.1, 1.3, 0.5 / 255], dtype=np.float32)
    assert to_uint8(values).tolist() == [0, 128, 255, 2, 0, 255, 1]
    exact = np.arange(256, dtype=np.float32) / 255
    assert np.array_equal(to_uint8(exact), np.arange(256))


def test_region_mask() -> None:
    trimap = np.array([[0, 128, 255]], dtype=np.uint8)
    assert region_mask(trimap, "unknown").tolist() == [[False, True, False]]
    assert region_mask(trimap, "all").all()
    with pytest.raises(ValueError, match="everything"):
        region_mask(trimap, "everything")


# ---------------------------------------------------------------------------------------------
# SAD / MSE
# ---------------------------------------------------------------------------------------------
def test_perfect_prediction_is_zero_for_every_metric() -> None:
    gt = _smooth_alpha(32, 40)
    trimap = _band_trimap(32, 40, 10, 30)
    for region in ("unknown", "all"):
        mask = region_mask(trimap, region)
        for metric in PER_IMAGE_FUNCTIONS:
            assert metric(gt, gt.copy(), mask) == 0.0, (metric.__name__, region)


@pytest.mark.parametrize("offset", [1, 7, 40])
def test_constant_offset_sad_and_mse(offset: int) -> None:
    height, width = 16, 30
    gt = np.full((height, width), 100, dtype=np.uint8)
    pred = gt + np.uint8(offset)
    trimap = _band_trimap(height, width, 10, 20)  # |U| = 16 * 10 = 160
    unknown = region_mask(trimap, "unknown")
    assert unknown.sum() == 160

    assert sad(pred, gt, unknown) == pytest.approx(160 * offset / 255 / 1000, rel=1e-12)
    assert mse(pred, gt, unknown) == pytest.approx((offset / 255) ** 2, rel=1e-12)

    everything = region_mask(trimap, "all")
    assert sad(pred, gt, everything) == pytest.approx(height * width * offset / 255 / 1000, rel=1e-12)
    # MSE is a mean, so the region size cancels for a constant error.
    assert mse(pred, gt, everything) == pytest.approx((offset / 255) ** 2, rel=1e-12)


def test_errors_outside_the_region_are_ignored() -> None:
    gt = np.zeros((8, 12), dtype=np.uint8)
    pred = gt.copy()
    pred[:, :4] = 255  # error only in the known background
    trimap = _band_trimap(8, 12, 4, 8)
    unknown = region_mask(trimap, "unknown")
    assert sad(pred, gt, unknown) == 0.0
    assert sad(pred, gt, region_mask(trimap, "all")) == pytest.approx(32 / 1000)


def test_mse_of_empty_region_is_zero() -> None:
    gt = np.zeros((4, 4), dtype=np.uint8)
    assert mse(gt + 3, gt, np.zeros((4, 4), dtype=bool)) == 0.0


# ---------------------------------------------------------------------------------------------
# Grad
# ---------------------------------------------------------------------------------------------
def test_gradient_filter_matches_matlab_gaussgradient() -> None:
    hx, hy = gaussian_derivative_filters(1.4)
    # halfsize = ceil(1.4 * sqrt(-2 ln(sqrt(2π) * 1.4 * 0.01))) = 4
    assert hx.shape == (9, 9)
    assert np.sqrt((hx**2).sum()) == pytest.approx(1.0, abs=1e-12)
    assert np.array_equal(hy, hx.T)
    assert np.linalg.matrix_rank(hx) == 1  # separable: G(i) * G'(j)
    np.testing.assert_allclose(hx[:, ::-1], -hx, atol=1e-15)  # odd in x
    np.testing.assert_allclose(hx[::-1, :], hx, atol=1e-15)  # even in y
    assert np.all(hx[:, 4] == 0)

    def gauss(x: float) -> float:
        return math.exp(-(x**2) / (2 * 1.4**2)) / (1.4 * math.sqrt(2 * math.pi))

    # Ratios are free of the normalisation: hx(i, j) ∝ G(i) * (-j G(j) / σ²).
    assert hx[4, 5] / hx[4, 6] == pytest.approx((1 * gauss(1)) / (2 * gauss(2)), rel=1e-12)
    assert hx[3, 5] / hx[4, 5] == pytest.approx(gauss(1) / gauss(0), rel=1e-12)


def test_gradient_error_matches_direct_2d_filtering() -> None:
    """The separable fast path equals imfilter(mat2gray(x), hx, 'replicate', 'conv')."""
    pred, gt = _smooth_alpha(37, 29, seed=1), _smooth_alpha(37, 29, seed=2)
    mask = np.ones_like(pred, dtype=bool)
    hx, hy = gaussian_derivative_filters()

    def magnitude(image: np.ndarray) -> np.ndarray:
        normalised = (image - image.min()) / float(image.max() - image.min())
        gx = ndimage.convolve(normalised, hx, mode="nearest")
        gy = ndimage.convolve(normalised, hy, mode="nearest")
        return np.sqrt(gx**2 + gy**2).astype(np.float32)

    expected = float(((magnitude(pred) - magnitude(gt)) ** 2).sum(dtype=np.float64)) / 1000
    assert gradient_error(pred, gt, mask) == pytest.approx(expected, rel=1e-6)


def test_gradient_error_on_step_edges() -> None:
    height, width = 20, 24
    gt = _step(height, width, 12)
    unknown = region_mask(_band_trimap(height, width, 6, 18), "unknown")

    assert gradient_error(gt, gt.copy(), unknown) == 0.0
    assert gradient_error(_step(height, width, 14), gt, unknown) > 0.0
    # mat2gray maps both steps to 0/1, so a half-height step is "perfect" (a /255 scaling
    # would halve the predicted gradient and give a clearly positive error).
    half_height = to_uint8(0.5 * gt.astype(np.float32) / 255)
    assert half_height.max() == 128
    assert gradient_error(half_height, gt, unknown) == 0.0
    # A constant map has no gradient: the error is Σ_U |∇g|², finite.
    flat = np.full_like(gt, 77)
    value = gradient_error(flat, gt, unknown)
    assert math.isfinite(value) and value > 0.0


# ---------------------------------------------------------------------------------------------
# Conn
# ---------------------------------------------------------------------------------------------
def _everywhere(image: np.ndarray) -> np.ndarray:
    return np.ones(image.shape, dtype=bool)


def test_connectivity_simple_row() -> None:
    # Ω = pixels 0, 1 at every threshold (l = 1 there); pixels 2, 3 get l = 0.
    # Pixel 2: φ_p = 1 - 1 = 0, φ_g = 1 - 0 = 1 -> 1. Pixel 3: both 0 -> 0.
    gt = np.array([[255, 255, 0, 0]], dtype=np.uint8)
    pred = np.array([[255, 255, 255, 0]], dtype=np.uint8)
    assert connectivity_error(pred, gt, _everywhere(gt)) == pytest.approx(1.0 / 1000, rel=1e-6)


def test_connectivity_ramp_uses_float32_thresholds() -> None:
    # g = 0, .2, .4, .6, .8, 1 and p = 1: pixel with value v stays in Ω while t <= v, so
    # l = v exactly (153/255 >= float32 0.6 etc.) and φ_g = 1. φ_p = 1 - (1 - l) unless
    # 1 - l < 0.15: |φ_p - φ_g| = 1, .8, .6, .4, .2, 0 -> 3.0.
    gt = np.array([[0, 51, 102, 153, 204, 255]], dtype=np.uint8)
    pred = np.full_like(gt, 255)
    assert connectivity_error(pred, gt, _everywhere(gt)) == pytest.approx(3.0 / 1000, rel=1e-6)


def test_connectivity_non_largest_component_is_disconnected() -> None:
    # Block of 4 at the top-left, and pixel (2, 2) touching it only diagonally: with
    # 4-connectivity it is a separate, smaller component, so it leaves Ω at t = 0.1, l = 0.
    # φ_p = 1 (d = 26/255 < 0.15), φ_g = 1 - 0.8 = 0.2 -> 0.8. (Treated as connected it would
    # get l = 0.1 and give 0.7.)
    gt = np.array([[255, 255, 0], [255, 255, 0], [0, 0, 204]], dtype=np.uint8)
    pred = np.array([[255, 255, 0], [255, 255, 0], [0, 0, 26]], dtype=np.uint8)
    assert connectivity_error(pred, gt, _everywhere(gt)) == pytest.approx(0.8 / 1000, rel=1e-6)


def test_connectivity_uses_foreground_components_only() -> None:
    # Background (3 px) is larger than the foreground (2 px); Ω must still be the foreground.
    # Pixel 3 (p = 1, g = 0.8): l = 0.8, φ_p = 0.8, φ_g = 1 -> 0.2.
    # Pixel 4 (p = 153 = 0.6, g = 179): l = 0.6 (needs 153/255 >= t_6), φ_p = 1,
    # φ_g = 1 (d = 0.102 < 0.15) -> 0. Total 0.2.
    # (Ω = background would give 0.302; a t_6 above 0.6 would give 0.402.)
    gt = np.array([[0, 0, 0, 204, 179]], dtype=np.uint8)
    pred = np.array([[0, 0, 0, 255, 153]], dtype=np.uint8)
    assert connectivity_error(pred, gt, _everywhere(gt)) == pytest.approx(0.2 / 1000, rel=1e-5)


def test_connectivity_tie_goes_to_first_component_in_column_major_order() -> None:
    # Two 1-pixel components at t = 0.1: A = (0, 2) and B = (2, 0). MATLAB's max over
    # bwconncomp's column-major list picks B, so A gets l = 0: φ_p = 1 (d = 0.102),
    # φ_g = 0 -> 1; B stays in Ω (l = 1) -> 0. Total 1.0 (row-major order would give 0.9).
    gt = np.array([[0, 0, 255], [0, 0, 0], [255, 0, 0]], dtype=np.uint8)
    pred = np.array([[0, 0, 26], [0, 0, 0], [255, 0, 0]], dtype=np.uint8)
    assert connectivity_error(pred, gt, _everywhere(gt)) == pytest.approx(1.0 / 1000, rel=1e-6)


def test_connectivity_only_sums_over_the_region() -> None:
    gt = np.array([[255, 255, 0, 0]], dtype=np.uint8)
    pred = np.array([[255, 255, 255, 0]], dtype=np.uint8)
    assert connectivity_error(pred, gt, np.array([[True, True, False, True]])) == 0.0
    assert connectivity_error(pred, gt, np.array([[False, False, True, False]])) == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------
# torchmetrics classes
# ---------------------------------------------------------------------------------------------
def _batch(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W) maps -> float (B, 1, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images)[:, None].astype(np.float32) / 255)


@pytest.mark.parametrize(
    ("metric_cls", "function", "scale"),
    [(SAD, sad, 1.0), (MSE, mse, 1000.0), (Grad, gradient_error, 1.0), (Conn, connectivity_error, 1.0)],
)
@pytest.mark.parametrize("region", ["unknown", "all"])
def test_metric_accumulates_mean_over_images_of_any_size(metric_cls, function, scale, region) -> None:
    first_gt = [_smooth_alpha(24, 32, seed=s) for s in (0, 1)]
    first_pred = [_smooth_alpha(24, 32, seed=s) for s in (2, 3)]
    first_trimap = [_band_trimap(24, 32, 8, 20)] * 2
    second_gt, second_pred = [_smooth_alpha(17, 21, seed=4)], [_smooth_alpha(17, 21, seed=5)]
    second_trimap = [_band_trimap(17, 21, 5, 15)]

    metric = metric_cls(region=region)
    metric.update(_batch(first_pred), _batch(first_gt), _batch(first_trimap))
    metric.update(_batch(second_pred), _batch(second_gt), _batch(second_trimap))

    per_image = [
        function(p, g, region_mask(t, region)) * scale
        for p, g, t in zip(first_pred + second_pred, first_gt + second_gt, first_trimap + second_trimap)
    ]
    assert metric.compute().item() == pytest.approx(float(np.mean(per_image)), rel=1e-9)
    assert metric.count.item() == 3

    metric.reset()
    assert metric.count.item() == 0 and metric.total.item() == 0.0


def test_mse_metric_reports_times_1000() -> None:
    gt = np.full((6, 6), 50, dtype=np.uint8)
    metric = MSE()
    metric.update(_batch([gt + 10]), _batch([gt]), _batch([_band_trimap(6, 6, 2, 4)]))
    assert metric.compute().item() == pytest.approx((10 / 255) ** 2 * 1000, rel=1e-9)


@pytest.mark.parametrize("metric_cls", [SAD, MSE, Grad, Conn, MattingMetrics])
def test_bad_region_raises(metric_cls) -> None:
    with pytest.raises(ValueError, match="trimap"):
        metric_cls(region="trimap")


def test_bad_region_message_names_value_and_choices() -> None:
    with pytest.raises(ValueError) as excinfo:
        SAD(region="Unknown")
    message = str(excinfo.value)
    assert "'Unknown'" in message and "'unknown'" in message and "'all'" in message


def test_update_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        SAD().update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 4, 4))


def test_matting_metrics_collection_keeps_metrics_separate() -> None:
    """A perfect first batch leaves all states equal; the metrics must not be merged then."""
    gt = _smooth_alpha(16, 16, seed=0)
    pred = _smooth_alpha(16, 16, seed=1)
    trimap = _band_trimap(16, 16, 4, 12)

    collection = MattingMetrics(region="unknown")
    assert set(collection.keys()) == {"sad", "mse", "grad", "conn"}
    collection.update(_batch([gt]), _batch([gt]), _batch([trimap]))
    collection.update(_batch([pred]), _batch([gt]), _batch([trimap]))
    results = {name: value.item() for name, value in collection.compute().items()}

    mask = region_mask(trimap, "unknown")
    expected = {
        "sad": sad(pred, gt, mask) / 2,
        "mse": mse(pred, gt, mask) * 1000 / 2,
        "grad": gradient_error(pred, gt, mask) / 2,
        "conn": connectivity_error(pred, gt, mask) / 2,
    }
    assert results == pytest.approx(expected, rel=1e-9)
    assert len(set(results.values())) == 4
