"""Training losses: ViTMatte's matting terms and MEMatte's keep-ratio and distillation terms.

Matting terms: unknown/known-region L1, Laplacian pyramid L1, gradient penalty.

All functions take float tensors ``(B, 1, H, W)``: ``pred`` and ``target`` alphas in [0, 1] and
a ``trimap`` in {0, 0.5, 1} where 0.5 marks the unknown region U. They return a scalar tensor.

Region terms use a *masked mean* over the whole batch, ``Σ(|e| · m) / max(Σ m, 1)``. At
ViTMatte's 512² crops this equals its ``F.l1_loss(p·m, g·m) · B·512² / Σm``; written this way it
holds for any crop size and is 0 (not NaN) for an empty mask.

Filtering uses kornia operators: ``kornia.filters.spatial_gradient`` (Sobel) and the Gaussian
pyramid of ``kornia.geometry.transform`` (5×5 binomial kernel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.filters import spatial_gradient
from kornia.geometry.transform import build_pyramid, pyrup
from torch import nn

__all__ = [
    "unknown_mask",
    "masked_mean",
    "unknown_l1_loss",
    "known_l1_loss",
    "laplacian_pyramid",
    "laplacian_loss",
    "gradient_penalty_loss",
    "MattingLoss",
    "KeepRatioLoss",
    "distillation_loss",
]

_UNKNOWN_VALUE = 0.5
_GRADIENT_PENALTY_WEIGHT = 0.01  # ViTMatte's weight on |∇pred| (discourages spurious edges)


def unknown_mask(trimap: torch.Tensor) -> torch.Tensor:
    """Unknown region of a trimap.

    Args:
        trimap: float ``(B, 1, H, W)`` in {0, 0.5, 1}.

    Returns:
        float ``(B, 1, H, W)``, 1 where ``trimap == 0.5`` else 0 (dtype of ``trimap``).
    """
    # Tolerance so a trimap that went through 8 bits (127/255 or 128/255) still counts as unknown.
    return ((trimap - _UNKNOWN_VALUE).abs() < 0.01).to(trimap.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ(values · mask) / max(Σ mask, 1)`` over the whole batch.

    Args:
        values: float ``(B, C, H, W)``.
        mask: float ``(B, 1, H, W)`` or broadcastable, values in [0, 1].

    Returns:
        float scalar.
    """
    return (values * mask).sum() / mask.expand_as(values).sum().clamp(min=1.0)


def _check_inputs(pred: torch.Tensor, target: torch.Tensor, trimap: torch.Tensor | None = None) -> None:
    if pred.ndim != 4 or pred.shape != target.shape or (trimap is not None and trimap.shape != pred.shape):
        shapes = [tuple(t.shape) for t in (pred, target, trimap) if t is not None]
        raise ValueError(f"expected tensors of one shape (B, 1, H, W), got {shapes}")


