"""ViTMatte's detail-capture decoder: a light conv stream fused with the ViT features.

Names follow the official code (``convstream.convs.{i}.{conv,bn}``,
``fusion_blks.{i}.conv.{conv,bn}``, ``matting_head.matting_convs.{0,1,3}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNReLU(nn.Module):
    """3×3 conv (no bias) + BatchNorm + ReLU (``Basic_Conv3x3`` in ViTMatte)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, C_out, H/stride, W/stride)."""
        return self.relu(self.bn(self.conv(x)))


class ConvStream(nn.Module):
    """Stride-2 conv pyramid over the 4-channel input: detail features at 1/2, 1/4, 1/8.

    Args:
        in_chans: input channels (4).
        out_chans: widths of the three levels (48, 96, 192).
    """

    def __init__(self, in_chans: int = 4, out_chans: Sequence[int] = (48, 96, 192)) -> None:
        super().__init__()
        self.conv_chans = [in_chans, *out_chans]
        self.convs = nn.ModuleList(
            ConvBNReLU(cin, cout) for cin, cout in zip(self.conv_chans[:-1], self.conv_chans[1:])
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B, 4, H, W) → [D0 = x (1/1), D1 (1/2), D2 (1/4), D3 (1/8)]."""
        levels = [x]
        for conv in self.convs:
            x = conv(x)
            levels.append(x)
        return levels


class FusionBlock(nn.Module):
    """Upsample ×2 (bilinear), concatenate a detail level, 3×3 conv + BN + ReLU."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chans, out_chans, stride=1)

    def forward(self, x: Tensor, detail: Tensor) -> Tensor:
        """x: (B, C, h, w), detail: (B, D, 2h, 2w) → (B, C_out, 2h, 2w)."""
        up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([detail, up], dim=1))


class MattingHead(nn.Module):
    """3×3 conv → BN → ReLU → 1×1 conv to one alpha logit."""

    def __init__(self, in_chans: int = 32, mid_chans: int = 16) -> None:
        super().__init__()
        self.matting_convs = nn.Sequential(
            nn.Conv2d(in_chans, mid_chans, 3, 1, 1),
            nn.BatchNorm2d(mid_chans),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_chans, 1, 1, 1, 0),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → logits (B, 1, H, W)."""
        return self.matting_convs(x)


class DetailCapture(nn.Module):
    """Detail-capture decoder (ViTMatte): ViT features + conv stream → alpha in [0, 1].

    Args:
        in_chans: ViT channels C.
        img_chans: input channels of the conv stream (4).
        convstream_out: conv-stream widths at 1/2, 1/4, 1/8.
        fusion_out: fusion widths at 1/8, 1/4, 1/2, 1/1.
    """

    def __init__(
        self,
        in_chans: int = 384,
        img_chans: int = 4,
        convstream_out: Sequence[int] = (48, 96, 192),
        fusion_out: Sequence[int] = (256, 128, 64, 32),
    ) -> None:
        super().__init__()
        if len(fusion_out) != len(convstream_out) + 1:
            raise ValueError(
                f"fusion_out needs one more level than convstream_out, got {list(fusion_out)} "
                f"and {list(convstream_out)}"
            )
        self.convstream = ConvStream(img_chans, convstream_out)
        conv_chans = self.convstream.conv_chans
        fus_chans = [in_chans, *fusion_out]
        self.fusion_blks = nn.ModuleList(
            FusionBlock(fus_chans[i] + conv_chans[-(i + 1)], fus_chans[i + 1])
            for i in range(len(fusion_out))
        )
        self.matting_head = MattingHead(fusion_out[-1])

    def forward(self, features: Tensor, images: Tensor) -> Tensor:
        """features: (B, C, H/16, W/16), images: (B, 4, H, W) normalised → alpha (B, 1, H, W)."""
        details = self.convstream(images)
        x = features
        for i, fusion in enumerate(self.fusion_blks):
            x = fusion(x, details[len(self.fusion_blks) - i - 1])
        return torch.sigmoid(self.matting_head(x))
