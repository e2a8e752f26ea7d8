"""A fusion block's ×2 bilinear upsample and 3×3 conv as one 3×3 conv at the input's resolution.

The last fusion block of ViTMatte's decoder upsamples a (B, C, h, w) map ×2 (bilinear,
``align_corners=False``), concatenates the (B, D, 2h, 2w) detail level and applies a 3×3 conv.
Both steps are linear, so every output pixel ``(2i + p, 2j + q)`` is a linear function of the
3×3 neighbourhood of input pixel ``(i, j)``:

* an upsampled row ``2k`` is ``¼·x[k−1] + ¾·x[k]`` and row ``2k + 1`` is ``¾·x[k] + ¼·x[k+1]``
  (the same along columns), so the three upsampled rows a conv tap reads for output row
  ``2i + p`` come from input rows ``i − 1 … i + 1``;
* the detail level, rearranged space-to-depth into (B, 4·D, h, w), is read at input rows
  ``i − 1 … i + 1`` too.

So the block is one 3×3 conv over ``[s2d(detail), x]`` (4·D + C channels) with 4·C_out outputs,
one per output phase ``(p, q)``, followed by depth-to-space. For the last block (C = 64, D = 4,
C_out = 32) that conv is 80 → 128 channels: wide enough for a Winograd convolution
(:mod:`mematte.models.winograd`), which a 68 → 32 conv at full resolution is not, and
neither the upsampled map nor the concat is ever written at full resolution.

Borders: bilinear upsampling clamps at the input border, which is the same as padding ``x``
by replicating its edge. The conv pads the upsampled map with zeros instead, so the phase
form, run on the replicate-padded ``x``, differs from the block in the outermost output row
or column on each side only; :func:`~mematte.models.decoder.FusionBlock` recomputes those
directly where they are real borders of its input.
"""

from __future__ import annotations

import torch
from torch import Tensor

# _UPSAMPLE_TAPS[p][t]: weights of input offsets −1, 0, +1 (relative to i) in the ×2 upsampled
# row 2i + p + t − 1 that conv tap t (0, 1, 2) of output phase p reads
_UPSAMPLE_TAPS = (
    ((0.75, 0.25, 0.0), (0.25, 0.75, 0.0), (0.0, 0.75, 0.25)),  # p = 0: rows 2i−1, 2i, 2i+1
    ((0.25, 0.75, 0.0), (0.0, 0.75, 0.25), (0.0, 0.25, 0.75)),  # p = 1: rows 2i, 2i+1, 2i+2
)


def phase_conv_weight(weight: Tensor, detail_chans: int) -> Tensor:
    """The low-resolution conv equal to ``conv(cat[detail, up×2(x)])``.

    Args:
        weight: (C_out, D + C, 3, 3), the conv over the concat (detail channels first).
        detail_chans: D.

    Returns:
        (4·C_out, 4·D + C, 3, 3) in ``weight``'s dtype (computed in float64). Output channel
        ``(2p + q)·C_out + o`` is output ``o`` at phase (p, q); input channel
        ``(2s + t)·D + d`` is detail channel ``d`` at pixel (2i + s, 2j + t), then the C
        channels of ``x``.
    """
    c_out, c_all = weight.shape[:2]
    d = detail_chans
    w64 = weight.detach().double()
    taps = torch.tensor(_UPSAMPLE_TAPS, dtype=torch.float64, device=weight.device)  # (p, t, a)
    # upsampled part: sum over the taps (t, u) of w · taps[p][t][a] · taps[q][u][b]
    up = torch.einsum("octu,pta,qub->pqocab", w64[:, d:], taps, taps)
    # detail part: tap t of phase p reads full-resolution row 2i + p + t − 1, which is row
    # 2(i + a − 1) + s with a = (p + t + 1) // 2 and s = (p + t + 1) % 2
    det = w64.new_zeros((2, 2, c_out, 2, 2, d, 3, 3))
    for p in range(2):
        for t in range(3):
            a, s = divmod(p + t + 1, 2)
            for q in range(2):
                for u in range(3):
                    b, r = divmod(q + u + 1, 2)
                    det[p, q, :, s, r, :, a, b] = w64[:, :d, t, u]
    out = torch.cat([det.reshape(4 * c_out, 4 * d, 3, 3), up.reshape(4 * c_out, c_all - d, 3, 3)], dim=1)
    return out.to(weight.dtype)


def pack_phase_input(padded_buffer: Tensor, x: Tensor, detail: Tensor) -> None:
    """Write ``[s2d(detail), x]`` into a zero-bordered (B, h + 2 …, w + 2 …, 4·D + C)
    channels-last buffer (:class:`~mematte.models.winograd.PaddedInput`) and replace the
    border of ``x``'s channels by its edge (the bilinear clamp); the detail border stays zero.

    Args:
        padded_buffer: the buffer, one border row/column above and left of the image.
        x: (B, C, h, w).  detail: (B, D, 2h, 2w).
    """
    b, c, h, w = x.shape
    d = detail.shape[1]
    buf = padded_buffer
    inner = buf[:, 1 : h + 1, 1 : w + 1]
    # (B, D, 2h, 2w) → (B, h, w, s, t, D)
    inner[..., : 4 * d].unflatten(-1, (2, 2, d)).copy_(
        detail.unflatten(2, (h, 2)).unflatten(4, (w, 2)).permute(0, 2, 4, 3, 5, 1)
    )
    inner[..., 4 * d :].copy_(x.permute(0, 2, 3, 1))
    xs = buf[..., 4 * d :]
    xs[:, 0, 1 : w + 1] = xs[:, 1, 1 : w + 1]
    xs[:, h + 1, 1 : w + 1] = xs[:, h, 1 : w + 1]
    xs[:, : h + 2, 0] = xs[:, : h + 2, 1]
    xs[:, : h + 2, w + 1] = xs[:, : h + 2, w]


def depth_to_space(y: Tensor, c_out: int) -> Tensor:
    """(B, 4·C_out, h, w) phase outputs → (B, C_out, 2h, 2w), channels-last.

    Output channel ``(2p + q)·C_out + o`` of ``y`` goes to pixel (2i + p, 2j + q), channel o.
    """
    b, _, h, w = y.shape
    out = y.new_empty((b, 2 * h, 2 * w, c_out))
    out.view(b, h, 2, w, 2, c_out).copy_(
        y.permute(0, 2, 3, 1).unflatten(-1, (2, 2, c_out)).permute(0, 1, 3, 2, 4, 5)
    )
    return out.permute(0, 3, 1, 2)
