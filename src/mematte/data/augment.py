"""Batched training augmentation for matting (docs/training.md, paper recipes), on torch + kornia, CPU or GPU.

:class:`MattingAugment` turns a collated batch of raw layers into training crops:

    input   "fg" (B, 3, S, S), "alpha" (B, 1, S, S), "bg" (B, 3, S, S), float in [0, 1]
            [+ "source_extent" (B,): longer side of the whole source image in canvas pixels]
            [+ "source_size" (B,), when the dataset provides it: longer side of the source as
               the official pipeline sees it at its affine step, in the source's own pixels
               (rotation gate, see step 3; "source_extent" stands in for it otherwise)]
            (or "image" + "alpha" for datasets that only have composites)
    output  "image", "fg", "bg" (B, 3, C, C), "alpha" (B, 1, C, C), "trimap" (B, 1, C, C) in
            {0, 0.5, 1}, "name" passed through — the project's training sample contract.

Steps, in the order of ViTMatte's / MEMatte's ``data/dim_dataset.py`` (each one switchable;
the defaults are the official settings):

1. merge a second foreground (p = ``merge_prob``): the partner is another sample of the batch
   (the official code draws it from the dataset); α = 1 − (1 − α1)(1 − α2) and the colour is
   the exact "over" composite (the formula of :func:`mematte.data.synthetic.merge_foregrounds`,
   here on tensors);
2. flips, each axis independently (p = ``flip_prob`` horizontal, ``vflip_prob`` vertical, both
   0.5 as in the official ``RandomAffine``, which flips through a negative scale), exact, on fg
   and α together;
3. random affine (rotation ±``degrees``, independent x/y scale in ``scale``, shear ±``shear``)
   warped once over the stacked fg + α so both get the identical transform, with an
   interpolation mode drawn per sample from ``interpolations``; results clamped to [0, 1].
   As in the official code, only sources whose longer side is ≥ ``rotate_min_size`` (1024)
   are rotated; scale and shear apply to every sample. The size is read per sample from
   "source_size", else "source_extent", else the canvas side (the canvas is the whole source);
4. trimap: pure fg (α ≥ 1 − 1e-5) and pure bg (α ≤ 1e-5) eroded by elliptical kernels of
   random size in ``trimap_kernel_range`` at ``trimap_reference_size`` px, scaled to the
   image (same recipe and kernels as :func:`mematte.data.composition.trimap_from_alpha`);
5. crop ``crop_size`` centred on a uniformly drawn unknown pixel (shifted to stay inside);
6. HSV jitter of the foreground (ViTMatte's ``RandomJitter``: hue ±40°, saturation / value
   shifted towards a reflected random offset scaled by their mean under α > 0);
7. composite: image = fg·α + bg·(1 − α).

Known differences from the official pipeline (partner from the batch, exact "over" colour
of the merge, …) are listed in docs/method.md, "Known differences from the official code".

Randomness: every random number is drawn on the CPU from a ``torch.Generator`` (the one
passed to :meth:`MattingAugment.forward`, else the module's own, seeded by ``seed`` /
:meth:`MattingAugment.reseed`), so results do not depend on the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from kornia.color import hsv_to_rgb, rgb_to_hsv
from kornia.geometry.transform import warp_affine
from torch import Tensor, nn

# One threshold for "pure" alpha everywhere (DIM / ViTMatte use 1e-5).
from mematte.data.composition import ALPHA_EPS
from mematte.data.composition import TRIMAP_UNKNOWN, ellipse_kernel

__all__ = [
    "INTERPOLATIONS",
    "merge_second_foreground",
    "affine_matrices",
    "warp_per_sample",
    "batch_binary_erosion",
    "random_trimap",
    "crop_centres",
    "crop_batch",
    "hsv_jitter",
    "MattingAugment",
]

# grid_sample modes available to the affine warp (ViTMatte draws from nearest / linear /
# cubic / Lanczos; grid_sample has no Lanczos).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


# ------------------------------------------------------------------------------ steps
def merge_second_foreground(
    fg: Tensor, alpha: Tensor, fg_over: Tensor, alpha_over: Tensor, apply: Tensor
) -> tuple[Tensor, Tensor]:
    """Layer ``fg_over`` over ``fg`` where ``apply`` is set ("over" operator, unpremultiplied).

    Same formula as :func:`mematte.data.synthetic.merge_foregrounds`:
    α = 1 − (1 − α)(1 − α_over), colour = (α_over·fg_over + (1 − α_over)·α·fg) / α.
    As in ViTMatte, a sample is left alone when the merge would make it fully opaque (no
    background pixel left to matte).

    Args:
        fg, fg_over: (B, 3, H, W) in [0, 1]; alpha, alpha_over: (B, 1, H, W) in [0, 1].
        apply: (B,) bool, which samples get a second layer.

    Returns:
        merged fg (B, 3, H, W), merged alpha (B, 1, H, W).
    """
    merged_alpha = 1.0 - (1.0 - alpha) * (1.0 - alpha_over)
    denom = merged_alpha.clamp_min(1e-6)
    merged_fg = (alpha_over * fg_over + (1.0 - alpha_over) * alpha * fg) / denom
    merged_fg = torch.where(merged_alpha > 1e-6, merged_fg, fg).clamp(0.0, 1.0)
    some_background = (merged_alpha < 1.0 - ALPHA_EPS).flatten(1).any(dim=1)
    use = (apply.to(fg.device) & some_background).view(-1, 1, 1, 1)
    return torch.where(use, merged_fg, fg), torch.where(use, merged_alpha, alpha)


def affine_matrices(
    angle_deg: Tensor, scale_xy: Tensor, shear_deg: Tensor, height: int, width: int
) -> Tensor:
    """Forward affine maps about the image centre: T(c) · R(angle) · Shear · S · T(−c).

    Pixel coordinates with integer pixel centres (``align_corners=True`` convention).

    Args:
        angle_deg: (B,) rotation in degrees (counter-clockwise on screen for positive values
            is irrelevant here: the range is symmetric).
        scale_xy: (B, 2) scale along x and y.
        shear_deg: (B,) shear angle in degrees (x sheared by y).
        height, width: image size.

    Returns:
        (B, 2, 3) float32 matrices mapping source to destination pixels.
    """
    theta = torch.deg2rad(angle_deg.float())
    cos, sin = torch.cos(theta), torch.sin(theta)
    tan_shear = torch.tan(torch.deg2rad(shear_deg.float()))
    sx, sy = scale_xy[:, 0].float(), scale_xy[:, 1].float()
    # R @ Sh @ S with Sh = [[1, tan], [0, 1]], S = diag(sx, sy)
    a = torch.stack([cos * sx, (cos * tan_shear - sin) * sy], dim=-1)
    b = torch.stack([sin * sx, (sin * tan_shear + cos) * sy], dim=-1)
    linear = torch.stack([a, b], dim=1)  # (B, 2, 2)
    centre = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=torch.float32)
    offset = centre - linear @ centre
    return torch.cat([linear, offset[..., None]], dim=-1)


def warp_per_sample(x: Tensor, matrices: Tensor, modes: Sequence[str]) -> Tensor:
    """Warp each sample with its own matrix and interpolation mode (zeros outside).

    One kornia call per distinct mode. The output is clamped to [0, 1] because bicubic
    interpolation overshoots near edges (an α above 1 would be an invalid label).

    Args:
        x: (B, C, H, W) float in [0, 1].
        matrices: (B, 2, 3) forward maps in pixel coordinates.
        modes: B names from :data:`INTERPOLATIONS`.

    Returns:
        (B, C, H, W) warped, in [0, 1].
    """
    height, width = x.shape[-2:]
    matrices = matrices.to(device=x.device, dtype=x.dtype)
    out = torch.empty_like(x)
    for mode in sorted(set(modes)):
        index = torch.tensor([i for i, m in enumerate(modes) if m == mode], device=x.device)
        out[index] = warp_affine(
            x[index], matrices[index], (height, width), mode=mode, padding_mode="zeros", align_corners=True
        )
    return out.clamp_(0.0, 1.0)


def batch_binary_erosion(masks: Tensor, sizes: Sequence[int]) -> Tensor:
    """Erode each mask by its own elliptical kernel; pixels outside the image count as set.

    The batched GPU twin of :func:`mematte.data.composition.binary_erosion` with
    :func:`~mematte.data.composition.ellipse_kernel` (replicated border, anchor at
    ``size // 2``): one grouped convolution counts the unset pixels under each kernel.

    Args:
        masks: (N, 1, H, W) bool.
        sizes: N kernel sizes (>= 1).

    Returns:
        (N, 1, H, W) bool eroded masks.
    """
    count, _, height, width = masks.shape
    if len(sizes) != count:
        raise ValueError(f"{len(sizes)} kernel sizes for {count} masks")
    box = max(sizes) | 1  # odd box: every kernel's anchor sits on the box centre
    weights = torch.zeros(count, 1, box, box, dtype=torch.float32)
    for i, size in enumerate(sizes):
        offset = box // 2 - size // 2
        weights[i, 0, offset : offset + size, offset : offset + size] = torch.from_numpy(ellipse_kernel(size))
    holes = (~masks).to(torch.float32).view(1, count, height, width)
    pad = box // 2
    holes = F.pad(holes, (pad, pad, pad, pad), mode="replicate")
    # counts are small integers: exact in float32 (TF32 only rounds inputs, which are 0/1)
    covered = F.conv2d(holes, weights.to(masks.device), groups=count)
    return (covered < 0.5).view(count, 1, height, width)


def random_trimap(alpha: Tensor, fg_sizes: Sequence[int], bg_sizes: Sequence[int]) -> Tensor:
    """Trimap from alpha by eroding pure foreground / background with the given kernel sizes.

    Args:
        alpha: (B, 1, H, W) in [0, 1].
        fg_sizes, bg_sizes: B kernel sizes in pixels of this image.

    Returns:
        (B, 1, H, W) float32 with values in {0, 0.5, 1}.
    """
    batch = alpha.shape[0]
    pure = torch.cat([alpha >= 1.0 - ALPHA_EPS, alpha <= ALPHA_EPS], dim=0)
    eroded = batch_binary_erosion(pure, list(fg_sizes) + list(bg_sizes))
    trimap = torch.full_like(alpha, TRIMAP_UNKNOWN, dtype=torch.float32)
    trimap = torch.where(eroded[:batch], torch.ones_like(trimap), trimap)
    return torch.where(eroded[batch:], torch.zeros_like(trimap), trimap)


def crop_centres(trimap: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor]:
    """One uniformly drawn unknown pixel per sample (a uniform pixel when there is none).

    Runs on the trimap's device without host synchronisation: the k-th unknown pixel is found
    by a search in the running count of unknown pixels.

    Args:
        trimap: (B, 1, H, W) in {0, 0.5, 1}.
        uniform: (B,) uniform numbers in [0, 1) (drawn by the caller's generator).

    Returns:
        (rows (B,), cols (B,)) long tensors on the trimap's device.
    """
    batch, _, height, width = trimap.shape
    unknown = (trimap == TRIMAP_UNKNOWN).view(batch, -1)
    running = unknown.cumsum(dim=1)
    total = running[:, -1]
    uniform = uniform.to(trimap.device, torch.float64)
    rank = torch.minimum((uniform * total).long(), (total - 1).clamp_min(0))
    index = torch.searchsorted(running, (rank + 1)[:, None]).squeeze(1)
    fallback = (uniform * (height * width)).long().clamp_max(height * width - 1)
    index = torch.where(total > 0, index, fallback)
    return index // width, index % width


def crop_batch(tensors: Mapping[str, Tensor], rows: Tensor, cols: Tensor, size: int) -> dict[str, Tensor]:
    """Crop ``size``² windows centred on (rows, cols), shifted to stay inside the image.

    Args:
        tensors: name -> (B, C, H, W), all with the same B, H, W (H, W >= size).
        rows, cols: (B,) centre pixels.
        size: crop side.

    Returns:
        name -> (B, C, size, size).
    """
    first = next(iter(tensors.values()))
    batch, _, height, width = first.shape
    if height < size or width < size:
        raise ValueError(
            f"cannot crop {size}x{size} from a {height}x{width} canvas: set the train set's "
            f"image_size >= crop_size"
        )
    device = first.device
    top = (rows - size // 2).clamp(0, height - size)
    left = (cols - size // 2).clamp(0, width - size)
    offsets = torch.arange(size, device=device)
    row_index = (top[:, None] + offsets)[:, :, None]  # (B, size, 1)
    col_index = (left[:, None] + offsets)[:, None, :]  # (B, 1, size)
    batch_index = torch.arange(batch, device=device)[:, None, None]
    # advanced indices around a slice put the indexed dims first: (B, size, size, C)
    return {
        name: tensor[batch_index, :, row_index, col_index].permute(0, 3, 1, 2).contiguous()
        for name, tensor in tensors.items()
    }


def hsv_jitter(
    rgb: Tensor, weight: Tensor, hue_shift_deg: Tensor, sat_uniform: Tensor, val_uniform: Tensor
) -> Tensor:
    """ViTMatte's ``RandomJitter`` on a batch.

    Hue is rotated by ``hue_shift_deg``; saturation s becomes |s + j| reflected at 1 with
    j = u·(1.1 − s̄)/5 − (1.1 − s̄)/10, where s̄ is the mean saturation over ``weight > 0``
    (value alike). Samples whose weight is empty are returned unchanged.

    Args:
        rgb: (B, 3, H, W) in [0, 1].
        weight: (B, 1, H, W) where to measure the mean (α for a foreground).
        hue_shift_deg: (B,) hue rotation in degrees; sat_uniform, val_uniform: (B,) in [0, 1).

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    device = rgb.device
    hsv = rgb_to_hsv(rgb)
    hue, sat, val = hsv.unbind(dim=1)
    mask = (weight[:, 0] > 0).to(rgb.dtype)
    area = mask.flatten(1).sum(dim=1)
    valid = area > 0

    def shifted(channel: Tensor, uniform: Tensor) -> Tensor:
        mean = (channel * mask).flatten(1).sum(dim=1) / area.clamp_min(1.0)
        spread = 1.1 - mean
        offset = uniform.to(device, rgb.dtype) * spread / 5.0 - spread / 10.0
        out = (channel + offset.view(-1, 1, 1)).abs()
        return torch.where(out > 1.0, 2.0 - out, out)

    hue = torch.remainder(hue + torch.deg2rad(hue_shift_deg.to(device, rgb.dtype)).view(-1, 1, 1), 2 * math.pi)
    jittered = hsv_to_rgb(torch.stack([hue, shifted(sat, sat_uniform), shifted(val, val_uniform)], dim=1))
    return torch.where(valid.view(-1, 1, 1, 1), jittered.clamp(0.0, 1.0), rgb)


# ------------------------------------------------------------------------------ module
class MattingAugment(nn.Module):
    """GPU-friendly matting augmentation of whole batches (see the module docstring).

    Args:
        crop_size: side of the output crops; None keeps the canvas (no crop).
        merge_prob: probability of layering a second foreground (0 disables the step).
        flip_prob: probability of a horizontal flip (0 disables).
        vflip_prob: probability of a vertical flip, drawn independently of the horizontal one
            (0.5 as in ViTMatte/MEMatte's RandomAffine; 0 = horizontal flips only, this
            module's behaviour before it followed the official pipeline).
        affine: enable the random rotation / scale / shear warp.
        degrees: rotation range ±degrees.
        rotate_min_size: rotate only samples whose source longer side is >= this many pixels
            (1024 as in the official RandomAffine, which sets degrees to 0 below it; scale and
            shear still apply). Read per sample from the batch's "source_size", else
            "source_extent", else the canvas side. 0 = rotate every sample.
        scale: (min, max) scale, drawn independently for x and y (as in ViTMatte).
        shear: shear range ±shear degrees.
        interpolations: modes the warp draws from per sample (one entry = fixed mode).
        jitter: enable the HSV jitter of the foreground.
        hue_degrees: hue shift drawn from the integers in [−hue_degrees, hue_degrees).
        trimap_kernel_range: half-open range of erosion kernel sizes at the reference size.
        trimap_reference_size: image side the kernel sizes refer to (640 in ViTMatte).
        seed: seed of the module's own generator (used when forward gets none).
    """

    def __init__(
        self,
        crop_size: int | None = 512,
        merge_prob: float = 0.5,
        flip_prob: float = 0.5,
        vflip_prob: float = 0.5,
        affine: bool = True,
        degrees: float = 30.0,
        rotate_min_size: float = 1024,
        scale: Sequence[float] = (0.8, 1.25),
        shear: float = 10.0,
        interpolations: Sequence[str] = INTERPOLATIONS,
        jitter: bool = True,
        hue_degrees: int = 40,
        trimap_kernel_range: Sequence[int] = (1, 30),
        trimap_reference_size: int = 640,
        seed: int = 0,
    ) -> None:
        super().__init__()
        unknown = [m for m in interpolations if m not in INTERPOLATIONS]
        if unknown or not interpolations:
            raise ValueError(f"interpolations {list(interpolations)}: pick from {list(INTERPOLATIONS)}")
        low, high = (int(k) for k in trimap_kernel_range)
        if not 1 <= low < high:
            raise ValueError(f"trimap_kernel_range must satisfy 1 <= low < high, got {trimap_kernel_range}")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be >= 1 or None, got {crop_size}")
        if rotate_min_size < 0:
            raise ValueError(f"rotate_min_size must be >= 0 (0 = always rotate), got {rotate_min_size}")
        self.crop_size = None if crop_size is None else int(crop_size)
        self.merge_prob = float(merge_prob)
        self.flip_prob = float(flip_prob)
        self.vflip_prob = float(vflip_prob)
        self.affine = bool(affine)
        self.degrees = float(degrees)
        self.rotate_min_size = float(rotate_min_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.shear = float(shear)
        self.interpolations = tuple(interpolations)
        self.jitter = bool(jitter)
        self.hue_degrees = int(hue_degrees)
        self.trimap_kernel_range = (low, high)
        self.trimap_reference_size = int(trimap_reference_size)
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        return (
            f"crop_size={self.crop_size}, merge_prob={self.merge_prob}, flip_prob={self.flip_prob}, "
            f"vflip_prob={self.vflip_prob}, affine={self.affine}, rotate_min_size={self.rotate_min_size:g}, "
            f"jitter={self.jitter}, "
            f"interpolations={list(self.interpolations)}"
        )

    def reseed(self, seed: int) -> None:
        """Restart the module's own generator from ``seed`` (e.g. seed + global rank)."""
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def generator(self) -> torch.Generator:
        """The module's CPU generator (created lazily so the module pickles cheaply)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def _uniform(self, gen: torch.Generator, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen)

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Augment one collated batch (see the module docstring for keys and shapes)."""
        gen = generator if generator is not None else self.generator
        layered = "fg" in batch
        if layered:
            fg, bg = batch["fg"].float(), batch["bg"].float()
        else:
            fg, bg = batch["image"].float(), None
        alpha = batch["alpha"].float()
        size, _, height, width = alpha.shape
        # All random numbers are drawn up front, in a fixed order, whatever is enabled: a
        # switch never shifts the stream the other steps see.
        draws = {
            "merge": self._uniform(gen, size),
            "partner": torch.randint(0, max(size - 1, 1), (size,), generator=gen),
            "flip": self._uniform(gen, size),
            "vflip": self._uniform(gen, size),
            "angle": self._uniform(gen, size),
            "scale": self._uniform(gen, size, 2),
            "shear": self._uniform(gen, size),
            "mode": torch.randint(0, len(self.interpolations), (size,), generator=gen),
            "kernels": torch.randint(*self.trimap_kernel_range, (size, 2), generator=gen),
            "centre": self._uniform(gen, size),
            # integers in [-h, h) like ViTMatte's randint(-40, 40); [0, 1) when h == 0
            "hue": torch.randint(-self.hue_degrees, max(self.hue_degrees, 1), (size,), generator=gen),
            "sat": self._uniform(gen, size),
            "val": self._uniform(gen, size),
        }

        # longer side of each source: in canvas pixels (trimap kernels) and as the official
        # pipeline measures it before its affine (rotation gate); the canvas when not given
        extents = self._per_sample(batch.get("source_extent"), float(max(height, width)), size)
        given = batch.get("source_size")
        source_sizes = extents if given is None else self._per_sample(given, 0.0, size)

        if layered and self.merge_prob > 0:
            fg, alpha = self._merge(fg, alpha, draws)
        fg, alpha = self._flip(fg, alpha, draws)
        if self.affine:
            rotate = torch.tensor([s >= self.rotate_min_size for s in source_sizes])
            fg, alpha = self._warp(fg, alpha, draws, rotate)

        kernel_scale = [e / self.trimap_reference_size for e in extents]
        fg_sizes = [max(1, round(int(k) * s)) for k, s in zip(draws["kernels"][:, 0], kernel_scale)]
        bg_sizes = [max(1, round(int(k) * s)) for k, s in zip(draws["kernels"][:, 1], kernel_scale)]
        trimap = random_trimap(alpha, fg_sizes, bg_sizes)

        layers = {"fg": fg, "alpha": alpha, "trimap": trimap}
        if bg is not None:
            layers["bg"] = bg
        if self.crop_size is not None:
            rows, cols = crop_centres(trimap, draws["centre"])
            layers = crop_batch(layers, rows, cols, self.crop_size)
        fg, alpha = layers["fg"], layers["alpha"]

        if self.jitter:
            weight = alpha if layered else torch.ones_like(alpha)
            fg = hsv_jitter(fg, weight, draws["hue"].float(), draws["sat"], draws["val"])

        out: dict[str, Any] = {"alpha": alpha, "trimap": layers["trimap"]}
        if layered:
            bg = layers["bg"]
            out["image"] = (bg + alpha * (fg - bg)).clamp_(0.0, 1.0)
            out["fg"], out["bg"] = fg, bg
        else:
            out["image"] = fg
        if "name" in batch:
            out["name"] = batch["name"]
        return out

    # -------------------------------------------------------------------------- helpers
    @staticmethod
    def _per_sample(value: Any, default: float, size: int) -> list[float]:
        """A per-sample size from the batch as B floats (``default`` for every sample if None)."""
        if value is None:
            return [default] * size
        values = [float(v) for v in torch.as_tensor(value).reshape(-1).tolist()]
        if len(values) != size:
            raise ValueError(f"{len(values)} per-sample sizes for a batch of {size}")
        return values

    def _merge(self, fg: Tensor, alpha: Tensor, draws: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        size = fg.shape[0]
        if size > 1:
            # another sample of the batch: offset 1..B-1, never the sample itself
            partner = (torch.arange(size) + 1 + draws["partner"]) % size
            fg_over, alpha_over = fg[partner.to(fg.device)], alpha[partner.to(fg.device)]
        else:  # a lone sample layers its own mirror image
            fg_over, alpha_over = fg.flip(-1), alpha.flip(-1)
        return merge_second_foreground(fg, alpha, fg_over, alpha_over, draws["merge"] < self.merge_prob)

    def _flip(self, fg: Tensor, alpha: Tensor, draws: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        for prob, key, dim in ((self.flip_prob, "flip", -1), (self.vflip_prob, "vflip", -2)):
            if prob <= 0:
                continue
            chosen = (draws[key] < prob).to(fg.device).view(-1, 1, 1, 1)
            fg = torch.where(chosen, fg.flip(dim), fg)
            alpha = torch.where(chosen, alpha.flip(dim), alpha)
        return fg, alpha

    def _warp(
        self, fg: Tensor, alpha: Tensor, draws: dict[str, Tensor], rotate: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Random affine; ``rotate`` (B,) bool says which samples may be rotated."""
        height, width = alpha.shape[-2:]
        low, high = self.scale
        # the angle is drawn for every sample (fixed stream) and zeroed where not rotated
        angle = torch.where(rotate, (draws["angle"] * 2 - 1) * self.degrees, torch.zeros_like(draws["angle"]))
        matrices = affine_matrices(
            angle_deg=angle,
            scale_xy=low + draws["scale"] * (high - low),
            shear_deg=(draws["shear"] * 2 - 1) * self.shear,
            height=height,
            width=width,
        )
        modes = [self.interpolations[int(i)] for i in draws["mode"]]
        # fg and alpha stacked: one warp, so both get exactly the same transform and sampling
        warped = warp_per_sample(torch.cat([fg, alpha], dim=1), matrices, modes)
        return warped[:, :3], warped[:, 3:]
