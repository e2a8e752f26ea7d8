"""Procedural matting data: the project's embedded default dataset (no download needed).

Every sample is a foreground RGB, an alpha matte and a background RGB drawn from a generator
that produces the structures that make matting hard:

* hair / fur: hundreds of curved, tapering strands 0.25-2 px wide with anti-aliased partial
  coverage, growing out of a solid body (portrait-like heads, organic blobs, polygons);
* soft semi-transparent regions: smoke (low-frequency noise alpha in ~0.2-0.8 with fuzzy
  borders) and glass (sharp outline, translucent interior, denser rim);
* holes through solid regions (background visible through the foreground), nets / lace;
* sharp solid edges (polygons, ellipses) with 1-px anti-aliasing, sometimes defocused.

Foreground colours are textured (smooth colour fields + multi-octave noise + grain), usually
distinct from the background and sometimes deliberately camouflaged. Backgrounds mix
multi-octave value noise, warped stripes / checkers at random angles, gradients and blurred
shapes (bokeh).

Determinism: a sample is a pure function of ``(seed, split, index)`` through
``np.random.default_rng([seed, split_id, index])``; no global RNG is touched, so results are
identical across processes, DataLoader workers and reruns. Splits use different ``split_id``
values and therefore never share samples.

Modules: :mod:`.scenes` draws the layers (:func:`~mematte.data.scenes.generate_background`,
:func:`~mematte.data.scenes.generate_foreground`; shapes, colours, textures), with strands from
:mod:`.strands` and value noise from :mod:`.noise`. This module turns them into samples: the
seeded source, the train / eval datasets (trimaps, crops, merged foregrounds), folder export.
Layers are channels-first (``(3, H, W)``) for cheap broadcasting; the public samples are HWC.

CLI: ``python -m mematte.data.synthetic --out DIR [--split test] [--num 20] [--seed 0]``
writes a split in the "folder" layout (see :func:`write_folder_dataset`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mematte.data.composition import (
    composite,
    crop_around_unknown,
    trimap_from_alpha,
    trimap_to_uint8,
)
from mematte.data.scenes import generate_background, generate_foreground
from mematte.image_io import to_uint8, write_png

__all__ = [
    "SPLIT_IDS",
    "split_id",
    "SyntheticMattingSource",
    "merge_foregrounds",
    "SyntheticMattingTrainSet",
    "SyntheticMattingEvalSet",
    "write_folder_dataset",
    "main",
]

SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# Extra entries appended to the sample's seed sequence for the independent random streams a
# dataset needs on top of the sample content (augmentation, trimap, eval image size).
_STREAM_AUGMENT = 1
_STREAM_TRIMAP = 2
_STREAM_SIZE = 3


def split_id(split: str) -> int:
    """Integer id of a split name ("train" | "val" | "test")."""
    try:
        return SPLIT_IDS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}") from None


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


# --------------------------------------------------------------------------------------------
# Public sources and datasets
# --------------------------------------------------------------------------------------------
def _to_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> contiguous (H, W, C) (np.stack is ~3x faster than a transposed copy)."""
    return np.stack(list(image), axis=-1)


