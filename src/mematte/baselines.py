"""Training-free reference baselines: classical alpha matting (pymatting) as a matting net.

:class:`ClassicalMatting` takes the same inputs as :class:`~mematte.models.matting_net.MattingNet`
and returns a :class:`~mematte.models.matting_net.MattingOutput`, so ``eval.py baseline=NAME``
scores it with the test loop, metrics and callbacks of a checkpoint
(``conf/baseline/``: ``closed_form``, ``knn``, ``lkm``, ``fill_half``).

Methods (each per image, on the CPU, in float64 numpy):

* ``closed_form``: closed-form matting (Levin et al., 2008), ``pymatting.estimate_alpha_cf``;
* ``knn``: KNN matting (Chen et al., 2013), ``pymatting.estimate_alpha_knn``;
* ``lkm``: large-kernel matting Laplacian (He et al., 2010), ``pymatting.estimate_alpha_lkm``;
* ``fill_half``: the trimap itself, its unknown region left at 0.5 (the floor any method
  should beat; no pymatting).

Degenerate trimaps, where the pymatting solvers fail or the problem is ill-posed, get defined
answers instead (checked in this order):

1. no unknown pixel → the trimap itself;
2. no foreground pixel → alpha 0 in the unknown region (so also for an all-unknown trimap);
3. no background pixel → alpha 1 in the unknown region.

``lkm`` on an image with a side shorter than 4·radius + 1 pixels (41 at the default radius 10;
pymatting's box filters assert on it) runs with the radius cut to fit that side.

``fill_half`` always returns the trimap (0.5 in the unknown region), whatever it holds.

Pixels are split as :func:`~mematte.models.matting_net.clamp_to_trimap` and the metrics split
them: background where the trimap is ≤ 0, foreground where it is ≥ 1, unknown otherwise.
pymatting (imported on first use only: it loads numba, which is slow) is given that split as a
trimap in {0, 0.5, 1}. The output keeps the trimap's known pixels exactly (knn and lkm hold
them by a soft penalty only), as the test loop's clamping would.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mematte.models.matting_net import MattingOutput

__all__ = ["METHODS", "ClassicalMatting"]

# method name → pymatting function (looked up on first use); fill_half needs no solver
_SOLVERS: dict[str, str | None] = {
    "closed_form": "estimate_alpha_cf",
    "knn": "estimate_alpha_knn",
    "lkm": "estimate_alpha_lkm",
    "fill_half": None,
}
METHODS: tuple[str, ...] = tuple(_SOLVERS)


class _NoBackbone:
    """What the test loop reads of a net's backbone, for a method that has none.

    :class:`~mematte.lit_module.MattingModule` sets up per-block kept-ratio meters from
    ``net.backbone.routed_block_indexes``; a classical method routes no tokens, so both lists
    are empty (as for ViTMatte) and no kept ratios are logged.
    """

    routed_blocks: tuple[nn.Module, ...] = ()
    routed_block_indexes: tuple[int, ...] = ()


class ClassicalMatting(nn.Module):
    """A classical (training-free) alpha matting method with the interface of a matting net.

    Args:
        method: one of :data:`METHODS` (``closed_form``, ``knn``, ``lkm``, ``fill_half``).
        laplacian_kwargs: passed to pymatting's Laplacian (``cf_laplacian``,
            ``knn_laplacian`` or ``lkm_laplacian``); empty: pymatting's defaults.
        cg_kwargs: passed to pymatting's conjugate-gradient solver (``rtol``, ``maxiter``, ...);
            empty: pymatting's defaults.

    The module has no parameters; its output is computed on the CPU whatever the inputs'
    device and returned on that device.
    """

    # Read by MattingModule (routing objective, kept-ratio meters): no routed blocks here.
    is_routed: bool = False
    backbone = _NoBackbone()

    def __init__(
        self,
        method: str,
        laplacian_kwargs: Mapping[str, Any] | None = None,
        cg_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if method not in _SOLVERS:
            raise ValueError(f"baseline method={method!r}: choose one of {list(METHODS)}")
        if method == "fill_half" and (laplacian_kwargs or cg_kwargs):
            raise ValueError("baseline method=fill_half solves nothing: it takes no laplacian_kwargs or cg_kwargs")
        self.method = method
        self.laplacian_kwargs = dict(laplacian_kwargs or {})
        self.cg_kwargs = dict(cg_kwargs or {})

    def extra_repr(self) -> str:
        return f"method={self.method!r}"

    def _solver(self) -> Callable[..., np.ndarray]:
        name = _SOLVERS[self.method]
        assert name is not None
        return getattr(importlib.import_module("pymatting"), name)

    def estimate(self, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """Alpha of one image.

        Args:
            image: (H, W, 3) float RGB in [0, 1].
            trimap: (H, W) float, background ≤ 0, foreground ≥ 1, unknown in between.

        Returns:
            (H, W) float64 alpha in [0, 1]; 0 / 1 where the trimap is background / foreground.
        """
        is_fg = trimap >= 1.0
        is_bg = trimap <= 0.0
        unknown = ~(is_fg | is_bg)
        # the trimap as pymatting reads it: {0, 0.5, 1}
        clean = np.where(is_fg, 1.0, np.where(is_bg, 0.0, 0.5))
        if self.method == "fill_half" or not unknown.any():
            return clean
        if not is_fg.any():
            return np.where(unknown, 0.0, clean)
        if not is_bg.any():
            return np.where(unknown, 1.0, clean)
        image = np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float64)
        laplacian_kwargs = self.laplacian_kwargs
        if self.method == "lkm":  # windows of windows (4·radius + 1 px) must fit in the image
            radius = min(int(laplacian_kwargs.get("radius", 10)), (min(trimap.shape) - 1) // 4)
            laplacian_kwargs = {**laplacian_kwargs, "radius": radius}
        try:
            alpha = self._solver()(image, clean, laplacian_kwargs=laplacian_kwargs, cg_kwargs=self.cg_kwargs)
        except ValueError as err:  # e.g. the solver not converging: a failure, not a wrong option
            h, w = trimap.shape
            raise RuntimeError(f"{self.method} matting failed on a {h}x{w} image: {err}") from err
        # knn and lkm hold the known pixels by a soft penalty only: set them exactly
        return np.where(unknown, np.clip(alpha, 0.0, 1.0), clean)

    def forward(self, image: Tensor, trimap: Tensor, padding: str = "aligned") -> MattingOutput:
        """Estimate alpha image by image.

        Args:
            image: (B, 3, H, W) RGB in [0, 1].
            trimap: (B, 1, H, W) in {0, 0.5, 1}.
            padding: ignored (the net interface's; a classical method needs no padding).

        Returns:
            :class:`MattingOutput` with ``alpha`` (B, 1, H, W) in [0, 1] (image's dtype and
            device), ``features`` an empty (B, 0, H, W) tensor (no learned features) and no
            routing.
        """
        if image.shape[-2:] != trimap.shape[-2:]:
            raise ValueError(
                f"image {tuple(image.shape[-2:])} and trimap {tuple(trimap.shape[-2:])} differ in size"
            )
        images = image.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
        trimaps = trimap.detach().to("cpu", torch.float64)[:, 0].numpy()
        alpha = np.stack([self.estimate(i, t) for i, t in zip(images, trimaps)])[:, None]
        b, _, h, w = image.shape
        return MattingOutput(
            alpha=torch.from_numpy(alpha).to(device=image.device, dtype=image.dtype),
            features=image.new_zeros((b, 0, h, w)),
        )
