"""Winograd F(4×4, 3×3) convolution for fp32 CPU inference of the decoder's wide 3×3 convs.

A 3×3 stride-1 convolution computes each 4×4 block of outputs from a 6×6 block of inputs. The
Winograd form (Lavin & Gray, 2016) transforms both into a 6×6 domain, where the convolution
becomes 36 independent matrix products over channels, and transforms the 36 products back:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A      (per channel pair, summed over input channels)

That is 36 multiply-adds per input/output channel pair for 16 outputs instead of 144: the
decoder's 576→256, 352→128 and 176→64 fusion convs ran 1.3–2.3× faster than oneDNN's direct
convolution on a CPU (fp32, one thread; ``make bench`` measures the end-to-end effect). The transforms
are small matrix products over the 6×6 positions of tiles gathered by strided views, done
chunk by chunk so that a chunk's tiles stay in cache.

Accuracy: the transforms use the interpolation points 0, ±1, ±2 (the usual choice), whose
fp32 rounding error is a few times that of a direct convolution (measured: max error 5e-5
on outputs of magnitude 7, against 1.5e-5 for oneDNN's direct convolution, both against a
float64 reference). The weight transform is computed in float64.

Only for inference: no autograd, fp32, CPU with at most :data:`MAX_THREADS` intra-op threads,
3×3 kernels with stride 1, padding 1, no groups or dilation (:func:`winograd_applies`).
Training and every other case use ``F.conv2d``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Lavin & Gray's F(4, 3) matrices (points 0, ±1, ±2, ∞): input transform Bᵀ (6×6), weight
# transform G (6×3), output transform Aᵀ (4×6).
_BT = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_AT = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)

# Below this many input × output channels the transforms cost more than they save (measured:
# 68→32 and 32→16 are slower than oneDNN's direct convolution, 176→64 is 1.3× faster).
MIN_CHANNEL_PRODUCT = 8192

# Up to this many intra-op threads (torch.get_num_threads()). The chunked transforms scale
# worse with threads than oneDNN's direct convolution (decoder at 1024², measured: 1.4×
# faster on 1 thread, 1.2× on 2); more threads were not measured, so they keep the direct one.
MAX_THREADS = 2

# Bytes of transformed input per chunk (its 36 matrices): small enough to stay in cache
# between the gather, the products and the output transform (measured: 4–8 MiB best).
CHUNK_BYTES = 4 << 20


def winograd_weight(weight: Tensor) -> Tensor:
    """The weight in the Winograd domain, ``G g Gᵀ`` for every channel pair.

    Args:
        weight: (C_out, C_in, 3, 3).

    Returns:
        (36, C_in, C_out) in ``weight``'s dtype, computed in float64.
    """
    c_out, c_in = weight.shape[:2]
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    # vec(G w Gᵀ) = (G ⊗ G) vec(w) for row-major vec: one (36, 9) GEMM over every channel
    # pair (3× faster than 6×3 matrix products per pair, the first call's cost at start-up)
    kron = torch.kron(g, g)
    out = weight.new_empty((36, c_in, c_out))
    # a few output channels at a time: the float64 temporaries of a whole 576→256 weight
    # would be 40 MiB, more than the transformed weight itself
    step = max(1, (1 << 18) // (36 * c_in))
    for o0 in range(0, c_out, step):
        block = weight[o0 : o0 + step].detach().reshape(-1, 9).double()  # (o·C_in, 9)
        u = torch.mm(kron, block.T)  # (36, o·C_in)
        out[:, :, o0 : o0 + step] = u.view(36, -1, c_in).transpose(1, 2)
    return out


def cached_winograd_weight(
    owner: nn.Module, sources: Sequence[Tensor], weight_and_bias: Callable[[], tuple[Tensor, Tensor | None]]
) -> tuple[Tensor, Tensor | None]:
    """The Winograd weight and the bias of ``owner``'s conv, transformed once and kept on
    ``owner`` until one of ``sources`` (the tensors they derive from) changes in place, moves
    or is replaced (an optimiser step, ``load_state_dict``, ``.to()``).

    Not a buffer: it is not saved in checkpoints. Its size is 4× the conv weight's.

    Args:
        owner: the module that keeps the cache.
        sources: tensors the weight and bias are computed from.
        weight_and_bias: computes the (C_out, C_in, 3, 3) weight and the (C_out,) bias or None.

    Returns:
        (36, C_in, C_out) weight and the bias.
    """
    # inference tensors (created under torch.inference_mode) keep no version counter; they can
    # only change in place inside inference mode, which no training step does
    key = tuple((t.data_ptr(), None if t.is_inference() else t._version, t.dtype) for t in sources)
    cached = owner.__dict__.get("_winograd_cache")
    if cached is None or cached[0] != key:
        weight, bias = weight_and_bias()
        cached = (key, winograd_weight(weight), bias)
        owner.__dict__["_winograd_cache"] = cached
    return cached[1], cached[2]


def conv_qualifies(conv: nn.Conv2d, channel_product: int | None = None) -> bool:
    """Whether ``conv`` is a 3×3, stride-1, padding-1 conv wide enough for Winograd to gain.

    Args:
        channel_product: input × output channels of the Winograd conv that will run in its
            place, when that is not ``conv`` itself (a fusion block's phase form,
            :mod:`mematte.models.upsample_conv`); None = ``conv``'s own.
    """
    if channel_product is None:
        channel_product = conv.in_channels * conv.out_channels
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and channel_product >= MIN_CHANNEL_PRODUCT
    )


def winograd_switch(root: nn.Module, kind: type[nn.Module], value: bool | None = None) -> bool:
    """The ``winograd`` switch of every ``kind`` module under ``root``: with ``value``, set
    them all; returns whether all are on."""
    modules = [m for m in root.modules() if isinstance(m, kind)]
    for module in modules if value is not None else ():
        module.winograd = value
    return all(m.winograd for m in modules)


def runs_on(device_type: str, dtype_bytes: int) -> bool:
    """Whether inference on this device and activation width runs Winograd convolutions:
    fp32 on a CPU with at most :data:`MAX_THREADS` intra-op threads."""
    return device_type == "cpu" and dtype_bytes == 4 and torch.get_num_threads() <= MAX_THREADS


def input_qualifies(x: Tensor) -> bool:
    """Whether ``x`` is in the case Winograd serves: fp32 CPU inference (no autograd, no
    autocast) on few threads (:func:`runs_on`)."""
    return (
        x.dtype == torch.float32
        and runs_on(x.device.type, x.element_size())
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def winograd_applies(x: Tensor, conv: nn.Conv2d) -> bool:
    """Whether :func:`conv3x3_winograd` should replace ``conv`` on ``x``."""
    return input_qualifies(x) and conv_qualifies(conv)


def scratch_elements(c_in: int, c_out: int, tiles: int, element_bytes: int = 4,
                     chunk_bytes: int = CHUNK_BYTES) -> int:
    """Elements of the per-call buffers of :func:`conv3x3_winograd_padded` for an input of
    ``tiles`` 4×4 output tiles (B · rows · columns), besides its input and output."""
    most = min(tiles, max(1, chunk_bytes // (36 * c_in * element_bytes)))
    return most * (3 * 36 * c_in + (36 + 24 + 16) * c_out)


class PaddedInput:
    """A zero-bordered (B, H', W', C) channels-last buffer for :func:`conv3x3_winograd_padded`:
    one zero row/column above and left of the image, zeros below and right up to whole 6×6
    input tiles. Writers fill :attr:`interior` (a (B, C, H, W) view) directly, e.g. a concat
    written channel range by channel range, which saves the padded copy.

    Args:
        like: a tensor giving dtype and device.  b, c, h, w: the input's shape.
    """

    def __init__(self, like: Tensor, b: int, c: int, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.rows, self.cols = -(-h // 4), -(-w // 4)  # 4×4 output tiles
        buffer = like.new_empty((b, 4 * self.rows + 2, 4 * self.cols + 2, c))
        # only the border is zeroed (F.pad would fill the whole buffer first)
        buffer[:, 0].zero_()
        buffer[:, h + 1 :].zero_()
        buffer[:, 1 : h + 1, 0].zero_()
        buffer[:, 1 : h + 1, w + 1 :].zero_()
        self.buffer = buffer
        self.interior = buffer[:, 1 : h + 1, 1 : w + 1].permute(0, 3, 1, 2)

    @classmethod
    def holding(cls, x: Tensor) -> PaddedInput:
        """A padded input holding a copy of ``x`` (B, C, H, W)."""
        padded = cls(x, *x.shape)
        padded.interior.copy_(x)
        return padded


def conv3x3_winograd(
    x: Tensor, weight_t: Tensor, bias: Tensor | None = None, relu: bool = False,
    chunk_bytes: int | None = None,
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` (then ReLU), by Winograd F(4×4, 3×3).

    Args:
        x: (B, C_in, H, W) float.
        weight_t: (36, C_in, C_out) from :func:`winograd_weight`.
        bias: (C_out,) or None.  relu: apply ReLU to the output.
        chunk_bytes: transformed-input bytes per chunk of tiles (None: :data:`CHUNK_BYTES`).

    Returns:
        (B, C_out, H, W) in channels-last memory format.
    """
    return conv3x3_winograd_padded(PaddedInput.holding(x), weight_t, bias, relu, chunk_bytes)


