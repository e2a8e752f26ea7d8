"""Alpha-matting evaluation metrics: SAD, MSE, Grad and Conn; routing statistics of MEMatte.

The per-image functions reproduce the MATLAB evaluation code released with Deep Image Matting
(Xu et al., 2017: ``compute_sad_loss.m``, ``compute_mse_loss.m``, ``compute_gradient_loss.m``,
``compute_connectivity_error.m``), which is what published matting numbers are computed with.
Everything is done on 8-bit quantised maps, exactly as when the MATLAB code reads PNG files:

* ``pred_u8``, ``gt_u8``: ``uint8`` arrays ``(H, W)``, alpha × 255.
* ``trimap_u8``: ``uint8`` array ``(H, W)`` with values in {0, 128, 255}; 128 is unknown.
* ``mask``: ``bool`` array ``(H, W)``, the evaluated region (see :func:`region_mask`).

Reported scales follow the papers: SAD, Grad and Conn are divided by 1000 inside their
functions (as in MATLAB); :func:`mse` returns the raw MATLAB value and the :class:`MSE` metric
reports it ×1000.

The torchmetrics classes take float tensors ``(B, 1, H, W)`` in [0, 1] (trimap in {0, 0.5, 1}),
quantise them and average the per-image values over every image seen (DDP-safe sum/count).

:class:`RoutingStats` summarises what MEMatte's routers do over a split (kept shares under
each inference rule, how decided the routers are, and whether kept tokens concentrate on the
trimap's unknown region).

Note on Conn: the widely copied Python port (GCA-Matting ``evaluate.py``) picks the largest
label *including the background*, which gives values several times off. Here Ω is the largest
4-connected *foreground* component, as in MATLAB's ``bwconncomp``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric, MetricCollection

from mematte.image_io import to_uint8  # the one 8-bit rule: what is saved is what is scored
from mematte.models.routed_block import argmax_rule, expected_rule

__all__ = [
    "REGIONS",
    "to_uint8",
    "region_mask",
    "sad",
    "mse",
    "gradient_error",
    "connectivity_error",
    "gaussian_derivative_filters",
    "SAD",
    "MSE",
    "Grad",
    "Conn",
    "MattingMetrics",
    "ROUTING_STATS",
    "RoutingStats",
]

REGIONS: tuple[str, ...] = ("unknown", "all")
"""Evaluated regions: ``"unknown"`` = trimap == 128 (DIM / Composition-1k), ``"all"`` = whole
image (Distinctions-646 convention)."""

_UNKNOWN_U8 = 128
_GRAD_SIGMA = 1.4
_CONN_NUM_STEPS = 10  # MATLAB default step 0.1 -> thresholds 0, 0.1, ..., 1
_CONN_PHI_MIN_DIST = 0.15  # distances below this count as "connected enough" (φ = 1)
# bwconncomp(..., 4): edge-adjacent pixels only.
_FOUR_CONNECTIVITY = ndimage.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------------------------
# Quantisation and regions
# --------------------------------------------------------------------------------------------
def _check_region(region: str) -> str:
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    return region


def region_mask(trimap_u8: np.ndarray, region: str = "unknown") -> np.ndarray:
    """Pixels an error is summed over.

    Args:
        trimap_u8: ``uint8`` array ``(H, W)`` with values in {0, 128, 255}.
        region: ``"unknown"`` (trimap == 128) or ``"all"`` (every pixel).

    Returns:
        ``bool`` array ``(H, W)``.
    """
    _check_region(region)
    trimap_u8 = np.asarray(trimap_u8)
    if region == "all":
        return np.ones(trimap_u8.shape, dtype=bool)
    return trimap_u8 == _UNKNOWN_U8


def _check_maps(pred_u8: np.ndarray, gt_u8: np.ndarray, mask: np.ndarray) -> None:
    if pred_u8.ndim != 2 or pred_u8.shape != gt_u8.shape or pred_u8.shape != mask.shape:
        raise ValueError(
            "expected 2-D pred, gt and mask of one shape, got "
            f"{pred_u8.shape}, {gt_u8.shape}, {mask.shape}"
        )


# --------------------------------------------------------------------------------------------
# SAD / MSE
# --------------------------------------------------------------------------------------------
def sad(pred_u8: np.ndarray, gt_u8: np.ndarray, mask: np.ndarray) -> float:
    """Sum of absolute differences over ``mask``, in thousands (``compute_sad_loss.m``).

    Args:
        pred_u8, gt_u8: ``uint8`` ``(H, W)``.
        mask: ``bool`` ``(H, W)``.

    Returns:
        ``Σ_mask |p − g| / 255 / 1000``.
    """
    _check_maps(pred_u8, gt_u8, mask)
    # Integer sums are exact; divide once at the end.
    abs_diff = np.abs(pred_u8.astype(np.int64) - gt_u8.astype(np.int64))
    return float(abs_diff[mask].sum()) / 255.0 / 1000.0


def mse(pred_u8: np.ndarray, gt_u8: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error over ``mask`` (``compute_mse_loss.m``; papers report it ×1000).

    Args:
        pred_u8, gt_u8: ``uint8`` ``(H, W)``.
        mask: ``bool`` ``(H, W)``.

    Returns:
        ``Σ_mask ((p − g) / 255)² / |mask|``; 0 for an empty mask (MATLAB would give NaN, which
        would poison a dataset mean).
    """
    _check_maps(pred_u8, gt_u8, mask)
    num_pixels = int(mask.sum())
    if num_pixels == 0:
        return 0.0
    diff = pred_u8.astype(np.int64) - gt_u8.astype(np.int64)
    return float((diff[mask] ** 2).sum()) / (255.0**2) / num_pixels


