"""ViTMatte / MEMatte: ViT backbone over RGB + trimap, then the detail-capture decoder.

One class for both: a backbone built without routers is ViTMatte; with routed global blocks it
is MEMatte. The input normalisation lives here as buffers so that it travels with the weights
(the official code normalises with ImageNet statistics; other ports use 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mematte.models.decoder import DetailCapture
from mematte.models.vit import RoutingInfo, ViT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MattingOutput:
    """Net result.

    Attributes:
        alpha: (B, 1, H, W) in [0, 1], cropped back to the input size.
        features: (B, C, Hp/16, Wp/16) last backbone features (for distillation).
        routing: per routed block decisions (empty for ViTMatte).
    """

    alpha: Tensor
    features: Tensor
    routing: list[RoutingInfo] = field(default_factory=list)


PADDINGS: tuple[str, ...] = ("aligned", "official")


def padded_size(height: int, width: int, multiple: int, padding: str = "aligned") -> tuple[int, int]:
    """The (H, W) an image is zero-padded to at its bottom / right.

    ``aligned`` pads only the sides that need it, each to its next multiple. ``official`` is the
    public ViTMatte / MEMatte rule: when either side is unaligned, *both* get
    ``multiple − side % multiple``, so an aligned side grows by a full ``multiple``
    (1080×1920 → 1088×1952); an image with both sides aligned is not padded.
    """
    if padding == "aligned":
        return height + (-height) % multiple, width + (-width) % multiple
    if padding == "official":
        if height % multiple == 0 and width % multiple == 0:
            return height, width
        return height + multiple - height % multiple, width + multiple - width % multiple
    raise ValueError(f"padding={padding!r}: choose one of {list(PADDINGS)}")


def pad_to_multiple(x: Tensor, multiple: int, padding: str = "aligned") -> Tensor:
    """Zero-pad bottom/right to :func:`padded_size`.

    Args:
        x: (B, C, H, W).
        multiple: the size divisor.
        padding: ``aligned`` (ours) or ``official`` (see :func:`padded_size`).

    Returns:
        (B, C, Hp, Wp).
    """
    h, w = x.shape[-2:]
    hp, wp = padded_size(h, w, multiple, padding)
    if (hp, wp) != (h, w):
        x = F.pad(x, (0, wp - w, 0, hp - h))
    return x


def token_unknown_share(trimap: Tensor, patch_size: int, size_divisor: int) -> Tensor:
    """Share of each backbone token's patch that lies in the trimap's unknown region.

    The token grid is the one :class:`MattingNet` feeds its backbone: the trimap zero-padded
    bottom/right to a multiple of ``size_divisor`` (padding counts as known background, so
    padded pixels are not unknown), cut into ``patch_size``² patches (the patch embedding's
    stride), flattened row-major like the backbone's tokens.

    Args:
        trimap: (B, 1, H, W) in {0, 0.5, 1}; unknown = exactly 0.5 (the data contract).
        patch_size: the backbone's patch side.
        size_divisor: the net's padding multiple (a multiple of ``patch_size``).

    Returns:
        (B, h·w) float32 in [0, 1], ``h = Hp / patch_size``, ``w = Wp / patch_size``: the grid
        of :class:`~mematte.models.vit.RoutingInfo`.
    """
    if trimap.ndim != 4 or trimap.shape[1] != 1:
        raise ValueError(f"expected a trimap (B, 1, H, W), got {tuple(trimap.shape)}")
    if size_divisor % patch_size:
        raise ValueError(f"size_divisor={size_divisor} must be a multiple of patch_size={patch_size}")
    unknown = pad_to_multiple((trimap == 0.5).float(), size_divisor)
    return F.avg_pool2d(unknown, kernel_size=patch_size, stride=patch_size).flatten(1)


class MattingNet(nn.Module):
    """Alpha matting network.

    Args:
        backbone: the ViT (optionally with routed global blocks).
        decoder: the detail-capture decoder; its ``in_chans`` must equal the backbone width.
        pixel_mean, pixel_std: RGB normalisation applied to images in [0, 1].
        size_divisor: inputs are zero-padded (after normalisation) to a multiple of this.
    """

    def __init__(
        self,
        backbone: ViT,
        decoder: DetailCapture,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        if size_divisor % backbone.patch_size:
            raise ValueError(
                f"size_divisor={size_divisor} must be a multiple of the patch size "
                f"{backbone.patch_size}"
            )
        self.backbone = backbone
        self.decoder = decoder
        self.size_divisor = size_divisor
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1))

    @property
    def is_routed(self) -> bool:
        """True for MEMatte (some global block has a router)."""
        return len(self.backbone.routed_blocks) > 0

    def token_unknown_share(self, trimap: Tensor) -> Tensor:
        """Unknown share of each backbone token: (B, 1, H, W) → (B, h·w) (see :func:`token_unknown_share`)."""
        return token_unknown_share(trimap, self.backbone.patch_size, self.size_divisor)

    def prepare_inputs(self, image: Tensor, trimap: Tensor, padding: str = "aligned") -> Tensor:
        """Normalise RGB, append the trimap, pad.

        Args:
            image: (B, 3, H, W) RGB in [0, 1].
            trimap: (B, 1, H, W) in {0, 0.5, 1} (or value / 255 under the official preset).
            padding: ``aligned`` or ``official`` (:func:`padded_size`).

        Returns:
            (B, 4, Hp, Wp) network input.
        """
        return self.lazy_inputs(image, trimap, padding).materialize()

    def lazy_inputs(self, image: Tensor, trimap: Tensor, padding: str = "aligned") -> LazyInput:
        """The network input of :meth:`prepare_inputs`, computed window by window on demand
        (:class:`LazyInput`): at inference nothing full-resolution besides the given image
        and trimap needs to exist (the backbone embeds it in strips, the decoder reads its
        windows). ``image`` may also be uint8 (divided by 255 per window)."""
        if image.shape[-2:] != trimap.shape[-2:]:
            raise ValueError(
                f"image {tuple(image.shape[-2:])} and trimap {tuple(trimap.shape[-2:])} differ in size"
            )
        return LazyInput(image, trimap, self.pixel_mean, self.pixel_std,
                         padded_size(*image.shape[-2:], self.size_divisor, padding))

    def forward(self, image: Tensor, trimap: Tensor, padding: str = "aligned") -> MattingOutput:
        """image: (B, 3, H, W) in [0, 1], trimap: (B, 1, H, W) in {0, 0.5, 1} → alpha (B, 1, H, W).

        ``padding``: ``aligned`` or ``official`` (:func:`padded_size`)."""
        h, w = image.shape[-2:]
        x = self.prepare_inputs(image, trimap, padding)
        out = self.backbone(x)
        alpha = self.decoder(out.features, x)[..., :h, :w]
        return MattingOutput(alpha=alpha, features=out.features, routing=out.routing)


class LazyInput:
    """The (B, 4, Hp, Wp) network input (normalised RGB, trimap, zero padding) without
    materialising it: :meth:`crop` computes one window with elementwise operations only, so a
    crop equals the same slice of the full input (:meth:`materialize`, which is what
    :meth:`MattingNet.prepare_inputs` returns).

    ``image`` may stay uint8 (divided by 255 per window, as the predictor does for the whole
    image). ``shape`` and ``ndim`` mimic a tensor; :meth:`to` sets the dtype and memory format
    the crops come in.
    """

    ndim = 4

    def __init__(self, image: Tensor, trimap: Tensor, mean: Tensor, std: Tensor,
                 padded: tuple[int, int], dtype: torch.dtype | None = None,
                 memory_format: torch.memory_format | None = None) -> None:
        self.image, self.trimap, self.mean, self.std = image, trimap, mean, std
        self.padded = padded
        self.dtype, self.memory_format = dtype, memory_format
        self.shape = torch.Size((image.shape[0], 4, *padded))

    def to(self, dtype: torch.dtype | None = None, memory_format: torch.memory_format | None = None) -> LazyInput:
        """The same input, its crops converted to ``dtype`` / ``memory_format``."""
        return LazyInput(self.image, self.trimap, self.mean, self.std, self.padded,
                         dtype or self.dtype, memory_format or self.memory_format)

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """Rows ``y0:y1`` and columns ``x0:x1`` of the padded input: (B, 4, y1 − y0, x1 − x0)."""
        h, w = self.image.shape[-2:]
        image = self.image[:, :, y0 : min(y1, h), x0 : min(x1, w)]
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        x = torch.cat([(image - self.mean) / self.std, self.trimap[:, :, y0:y1, x0:x1].to(image.dtype)], dim=1)
        if x.shape[-2:] != (y1 - y0, x1 - x0):  # the zero padding at the bottom / right
            x = F.pad(x, (0, x1 - x0 - x.shape[-1], 0, y1 - y0 - x.shape[-2]))
        if self.dtype is not None or self.memory_format is not None:
            x = x.to(dtype=self.dtype or x.dtype, memory_format=self.memory_format or torch.contiguous_format)
        return x

    def materialize(self) -> Tensor:
        """The whole input as one tensor."""
        return self.crop(0, self.shape[2], 0, self.shape[3])


def as_tensor(x: Tensor | LazyInput) -> Tensor:
    """A tensor as it is; a :class:`LazyInput` materialised."""
    return x.materialize() if isinstance(x, LazyInput) else x


def crop_input(x: Tensor | LazyInput, y0: int, y1: int, x0: int, x1: int) -> Tensor:
    """``x[:, :, y0:y1, x0:x1]`` of a tensor or a :class:`LazyInput`."""
    return x.crop(y0, y1, x0, x1) if isinstance(x, LazyInput) else x[:, :, y0:y1, x0:x1]


def clamp_to_trimap(alpha: Tensor, trimap: Tensor) -> Tensor:
    """Force known regions: 0 where the trimap is background, 1 where it is foreground.

    alpha, trimap: (B, 1, H, W) → (B, 1, H, W).
    """
    alpha = torch.where(trimap <= 0.0, torch.zeros_like(alpha), alpha)
    return torch.where(trimap >= 1.0, torch.ones_like(alpha), alpha)