def conv3x3_winograd_padded(
    padded: PaddedInput, weight_t: Tensor, bias: Tensor | None = None, relu: bool = False,
    chunk_bytes: int | None = None,
) -> Tensor:
    """:func:`conv3x3_winograd` of an input already written into a :class:`PaddedInput`."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    source = padded.buffer
    b, c = source.shape[0], source.shape[-1]
    h, w, n_rows, n_cols = padded.h, padded.w, padded.rows, padded.cols
    if weight_t.shape[:2] != (36, c):
        raise ValueError(f"weight_t {tuple(weight_t.shape)} does not fit an input of {c} channels")
    c_out = weight_t.shape[2]
    out = source.new_empty((b, 4 * n_rows, 4 * n_cols, c_out))
    bt = torch.tensor(_BT, dtype=source.dtype, device=source.device)
    at = torch.tensor(_AT, dtype=source.dtype, device=source.device)

    tile_bytes = 36 * b * c * source.element_size()
    cols = max(1, min(n_cols, chunk_bytes // tile_bytes))
    rows = max(1, min(n_rows, chunk_bytes // (tile_bytes * cols)))
    most = b * rows * cols  # tiles per chunk
    # per-chunk buffers, reused: gathered blocks, rows transformed, fully transformed
    # (d → t → v), products m, outputs rows transformed, outputs (m → z → y)
    gathered = source.new_empty(36 * most * c)
    half = source.new_empty(36 * most * c)
    transformed = source.new_empty(36 * most * c)
    products = source.new_empty(36 * most * c_out)
    half_out = source.new_empty(24 * most * c_out)
    result = source.new_empty(16 * most * c_out)
    s_b, s_h, s_w, s_c = source.stride()
    o_b, o_h, o_w, o_c = out.stride()
    for r0 in range(0, n_rows, rows):
        nr = min(rows, n_rows - r0)
        for c0 in range(0, n_cols, cols):
            nc = min(cols, n_cols - c0)
            tiles = b * nr * nc
            # the 6×6 input blocks of this chunk, position-major: (6, 6, B, nr, nc, C)
            blocks = source.as_strided(
                (6, 6, b, nr, nc, c), (s_h, s_w, s_b, 4 * s_h, 4 * s_w, s_c),
                source.storage_offset() + 4 * r0 * s_h + 4 * c0 * s_w,
            )
            d = gathered[: 36 * tiles * c].view(6, 6, b, nr, nc, c)
            d.copy_(blocks)
            # Bᵀ d B: over the rows, then over the columns (batched over the row index)
            t = half[: 36 * tiles * c].view(6, -1)
            torch.mm(bt, d.view(6, -1), out=t)
            v = transformed[: 36 * tiles * c].view(6, 6, -1)
            torch.matmul(bt, t.view(6, 6, -1), out=v)
            m = products[: 36 * tiles * c_out].view(36, tiles, c_out)
            torch.bmm(v.view(36, tiles, c), weight_t, out=m)
            # Aᵀ m A → (4, 4, tiles·C_out)
            z = half_out[: 24 * tiles * c_out].view(4, -1)
            torch.mm(at, m.view(6, -1), out=z)
            y = result[: 16 * tiles * c_out].view(4, 4, -1)
            torch.matmul(at, z.view(4, 6, -1), out=y)
            target = out.as_strided(
                (4, 4, b, nr, nc, c_out), (o_h, o_w, o_b, 4 * o_h, 4 * o_w, o_c),
                out.storage_offset() + 4 * r0 * o_h + 4 * c0 * o_w,
            )
            target.copy_(y.view(4, 4, b, nr, nc, c_out))
            # bias and ReLU while the chunk's outputs are still in cache
            written = out[:, 4 * r0 : 4 * (r0 + nr), 4 * c0 : 4 * (c0 + nc)]
            if bias is not None:
                written.add_(bias)
            if relu:
                written.relu_()
    if (4 * n_rows, 4 * n_cols) != (h, w):  # crop the partial last tiles (a copy, in layout)
        out = out[:, :h, :w].contiguous()
    return out.permute(0, 3, 1, 2)