# --------------------------------------------------------------------------------------------
# Grad
# --------------------------------------------------------------------------------------------
def _gaussian_derivative_factors(sigma: float = _GRAD_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """1-D factors of MATLAB ``gaussgradient``'s kernel, each with unit L2 norm.

    ``hx(i, j) = G(i) · G'(j)`` is an outer product, and its Frobenius norm is
    ``‖G‖·‖G'‖``, so normalising each factor equals normalising ``hx``.

    Returns:
        ``(smooth, deriv)``: float64 arrays ``(2·halfsize + 1,)``; ``halfsize = 4`` for σ = 1.4.
    """
    epsilon = 1e-2
    halfsize = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon)))
    offsets = np.arange(-halfsize, halfsize + 1, dtype=np.float64)
    gauss = np.exp(-(offsets**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dgauss = -offsets * gauss / sigma**2
    return gauss / np.linalg.norm(gauss), dgauss / np.linalg.norm(dgauss)


def gaussian_derivative_filters(sigma: float = _GRAD_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D derivative-of-Gaussian kernels of MATLAB ``gaussgradient`` (for inspection/tests).

    Returns:
        ``(hx, hy)``: float64 ``(9, 9)`` for σ = 1.4, unit L2 norm; ``hx`` differentiates along
        columns (x), ``hy = hx.T`` along rows (y).
    """
    smooth, deriv = _gaussian_derivative_factors(sigma)
    hx = np.outer(smooth, deriv)
    return hx, hx.T.copy()


def _mat2gray(x: np.ndarray) -> np.ndarray:
    """MATLAB ``mat2gray``: min–max normalise to [0, 1] (float64 ``(H, W)``).

    A constant map becomes zeros rather than dividing by zero; only its gradient (0) is used.
    """
    x = x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros_like(x)
    x -= lo
    x *= 1.0 / (hi - lo)
    return x


def _column_passes(
    x: np.ndarray, smooth: np.ndarray, deriv: np.ndarray, block_bytes: int = 1 << 18
) -> tuple[np.ndarray, np.ndarray]:
    """Convolve every column of ``x`` with ``smooth`` and with ``deriv``, replicate border.

    Equals ``ndimage.convolve1d(x, k, axis=0, mode="nearest")`` for both kernels (to rounding),
    about 4× faster on large images: scipy's axis-0 pass walks memory with a large stride,
    whereas here blocks of whole rows that fit in cache are combined, and the kernels'
    symmetry (``smooth`` even, ``deriv`` odd) halves the multiplications.

    Args:
        x: float64 ``(H, W)``.
        smooth: float64 ``(2h + 1,)``, symmetric.
        deriv: float64 ``(2h + 1,)``, antisymmetric.
        block_bytes: rough working-set size of one block of rows.

    Returns:
        ``(smoothed, differentiated)``: float64 ``(H, W)`` each.
    """
    halfsize = len(smooth) // 2
    height, width = x.shape
    padded = np.pad(x, ((halfsize, halfsize), (0, 0)), mode="edge")
    smoothed = np.empty_like(x)
    differentiated = np.empty_like(x)
    block_rows = max(4, block_bytes // (8 * max(width, 1)))
    scratch = np.empty((block_rows, width), dtype=np.float64)
    for start in range(0, height, block_rows):
        stop = min(start + block_rows, height)
        smooth_out = smoothed[start:stop]
        deriv_out = differentiated[start:stop]
        tmp = scratch[: stop - start]
        np.multiply(padded[start + halfsize : stop + halfsize], smooth[halfsize], out=smooth_out)
        deriv_out.fill(0.0)
        for offset in range(1, halfsize + 1):
            above = padded[start + halfsize - offset : stop + halfsize - offset]  # x[i - offset]
            below = padded[start + halfsize + offset : stop + halfsize + offset]  # x[i + offset]
            # Convolution: out[i] = Σ_o k(o) · x[i − o]; k(−o) = ±k(o).
            np.add(above, below, out=tmp)
            tmp *= smooth[halfsize + offset]
            smooth_out += tmp
            np.subtract(above, below, out=tmp)
            tmp *= deriv[halfsize + offset]
            deriv_out += tmp
    return smoothed, differentiated


def _gradient_magnitude(x: np.ndarray, smooth: np.ndarray, deriv: np.ndarray) -> np.ndarray:
    """``sqrt(gx² + gy²)`` of a float64 ``(H, W)`` map, returned as float32 (MATLAB ``single``).

    ``imfilter(..., 'replicate', 'conv')`` with the separable kernel ``hx = smooth ⊗ deriv`` is a
    column pass with ``smooth`` then a row pass with ``deriv`` (``hy``: the other way round).
    """
    col_smoothed, col_differentiated = _column_passes(x, smooth, deriv)
    gx = ndimage.convolve1d(col_smoothed, deriv, axis=1, mode="nearest")
    gy = ndimage.convolve1d(col_differentiated, smooth, axis=1, mode="nearest")
    del col_smoothed, col_differentiated
    # In place to keep peak memory at a few full-size arrays for 6K images.
    np.square(gx, out=gx)
    np.square(gy, out=gy)
    gx += gy
    np.sqrt(gx, out=gx)
    return gx.astype(np.float32)


def gradient_error(pred_u8: np.ndarray, gt_u8: np.ndarray, mask: np.ndarray) -> float:
    """Gradient error (``compute_gradient_loss.m``), in thousands.

    Each map is min–max normalised on its own (``mat2gray``, not /255), filtered over the whole
    image with derivative-of-Gaussian kernels (σ = 1.4, 9×9, replicate border), and the squared
    difference of gradient magnitudes is summed over ``mask``.

    Args:
        pred_u8, gt_u8: ``uint8`` ``(H, W)``.
        mask: ``bool`` ``(H, W)``.

    Returns:
        ``Σ_mask (|∇p| − |∇g|)² / 1000``.
    """
    _check_maps(pred_u8, gt_u8, mask)
    smooth, deriv = _gaussian_derivative_factors(_GRAD_SIGMA)
    pred_amp = _gradient_magnitude(_mat2gray(pred_u8), smooth, deriv)
    gt_amp = _gradient_magnitude(_mat2gray(gt_u8), smooth, deriv)
    error = (pred_amp[mask] - gt_amp[mask]) ** 2  # float32, as MATLAB's single()
    return float(error.sum(dtype=np.float64)) / 1000.0


# --------------------------------------------------------------------------------------------
# Conn
# --------------------------------------------------------------------------------------------
def _largest_component(binary: np.ndarray) -> np.ndarray:
    """Largest 4-connected foreground component of ``binary`` (bool ``(H, W)``); empty if none.

    Ties go to the component met first in column-major order, like ``max`` over
    ``bwconncomp``'s ``PixelIdxList`` in MATLAB.
    """
    labels, num_components = ndimage.label(binary, structure=_FOUR_CONNECTIVITY)
    if num_components == 0:
        return np.zeros(binary.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=num_components + 1)
    sizes[0] = 0  # background is never a candidate
    largest_size = sizes.max()
    tied = np.flatnonzero(sizes == largest_size)
    if len(tied) == 1:
        return labels == tied[0]
    # scipy numbers components in row-major order; MATLAB in column-major order.
    rows, cols = np.nonzero(np.isin(labels, tied))
    first = np.argmin(cols.astype(np.int64) * binary.shape[0] + rows)
    return labels == labels[rows[first], cols[first]]


def connectivity_error(pred_u8: np.ndarray, gt_u8: np.ndarray, mask: np.ndarray) -> float:
    """Connectivity error (``compute_connectivity_error.m``, step 0.1), in thousands.

    For thresholds ``t_i = i/10`` (float32), Ω_i is the largest 4-connected component of
    ``p ≥ t_i ∧ g ≥ t_i``. A pixel's level ``l`` is ``t_{i−1}`` for the first ``i`` at which it
    leaves Ω (1 if it never does); ``φ = 1 − d·[d ≥ 0.15]`` with ``d = x − l``.

    Args:
        pred_u8, gt_u8: ``uint8`` ``(H, W)``.
        mask: ``bool`` ``(H, W)``. Ω is found over the whole image; only the sum is masked.

    Returns:
        ``Σ_mask |φ_p − φ_g| / 1000``.
    """
    _check_maps(pred_u8, gt_u8, mask)
    pred = pred_u8.astype(np.float32) / np.float32(255)
    gt = gt_u8.astype(np.float32) / np.float32(255)
    # float32 thresholds: a float64 arange gives 0.6000000000000001, which 153/255 would miss.
    thresholds = np.arange(_CONN_NUM_STEPS + 1, dtype=np.float32) / np.float32(_CONN_NUM_STEPS)

    unset = np.float32(-1)
    level = np.full(pred.shape, unset, dtype=np.float32)
    for i in range(1, len(thresholds)):
        still_unset = level == unset
        if not still_unset.any():
            break  # later iterations can only touch unset pixels
        omega = _largest_component((pred >= thresholds[i]) & (gt >= thresholds[i]))
        level[still_unset & ~omega] = thresholds[i - 1]
    level[level == unset] = np.float32(1)

    def phi(x: np.ndarray) -> np.ndarray:
        dist = x - level
        return np.float32(1) - dist * (dist >= np.float32(_CONN_PHI_MIN_DIST))

    error = np.abs(phi(pred)[mask] - phi(gt)[mask])
    return float(error.sum(dtype=np.float64)) / 1000.0


# --------------------------------------------------------------------------------------------
# torchmetrics wrappers
# --------------------------------------------------------------------------------------------
PerImageError = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


class _PerImageMattingMetric(Metric):
    """Mean over images of a per-image error computed on 8-bit maps on CPU.

    States ``total`` (float64 sum of per-image values) and ``count`` (images) are summed across
    processes, so the result is the mean over every image of every rank.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    # Set by subclasses.
    per_image_error: PerImageError
    scale: float = 1.0

    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, region: str = "unknown", **kwargs) -> None:
        super().__init__(**kwargs)
        self.region = _check_region(region)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, trimap: torch.Tensor) -> None:
        """Add the errors of a batch.

        Args:
            pred: float ``(B, 1, H, W)`` in [0, 1].
            target: float ``(B, 1, H, W)`` in [0, 1].
            trimap: float ``(B, 1, H, W)`` in {0, 0.5, 1}.
        """
        if pred.ndim != 4 or pred.shape[1] != 1 or pred.shape != target.shape or pred.shape != trimap.shape:
            raise ValueError(
                "expected pred, target and trimap of one shape (B, 1, H, W), got "
                f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(trimap.shape)}"
            )
        pred_u8 = to_uint8(_to_numpy(pred))
        target_u8 = to_uint8(_to_numpy(target))
        trimap_u8 = to_uint8(_to_numpy(trimap))
        batch_total = 0.0
        for index in range(pred_u8.shape[0]):
            mask = region_mask(trimap_u8[index, 0], self.region)
            batch_total += type(self).per_image_error(pred_u8[index, 0], target_u8[index, 0], mask)
        # Out of place: states reset under inference mode (validation before fit) are
        # inference tensors, which refuse in-place updates outside inference mode.
        self.total = self.total + batch_total * self.scale
        self.count = self.count + pred_u8.shape[0]

    def compute(self) -> torch.Tensor:
        """Mean per-image error (float64 scalar); 0 before any update."""
        return self.total / self.count.clamp(min=1)


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(device="cpu", dtype=torch.float32).numpy()