def _hwc_view(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) view without copying (numpy ufuncs keep the CHW memory order)."""
    return image.transpose(1, 2, 0)


class SyntheticMattingSource:
    """Deterministic generator of (fg, alpha, bg) triplets.

    A sample is a pure function of ``(seed, split, index, size)``; splits never share samples.

    Args:
        seed: dataset seed.
        size: default canvas size, an int (square) or (height, width).
    """

    def __init__(self, seed: int = 0, size: tuple[int, int] | int = 320) -> None:
        self.seed = int(seed)
        self.size = _as_hw(size)

    def rng(self, split: str, index: int, *stream: int) -> np.random.Generator:
        """The generator for sample ``index`` of ``split`` (extra ints select side streams)."""
        return np.random.default_rng([self.seed, split_id(split), int(index), *stream])

    def sample(
        self, split: str, index: int, size: tuple[int, int] | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generate one sample.

        Args:
            split: "train" | "val" | "test".
            index: sample index (>= 0).
            size: canvas (height, width) or int; defaults to the source's size.

        Returns:
            fg: (H, W, 3) float32 in [0, 1]; alpha: (H, W) float32 in [0, 1];
            bg: (H, W, 3) float32 in [0, 1].
        """
        fg, alpha, bg = self.sample_chw(split, index, size)
        return _to_hwc(fg), alpha, _to_hwc(bg)

    def sample_chw(
        self, split: str, index: int, size: tuple[int, int] | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same sample as :meth:`sample` in channels-first layout (no layout conversion cost).

        Returns:
            fg: (3, H, W) float32; alpha: (H, W) float32; bg: (3, H, W) float32; all in [0, 1].
        """
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        height, width = _as_hw(size) if size is not None else self.size
        rng = self.rng(split, index)
        bg, bg_colour = generate_background(rng, height, width)
        fg, alpha = generate_foreground(rng, height, width, bg_colour)
        return fg, alpha, bg


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W) -> (1, H, W) or (H, W, C) -> (C, H, W) float32 tensor (owns its memory).

    HWC views of channels-first memory (see ``_hwc_view``) become a cheap contiguous copy.
    """
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.array(array, dtype=np.float32, order="C"))