def unknown_l1_loss(pred: torch.Tensor, target: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """Masked mean of ``|pred − target|`` over the unknown region.

    Args:
        pred, target: float ``(B, 1, H, W)`` in [0, 1].
        trimap: float ``(B, 1, H, W)`` in {0, 0.5, 1}.

    Returns:
        float scalar; 0 if there is no unknown pixel.
    """
    _check_inputs(pred, target, trimap)
    return masked_mean((pred - target).abs(), unknown_mask(trimap))


def known_l1_loss(pred: torch.Tensor, target: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """Masked mean of ``|pred − target|`` over the known (foreground + background) region.

    Args:
        pred, target: float ``(B, 1, H, W)`` in [0, 1].
        trimap: float ``(B, 1, H, W)`` in {0, 0.5, 1}.

    Returns:
        float scalar; 0 if every pixel is unknown.
    """
    _check_inputs(pred, target, trimap)
    return masked_mean((pred - target).abs(), 1.0 - unknown_mask(trimap))


def laplacian_pyramid(image: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
    """Band-pass levels of a Laplacian pyramid (no low-pass residual), as in ViTMatte/RVM.

    Level ``i`` is Gaussian level ``i`` minus the kornia ``pyrup`` of Gaussian level ``i + 1``
    (kornia ``build_pyramid``: 5×5 binomial blur, halving; replicate borders). Any ``H × W``
    works: the image is replicate-padded to a multiple of ``2**levels`` (so every level halves
    exactly) and each level is cropped back to ``ceil(H / 2**i) × ceil(W / 2**i)``, so padding
    never counts in a mean.

    Built from kornia's pieces rather than ``kornia.geometry.transform.build_laplacian_pyramid``:
    that one pads non-power-of-two inputs up to the next power of two (up to 4× the pixels),
    returns the padded levels, and ends with the low-pass residual, which ViTMatte's loss omits.

    Args:
        image: float ``(B, C, H, W)``.
        levels: number of band-pass levels (≥ 1).

    Returns:
        ``levels`` float tensors, level ``i`` of shape ``(B, C, ceil(H/2^i), ceil(W/2^i))``.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    height, width = image.shape[-2:]
    stride = 2**levels
    pad_bottom, pad_right = (-height) % stride, (-width) % stride
    if pad_bottom or pad_right:
        image = F.pad(image, (0, pad_right, 0, pad_bottom), mode="replicate")
    # Replicate rather than kornia's default reflect border: reflect needs every side > 2,
    # which the coarsest levels of small crops are not.
    gaussian = build_pyramid(image, levels + 1, border_type="replicate")
    pyramid = []
    for level in range(levels):
        band = gaussian[level] - pyrup(gaussian[level + 1], border_type="replicate")
        level_stride = 2**level
        valid_h, valid_w = -(-height // level_stride), -(-width // level_stride)
        pyramid.append(band[..., :valid_h, :valid_w])
    return pyramid


def laplacian_loss(pred: torch.Tensor, target: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """``Σ_i 2^i · mean|Lp_i − Lg_i| / levels`` over Laplacian pyramid levels.

    Args:
        pred, target: float ``(B, 1, H, W)``, any ``H × W``.
        levels: number of band-pass levels.

    Returns:
        float scalar.
    """
    _check_inputs(pred, target)
    # One pyramid for both: halves the kernel launches.
    pyramid = laplacian_pyramid(torch.cat([pred, target], dim=0), levels)
    batch = pred.shape[0]
    loss = pred.new_zeros(())
    for level, band in enumerate(pyramid):
        loss = loss + (2**level) * (band[:batch] - band[batch:]).abs().mean()
    return loss / levels


def gradient_penalty_loss(pred: torch.Tensor, target: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """ViTMatte's gradient loss on the unknown region U, with Sobel gradients.

    ``mm(|∂x p − ∂x g|) + mm(|∂y p − ∂y g|) + 0.01 · (mm(|∂x p|) + mm(|∂y p|))``, where ``mm``
    is the masked mean over U and ``∂`` the unnormalised 3×3 Sobel (kornia, replicate border).

    Args:
        pred, target: float ``(B, 1, H, W)`` in [0, 1].
        trimap: float ``(B, 1, H, W)`` in {0, 0.5, 1}.

    Returns:
        float scalar; 0 if there is no unknown pixel.
    """
    _check_inputs(pred, target, trimap)
    mask = unknown_mask(trimap)
    # (B, C, 2, H, W): [:, :, 0] = d/dx, [:, :, 1] = d/dy.
    grads = spatial_gradient(torch.cat([pred, target], dim=0), mode="sobel", normalized=False)
    pred_grad, target_grad = grads.split(pred.shape[0], dim=0)
    pred_dx, pred_dy = pred_grad[:, :, 0], pred_grad[:, :, 1]
    target_dx, target_dy = target_grad[:, :, 0], target_grad[:, :, 1]
    match = masked_mean((pred_dx - target_dx).abs(), mask) + masked_mean((pred_dy - target_dy).abs(), mask)
    penalty = masked_mean(pred_dx.abs(), mask) + masked_mean(pred_dy.abs(), mask)
    return match + _GRADIENT_PENALTY_WEIGHT * penalty


class MattingLoss(nn.Module):
    """Weighted sum of the ViTMatte losses.

    Args:
        unknown_l1: weight of :func:`unknown_l1_loss`.
        known_l1: weight of :func:`known_l1_loss`.
        laplacian: weight of :func:`laplacian_loss`.
        gradient: weight of :func:`gradient_penalty_loss`.
        laplacian_levels: pyramid levels of the Laplacian loss.

    A term whose weight is 0 is not computed and its key is absent from the output.
    """

    def __init__(
        self,
        unknown_l1: float = 1.0,
        known_l1: float = 1.0,
        laplacian: float = 1.0,
        gradient: float = 1.0,
        laplacian_levels: int = 5,
    ) -> None:
        super().__init__()
        self.weights: dict[str, float] = {
            "unknown_l1": float(unknown_l1),
            "known_l1": float(known_l1),
            "laplacian": float(laplacian),
            "gradient": float(gradient),
        }
        self.laplacian_levels = laplacian_levels

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, trimap: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Compute the loss terms.

        Args:
            pred: float ``(B, 1, H, W)`` in [0, 1], any dtype (computed in float32).
            target: float ``(B, 1, H, W)`` in [0, 1].
            trimap: float ``(B, 1, H, W)`` in {0, 0.5, 1}.

        Returns:
            Float32 scalars: the unweighted terms ``"unknown_l1"``, ``"known_l1"``,
            ``"laplacian"``, ``"gradient"`` (those with non-zero weight) and ``"loss"``, their
            weighted sum.
        """
        # fp32 throughout: under autocast the convolutions would otherwise run in fp16/bf16,
        # and small alpha differences vanish there.
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred, target, trimap = pred.float(), target.float(), trimap.float()
            term_fns = {
                "unknown_l1": lambda: unknown_l1_loss(pred, target, trimap),
                "known_l1": lambda: known_l1_loss(pred, target, trimap),
                "laplacian": lambda: laplacian_loss(pred, target, self.laplacian_levels),
                "gradient": lambda: gradient_penalty_loss(pred, target, trimap),
            }
            terms: dict[str, torch.Tensor] = {}
            total = pred.new_zeros(())
            for name, weight in self.weights.items():
                if weight == 0.0:
                    continue
                terms[name] = term_fns[name]()
                total = total + weight * terms[name]
            terms["loss"] = total
        return terms

    def extra_repr(self) -> str:
        weights = ", ".join(f"{name}={weight}" for name, weight in self.weights.items())
        return f"{weights}, laplacian_levels={self.laplacian_levels}"


KEEP_RATIO_MODES: tuple[str, ...] = ("batch", "image", "layer", "fixed")
KEEP_RATIO_SCHEDULES: tuple[str, ...] = ("constant", "anneal")


class KeepRatioLoss(nn.Module):
    """Keep-ratio objective on the routers' hard decisions (MEMatte's BATR and its ablations).

    With ``r_{l,b} = Σ_n d_{l,b,n} / N`` the share of image b's tokens that routed block l sends
    to global attention:

    - ``"batch"`` (BATR, the paper's): ``(mean_{l,b} r_{l,b} − t)²`` — only the batch-and-layer
      average is constrained, so hard images and later blocks may take more tokens.
    - ``"image"``: ``mean_b (mean_l r_{l,b} − t)²`` — every image meets the target.
    - ``"layer"``: ``mean_l (mean_b r_{l,b} − t_l)²`` — a target per block (``layer_targets``).
    - ``"fixed"``: no loss; the blocks keep a fixed top-K share (``selection: topk``) and the
      targets below only set that share.

    Every mode (averages weighted by tokens, so mixed image sizes count per token) follows a
    target schedule: ``"constant"`` or ``"anneal"`` (linear from ``anneal_from`` to the
    final target over the first ``anneal_steps`` optimiser steps).

    Args:
        mode: one of ``batch``, ``image``, ``layer``, ``fixed``.
        target: final keep ratio of every block (0.25 in the paper).
        layer_targets: optional final ratio per routed block, overriding ``target``.
        weight: loss weight (1 in the paper).
        schedule: ``constant`` or ``anneal``.
        anneal_steps: steps of the anneal.
        anneal_from: starting ratio of the anneal (1.0 = all tokens).
        selection: the routed blocks' selection, checked against the mode (``topk`` exactly
            when ``fixed``) so that a config cannot silently train the wrong thing.
    """

    def __init__(
        self,
        mode: str = "batch",
        target: float = 0.25,
        layer_targets: list[float] | None = None,
        weight: float = 1.0,
        schedule: str = "constant",
        anneal_steps: int = 0,
        anneal_from: float = 1.0,
        selection: str | None = None,
    ) -> None:
        super().__init__()
        if mode not in KEEP_RATIO_MODES:
            raise ValueError(f"Unknown routing mode={mode!r}; choose one of {list(KEEP_RATIO_MODES)}")
        if schedule not in KEEP_RATIO_SCHEDULES:
            raise ValueError(
                f"Unknown routing schedule={schedule!r}; choose one of {list(KEEP_RATIO_SCHEDULES)}"
            )
        ratios = [target] + list(layer_targets or []) + [anneal_from]
        if any(not 0.0 < float(r) <= 1.0 for r in ratios):
            raise ValueError(f"keep ratios must lie in (0, 1], got target={target}, "
                             f"layer_targets={layer_targets}, anneal_from={anneal_from}")
        if layer_targets is not None and mode in ("batch", "image"):
            raise ValueError(f"layer_targets need routing mode 'layer' or 'fixed', not {mode!r}")
        if schedule == "anneal" and anneal_steps <= 0:
            raise ValueError("schedule=anneal needs anneal_steps > 0 (e.g. routing.anneal_steps=1000)")
        expected = "topk" if mode == "fixed" else "gumbel"
        if selection is not None and selection != expected:
            raise ValueError(
                f"routing mode {mode!r} needs the routed blocks' selection={expected!r}, got "
                f"{selection!r}: pick the objective with routing=<batr|per_image|per_layer|fixed>"
            )
        self.mode = mode
        self.target = float(target)
        self.layer_targets = [float(t) for t in layer_targets] if layer_targets is not None else None
        self.weight = float(weight)
        self.schedule = schedule
        self.anneal_steps = int(anneal_steps)
        self.anneal_from = float(anneal_from)

    @property
    def has_loss(self) -> bool:
        """False for ``fixed``: the share is imposed, not learned."""
        return self.mode != "fixed"

    def targets(self, step: int, num_blocks: int) -> list[float]:
        """Scheduled target of each routed block at an optimiser step."""
        finals = self.layer_targets if self.layer_targets is not None else [self.target] * num_blocks
        if len(finals) != num_blocks:
            raise ValueError(
                f"routing.layer_targets has {len(finals)} entries for {num_blocks} routed blocks"
            )
        if self.schedule == "constant" or step >= self.anneal_steps:
            return list(finals)
        left = 1.0 - step / self.anneal_steps
        return [t + (self.anneal_from - t) * left for t in finals]

    def forward(self, decisions: list[torch.Tensor], step: int) -> torch.Tensor:
        """Weighted ratio loss.

        Args:
            decisions: per routed block, (B, N) hard decisions with straight-through gradients.
            step: optimiser step (for the schedule).

        Returns:
            fp32 scalar, already multiplied by ``weight`` (0 for ``fixed``).
        """
        if not decisions:
            raise ValueError("KeepRatioLoss needs at least one routed block")
        ratios = torch.stack([d.float().mean(dim=1) for d in decisions])  # (L, B)
        targets = torch.tensor(self.targets(step, len(decisions)), device=ratios.device)
        if self.mode == "batch":
            loss = (ratios.mean() - targets.mean()) ** 2
        elif self.mode == "image":
            loss = ((ratios.mean(dim=0) - targets.mean()) ** 2).mean()
        elif self.mode == "layer":
            loss = ((ratios.mean(dim=1) - targets) ** 2).mean()
        else:
            loss = ratios.new_zeros(())
        return self.weight * loss

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, target={self.target}, layer_targets={self.layer_targets}, "
            f"weight={self.weight}, schedule={self.schedule}, anneal_steps={self.anneal_steps}"
        )


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between student and frozen-teacher backbone features (MEMatte's distillation).

    Args:
        student: (B, C, h, w) last backbone features of the routed student.
        teacher: (B, C, h, w) the teacher's, computed without gradients.

    Returns:
        fp32 scalar.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"teacher features {tuple(teacher.shape)} do not match the student's "
            f"{tuple(student.shape)}: the teacher checkpoint must have the student's width"
        )
    return F.mse_loss(student.float(), teacher.float().detach())