class SAD(_PerImageMattingMetric):
    """Mean per-image SAD, in thousands (see :func:`sad`)."""

    per_image_error = staticmethod(sad)


class MSE(_PerImageMattingMetric):
    """Mean per-image MSE ×1000 (see :func:`mse`)."""

    per_image_error = staticmethod(mse)
    scale = 1000.0


class Grad(_PerImageMattingMetric):
    """Mean per-image gradient error, in thousands (see :func:`gradient_error`)."""

    per_image_error = staticmethod(gradient_error)


class Conn(_PerImageMattingMetric):
    """Mean per-image connectivity error, in thousands (see :func:`connectivity_error`)."""

    per_image_error = staticmethod(connectivity_error)


class MattingMetrics(MetricCollection):
    """SAD, MSE, Grad and Conn under keys ``"sad"``, ``"mse"``, ``"grad"``, ``"conn"``.

    Use ``.clone(prefix="val/")`` for per-stage copies.
    """

    def __init__(self, region: str = "unknown") -> None:
        _check_region(region)
        super().__init__(
            {"sad": SAD(region), "mse": MSE(region), "grad": Grad(region), "conn": Conn(region)},
            # All four share state names and start equal (e.g. 0 after a perfect first batch);
            # compute groups would then merge them and report one metric's value for all.
            compute_groups=False,
        )