def merge_foregrounds(
    fg: np.ndarray, alpha: np.ndarray, fg_over: np.ndarray, alpha_over: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Layer a second foreground over a first (ViTMatte / GCA "composite two foregrounds").

    ``alpha = 1 - (1 - alpha) * (1 - alpha_over)``; the colour is the exact "over" operator
    unpremultiplied, ``(alpha_over * fg_over + (1 - alpha_over) * alpha * fg) / alpha``, so the
    result composites onto any background exactly like the two layers stacked (ViTMatte's
    ``fg * a + fg2 * (1 - a)`` is an approximation of this). Where the merged alpha is 0 the
    colour is the first foreground's.

    Args:
        fg, fg_over: (H, W, 3) float32 in [0, 1]; alpha, alpha_over: (H, W) float32 in [0, 1].

    Returns:
        (merged fg (H, W, 3) float32, merged alpha (H, W) float32).
    """
    merged_alpha = 1.0 - (1.0 - alpha) * (1.0 - alpha_over)
    weight_over = alpha_over / np.maximum(merged_alpha, 1e-6)
    weight_under = (1.0 - alpha_over) * alpha / np.maximum(merged_alpha, 1e-6)
    merged_fg = weight_over[..., None] * fg_over + weight_under[..., None] * fg
    empty = merged_alpha <= 1e-6
    merged_fg[empty] = fg[empty]
    return np.clip(merged_fg, 0.0, 1.0).astype(np.float32), merged_alpha.astype(np.float32)


class SyntheticMattingTrainSet(Dataset):
    """Training samples: synthetic composites with random trimaps, cropped around unknown pixels.

    Per sample: generate (fg, alpha, bg) at ``max(image_size, crop_size)`` (synthetic data can
    be rendered at any size, so the crop never needs padding), with probability ``merge_prob``
    layer a second foreground over the first, draw a trimap with :func:`trimap_from_alpha`,
    crop with :func:`crop_around_unknown` and composite. Deterministic in ``(seed, index)``.

    Args:
        num_samples: dataset length.
        seed: dataset seed.
        image_size: side of the generated canvas.
        crop_size: side of the returned crop (512 as in ViTMatte; e.g. 128 on CPU).
        merge_prob: probability of merging a second foreground.
        raw_layers: return the raw (fg, alpha, bg) canvas instead, and leave merge, affine,
            trimap, crop, jitter and composite to the batch augmentation
            (:class:`mematte.data.augment.MattingAugment`, ``data=synthetic_augment``): the
            pipeline real foregrounds go through.

    Returns (``__getitem__``): dict with "image", "fg", "bg" (3, crop, crop) float32 in [0, 1],
    "alpha" (1, crop, crop) float32 in [0, 1], "trimap" (1, crop, crop) float32 in {0, 0.5, 1},
    "name" str ("synthetic_train_00042"). With ``raw_layers``: "fg", "bg" (3, S, S),
    "alpha" (1, S, S) and "name", S = ``image_size``.
    """

    split = "train"

    def __init__(
        self,
        num_samples: int = 2000,
        seed: int = 0,
        image_size: int = 320,
        crop_size: int = 512,
        merge_prob: float = 0.5,
        raw_layers: bool = False,
    ) -> None:
        if num_samples < 1 or image_size < 1 or crop_size < 1:
            raise ValueError("num_samples, image_size and crop_size must be >= 1")
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.crop_size = int(crop_size)
        self.merge_prob = float(merge_prob)
        self.raw_layers = bool(raw_layers)
        self.source = SyntheticMattingSource(seed, max(self.image_size, self.crop_size))

    @property
    def needs_augment(self) -> bool:
        """Raw layers must go through the batch augmentation (the data module checks)."""
        return self.raw_layers

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        fg, alpha, bg = self.source.sample_chw(self.split, index)
        name = f"synthetic_{self.split}_{index:05d}"
        if self.raw_layers:
            return {"fg": _to_tensor(_hwc_view(fg)), "alpha": _to_tensor(alpha),
                    "bg": _to_tensor(_hwc_view(bg)), "name": name}
        fg, bg = _hwc_view(fg), _hwc_view(bg)
        rng = self.source.rng(self.split, index, _STREAM_AUGMENT)
        if rng.uniform() < self.merge_prob:
            height, width = alpha.shape
            fg_over, alpha_over = generate_foreground(rng, height, width)
            fg, alpha = merge_foregrounds(fg, alpha, _hwc_view(fg_over), alpha_over)
        trimap = trimap_from_alpha(alpha, rng)
        arrays = {"fg": fg, "bg": bg, "alpha": alpha, "trimap": trimap}
        crop = crop_around_unknown(arrays, trimap, self.crop_size, rng)
        image = composite(crop["fg"], crop["bg"], crop["alpha"])
        return {
            "image": _to_tensor(image),
            "alpha": _to_tensor(crop["alpha"]),
            "trimap": _to_tensor(crop["trimap"]),
            "fg": _to_tensor(crop["fg"]),
            "bg": _to_tensor(crop["bg"]),
            "name": name,
        }


class SyntheticMattingEvalSet(Dataset):
    """Validation / test samples: full-size composites with a fixed trimap per sample.

    Height and width are drawn per sample from ``[min_size, max_size]`` and are deliberately
    usually *not* multiples of 32 (about 15% are snapped to one, so both paths of the model's
    padding are exercised). Everything is deterministic in ``(seed, split, index)``.

    Args:
        split: "val" | "test".
        num_samples: dataset length.
        seed: dataset seed.
        min_size, max_size: inclusive range of each image side.
        return_fg_bg: also return "fg" / "bg" (off by default: the eval contract has none;
            useful to export them with :func:`write_folder_dataset`).

    Returns (``__getitem__``): dict with "image" (3, H, W) float32 in [0, 1], "alpha"
    (1, H, W) float32 in [0, 1], "trimap" (1, H, W) float32 in {0, 0.5, 1}, "name" str
    ("synthetic_test_00007").
    """

    def __init__(
        self,
        split: str = "val",
        num_samples: int = 50,
        seed: int = 0,
        min_size: int = 200,
        max_size: int = 360,
        return_fg_bg: bool = False,
    ) -> None:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.split = split
        self.num_samples = int(num_samples)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.return_fg_bg = return_fg_bg
        self.source = SyntheticMattingSource(seed)

    def __len__(self) -> int:
        return self.num_samples

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of sample ``index`` (cheap: no image is generated)."""
        rng = self.source.rng(self.split, index, _STREAM_SIZE)
        sides = []
        for _ in range(2):
            side = int(rng.integers(self.min_size, self.max_size + 1))
            snapped = (side // 32) * 32
            if rng.uniform() < 0.15 and snapped >= self.min_size:
                side = snapped
            sides.append(side)
        return sides[0], sides[1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        fg, alpha, bg = self.source.sample_chw(self.split, index, self.image_size(index))
        fg, bg = _hwc_view(fg), _hwc_view(bg)
        trimap = trimap_from_alpha(alpha, self.source.rng(self.split, index, _STREAM_TRIMAP))
        sample: dict[str, torch.Tensor | str] = {
            "image": _to_tensor(composite(fg, bg, alpha)),
            "alpha": _to_tensor(alpha),
            "trimap": _to_tensor(trimap),
            "name": f"synthetic_{self.split}_{index:05d}",
        }
        if self.return_fg_bg:
            sample["fg"], sample["bg"] = _to_tensor(fg), _to_tensor(bg)
        return sample


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) or (H, W) uint8.

    Uses the metrics' quantiser so files on disk round exactly as predictions are scored.
    """
    array = to_uint8(tensor.detach().cpu().float().numpy())
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def write_folder_dataset(dataset: Dataset, root: str | Path, with_fg_bg: bool = False) -> int:
    """Write a dataset in the "folder" layout and return the number of samples written.

    Layout: ``root/image/<name>.png`` (RGB), ``root/alpha/<name>.png`` (8-bit gray),
    ``root/trimap/<name>.png`` (8-bit, values 0/128/255) and, if ``with_fg_bg`` and the
    samples have them, ``root/fg/<name>.png`` and ``root/bg/<name>.png``. Every file is
    written atomically.

    Args:
        dataset: map-style dataset returning the project's sample dicts.
        root: output folder (created).
        with_fg_bg: also write foreground / background colours when available.
    """
    root = Path(root)
    folders = ["image", "alpha", "trimap"] + (["fg", "bg"] if with_fg_bg else [])
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        sample = dataset[index]
        name = sample["name"]
        write_png(root / "image" / f"{name}.png", _to_uint8(sample["image"]))
        write_png(root / "alpha" / f"{name}.png", _to_uint8(sample["alpha"]))
        write_png(root / "trimap" / f"{name}.png", trimap_to_uint8(sample["trimap"][0].numpy()))
        if with_fg_bg:
            for key in ("fg", "bg"):
                if key in sample:
                    write_png(root / key / f"{name}.png", _to_uint8(sample[key]))
    return len(dataset)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write a synthetic split in the folder layout."""
    parser = argparse.ArgumentParser(
        prog="python -m mematte.data.synthetic",
        description="Write synthetic matting samples (image/alpha/trimap PNGs) in the folder layout.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--split", default="test", choices=["val", "test"], help="split to write")
    parser.add_argument("--num", type=int, default=20, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--min-size", type=int, default=200, help="smallest image side")
    parser.add_argument("--max-size", type=int, default=360, help="largest image side")
    parser.add_argument("--with-fg-bg", action="store_true", help="also write fg/ and bg/")
    args = parser.parse_args(argv)
    dataset = SyntheticMattingEvalSet(
        args.split, args.num, args.seed, args.min_size, args.max_size, return_fg_bg=args.with_fg_bg
    )
    count = write_folder_dataset(dataset, args.out, with_fg_bg=args.with_fg_bg)
    folders = "image, alpha, trimap" + (", fg, bg" if args.with_fg_bg else "")
    print(f"wrote {count} {args.split} samples (seed {args.seed}) to {args.out} ({folders})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