ROUTING_STATS: tuple[str, ...] = (
    "keep_ratio",
    "keep_ratio_argmax",
    "keep_ratio_expected",
    "p_global_mean",
    "p_global_std",
    "enrichment",
    "enrichment_argmax",
    "enrichment_expected",
)
"""Names of :class:`RoutingStats`' values (log keys ``<stage>/<name>[/block<i>]``)."""

# decision sets scored by RoutingStats: suffix → rule (None = the decisions the block used)
_DECISION_SETS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "": None,
    "_argmax": argmax_rule,
    "_expected": expected_rule,
}


class RoutingStats(Metric):
    """Token-level statistics of a routed block's router over a whole split.

    Update once per routed block and batch (several blocks may feed one meter: their tokens
    are pooled, as if concatenated). Every value is token-weighted (sums over all tokens of the
    split, so large images count per token as they do in memory and latency); the float64 sum
    states are summed across processes. :meth:`compute` returns float64 scalars:

    - ``keep_ratio``: share of tokens the block sent to global attention (the decisions it
      used: its inference rule, ``max_tokens`` cap included); ``keep_ratio_argmax`` /
      ``keep_ratio_expected``: the share :func:`~mematte.models.routed_block.argmax_rule` /
      :func:`~mematte.models.routed_block.expected_rule` would keep (no cap), whichever rule
      the block used. 0 before any update.
    - ``p_global_mean``, ``p_global_std``: mean and (population) standard deviation of
      p(global) = ``exp(log_probs[..., 0])`` over all tokens. A small std means an undecided
      router (e.g. p ≈ 0.3 ± 0.02 everywhere after short training: argmax keeps nothing).
    - ``enrichment``, ``enrichment_argmax``, ``enrichment_expected``: how much the kept
      tokens are concentrated on the trimap's unknown region, for each of the three decision
      sets: ``(Σ_kept u / Σ_kept 1) / (Σ_all u / Σ_all 1)`` with ``u`` ∈ [0, 1] a token's
      unknown share (:func:`~mematte.models.matting_net.token_unknown_share`). A router
      blind to the trimap scores 1 in expectation; > 1 means detail regions go to global
      attention more than the rest; ``1 / (Σ_all u / Σ_all 1)`` is the maximum (kept =
      exactly the unknown tokens).

    Undefined values are NaN, not a made-up number: the p statistics before any update, and an
    enrichment when the set keeps no token or the split has no unknown pixel. Lightning, the
    CSV logger (``nan``) and W&B carry NaN through, ``metrics.json`` has ``null`` (strict
    JSON); the report skips them.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    tokens: torch.Tensor
    unknown: torch.Tensor
    p_sum: torch.Tensor
    p_sq_sum: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        names = ["tokens", "unknown", "p_sum", "p_sq_sum"]
        names += [f"{kind}{suffix}" for suffix in _DECISION_SETS for kind in ("kept", "kept_unknown")]
        for name in names:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, decision: torch.Tensor, log_probs: torch.Tensor, unknown: torch.Tensor) -> None:
        """Add one routed block's tokens of a batch.

        Args:
            decision: (B, N) decisions used, 1 = global attention (> 0.5 counts as kept, so
                straight-through training decisions work too).
            log_probs: (B, N, 2) router log-probabilities, index 0 = global attention.
            unknown: (B, N) unknown share of each token in [0, 1].
        """
        if decision.ndim != 2 or log_probs.shape != (*decision.shape, 2) or unknown.shape != decision.shape:
            raise ValueError(
                "expected decision (B, N), log_probs (B, N, 2) and unknown (B, N), got "
                f"{tuple(decision.shape)}, {tuple(log_probs.shape)}, {tuple(unknown.shape)}"
            )
        log_probs = log_probs.detach()
        u = unknown.detach().to(self.tokens.device, torch.float64)
        p = log_probs[..., 0].to(self.tokens.device, torch.float64).exp()
        # Out of place, for the same inference-tensor reason as the matting metrics.
        self.tokens = self.tokens + decision.numel()
        self.unknown = self.unknown + u.sum()
        self.p_sum = self.p_sum + p.sum()
        self.p_sq_sum = self.p_sq_sum + (p * p).sum()
        for suffix, rule in _DECISION_SETS.items():
            keep = decision.detach() > 0.5 if rule is None else rule(log_probs)
            keep = keep.to(self.tokens.device, torch.float64)
            setattr(self, f"kept{suffix}", getattr(self, f"kept{suffix}") + keep.sum())
            setattr(self, f"kept_unknown{suffix}", getattr(self, f"kept_unknown{suffix}") + (keep * u).sum())

    def compute(self) -> dict[str, torch.Tensor]:
        """``{name: float64 scalar}`` for every name of :data:`ROUTING_STATS`."""
        nan = torch.full_like(self.tokens, float("nan"))
        tokens = self.tokens
        out: dict[str, torch.Tensor] = {}
        for suffix in _DECISION_SETS:
            out[f"keep_ratio{suffix}"] = getattr(self, f"kept{suffix}") / tokens.clamp(min=1)
        mean = self.p_sum / tokens
        variance = (self.p_sq_sum / tokens - mean * mean).clamp(min=0.0)
        out["p_global_mean"] = torch.where(tokens > 0, mean, nan)
        out["p_global_std"] = torch.where(tokens > 0, variance.sqrt(), nan)
        for suffix in _DECISION_SETS:
            kept, kept_unknown = getattr(self, f"kept{suffix}"), getattr(self, f"kept_unknown{suffix}")
            defined = (kept > 0) & (self.unknown > 0)
            # (kept_unknown / kept) / (unknown / tokens); the masked-out branch may be 0/0
            out[f"enrichment{suffix}"] = torch.where(defined, kept_unknown * tokens / (kept * self.unknown), nan)
        return {name: out[name] for name in ROUTING_STATS}
