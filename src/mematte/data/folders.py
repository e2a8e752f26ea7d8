"""Real matting datasets in their released folder layouts, validated at construction.

Two dataset classes cover every benchmark; the data configs (``conf/data/*.yaml``) only say
where the folders are:

* :class:`FolderTrainSet` — foreground + alpha pairs composited online on random backgrounds
  (Adobe Composition-1K / DIM, Distinctions-646, UHR-395, generic ``fg/ alpha/ bg/``), or
  composites + alpha (generic ``image/ alpha/``). It returns *raw layers* on a fixed
  ``image_size``² canvas (a window of the source at native resolution, or the whole source
  resized, p = ``downscale_prob``); :class:`mematte.data.augment.MattingAugment` turns a
  collated batch into image / alpha / trimap crops on the training device.
* :class:`FolderEvalSet` — full-resolution image + alpha + trimap triplets matched by file
  stem (Composition-1k-testset ``merged/ alpha_copy/ trimaps/``, AIM-500 ``original/ mask/
  trimap/``, generic ``image/ alpha/ [trimap/]``; a missing trimap folder may be allowed, then
  trimaps are generated deterministically from alpha).

Both take ``root`` (= ``data.root``) and a list of candidate ``layouts`` (folders relative to
the root); the first layout whose folders all exist is used. Construction checks the root
exhaustively (missing partners, unmatched files, duplicate names, unreadable or zero-byte
files, size mismatches; image headers only, nothing is decoded) and raises one
:class:`DatasetLayoutError` listing every problem by file name.

The data configs wrap these sets in :class:`~mematte.data.datamodule.MattingDataModule` with
the dataset's ``root``, its ``eval_region`` and the batch ``augment`` it applies once a batch
reached the training device. :func:`compose_test_set` reproduces DIM's test-set composition.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mematte.data.composition import quantise_trimap, trimap_from_alpha, trimap_to_uint8
from mematte.atomic import atomic_path
from mematte.image_io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    list_images,
    read_gray,
    read_image,
    read_size,
    write_png,
)

__all__ = [
    "DatasetLayoutError",
    "format_problems",
    "deterministic_trimap",
    "FolderTrainSet",
    "FolderEvalSet",
    "dim_composite",
    "compose_test_set",
]

log = logging.getLogger("mematte")

# Problems shown in one error message; the rest are counted.
MAX_LISTED = 50

# PIL resampling filters drawn per sample when resizing layers (ViTMatte draws from OpenCV's
# nearest / linear / cubic / Lanczos for every resize of the training pipeline).
_RESAMPLES = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)



# ------------------------------------------------------------------------------ problems
def format_problems(what: str, problems: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``what: N problem(s):`` followed by one ``  - problem`` line each (at most ``limit``)."""
    lines = [f"{what}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
    lines += [f"  - {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


class DatasetLayoutError(ValueError):
    """A dataset root that cannot be used; ``problems`` lists each issue by file name."""

    def __init__(self, what: str, problems: Sequence[str]) -> None:
        self.what = what
        self.problems = list(problems)
        super().__init__(format_problems(what, self.problems))




def deterministic_trimap(alpha: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """The trimap :func:`trimap_from_alpha` draws for ``name``: same name, same trimap.

    Args:
        alpha: (H, W) float in [0, 1].
        name: sample name (its CRC32 seeds the kernel sizes).
        seed: extra seed.

    Returns:
        (H, W) float32 in {0, 0.5, 1}.
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
    return trimap_from_alpha(alpha, rng)


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    return [str(v) for v in value]


def _format_hw(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def _size_range(sizes: Sequence[tuple[int, int]]) -> str:
    """``smallest – largest`` by pixel count, as H×W."""
    if not sizes:
        return "no images"
    small = min(sizes, key=lambda s: (s[0] * s[1], s))
    large = max(sizes, key=lambda s: (s[0] * s[1], s))
    return f"{_format_hw(small)} – {_format_hw(large)} (H×W)"


class _Root:
    """A dataset root: resolves folders and names files relative to it in messages."""

    def __init__(self, root: str | Path, hint: str, what: str) -> None:
        self.path = Path(os.path.expanduser(str(root)))
        self.hint = hint.strip()
        self.what = what
        if not self.path.exists():
            raise DatasetLayoutError(what, [f"data.root={root} does not exist: {self.hint}"])
        if not self.path.is_dir():
            raise DatasetLayoutError(what, [f"data.root={root} is not a folder: {self.hint}"])

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.path).as_posix()
        except ValueError:
            return str(path)

    def choose_layout(self, layouts: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Mapping[str, Any]:
        """The first layout whose folders under ``keys`` (those it names) all exist."""
        tried = []
        for layout in layouts:
            folders = [f for key in keys for f in _as_list(layout.get(key))]
            missing = [f for f in folders if not (self.path / f).is_dir()]
            if folders and not missing:
                return layout
            tried.append(f"{', '.join(f + '/' for f in folders)} (missing {', '.join(f + '/' for f in missing)})")
        raise DatasetLayoutError(
            self.what,
            [f"no known layout under data.root={self.path}; looked for " + "; or ".join(tried)]
            + ([f"to get the data: {self.hint}"] if self.hint else []),
        )

    def index(self, folder: str, problems: list[str]) -> dict[str, Path]:
        """stem -> file for the images of ``folder``; duplicate stems are problems."""
        try:
            files = list_images(self.path / folder)
        except FileNotFoundError:
            problems.append(f"{folder}/ does not exist")
            return {}
        except ValueError:
            problems.append(f"{folder}/ has no images ({', '.join(IMAGE_EXTENSIONS)})")
            return {}
        index: dict[str, Path] = {}
        for file in files:
            if file.stem in index:
                problems.append(
                    f"{self.rel(index[file.stem])} and {self.rel(file)} have the same name; keep one of them"
                )
            else:
                index[file.stem] = file
        return index

    def size(self, path: Path, problems: list[str]) -> tuple[int, int] | None:
        try:
            return read_size(path)
        except ImageReadError as err:
            problems.append(str(err).replace(str(path), self.rel(path), 1))
            return None

    def read_lines(self, name: str, problems: list[str]) -> list[str] | None:
        """Non-empty stripped lines of a names file (relative to the root, or absolute)."""
        path = self.path / name
        if not path.is_file():
            problems.append(f"{name} does not exist")
            return None
        with open(path, encoding="utf-8-sig", errors="replace") as file:
            return [line.strip() for line in file if line.strip()]


def _to_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W) -> (1, H, W) or (H, W, 3) -> (3, H, W) float32 in [0, 1] from uint8."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class _Pair:
    """One training source: colour (fg or composite) + alpha, both (H, W) = ``size``."""

    name: str
    colour: Path
    alpha: Path
    size: tuple[int, int]


class FolderTrainSet(Dataset):
    """Raw training layers from fg/alpha pairs (online composition) or image/alpha pairs.

    Per sample (``index``): source ``index % num_sources``; with probability
    ``downscale_prob`` the whole source is resized to the ``image_size``² canvas (ViTMatte
    resizes a quarter of its foregrounds to 640²), otherwise the canvas is a window of the
    source at native resolution (downscaled first if its longer side exceeds ``max_side``;
    upscaled if its shorter side is below ``image_size``) centred on a random partial-alpha
    pixel. A background drawn at random is resized to the source's size (as ViTMatte does)
    and windowed identically. Resampling filters are drawn per layer.

    Randomness: with ``seed=None`` (the default) every access draws fresh randomness from
    torch's global generator, which the DataLoader seeds per epoch and worker from the global
    seed — new compositions every epoch, reproducible under ``seed_everything``. With an int
    ``seed`` a sample is a pure function of ``(seed, index)``.

    Args:
        root: dataset root (``data.root``).
        layouts: candidate layouts, first complete one wins. Each maps ``fg`` (or ``image``)
            and ``alpha`` to a folder or a list of folders paired by position, and optionally
            ``names`` to a file listing the foreground file names to use.
        bg: background images (fg layouts): a folder, or a .txt file of image paths (relative
            to the file's folder or absolute); relative to ``root`` unless absolute.
        bg_names: optional file (relative to ``root``) naming the images of the ``bg`` folder to use.
        image_size: canvas side S returned per sample (>= crop_size).
        crop_size: side of the training crops the augmentation cuts from the canvas.
        downscale_prob: probability of resizing the whole source to the canvas.
        max_side: optional cap on the source's longer side before windowing.
        num_samples: samples per epoch; None = number of backgrounds (ViTMatte: one epoch sees
            every background once) or, without backgrounds, number of sources.
        seed: None (fresh randomness per access) or an int (fixed per index).
        hint: how to obtain the dataset (used in error messages).

    Returns (``__getitem__``): "fg" and "bg" (3, S, S) float32 in [0, 1] (fg layouts) or
    "image" (3, S, S) (image layouts), "alpha" (1, S, S) float32 in [0, 1],
    "source_extent" float (longer side of the whole source in canvas pixels, scales the
    trimap kernels), "source_size" float (the source's longer side as the official affine
    sees it: native pixels, or the canvas side for a source resized whole onto the canvas;
    gates rotation), "name" str (source stem).
    """

    # Samples are raw layers: the batch must go through MattingAugment (MattingDataModule
    # refuses to build without one).
    needs_augment = True

    def __init__(
        self,
        root: str | Path,
        layouts: Sequence[Mapping[str, Any]],
        bg: str | None = None,
        bg_names: str | None = None,
        image_size: int = 640,
        crop_size: int = 512,
        downscale_prob: float = 0.25,
        max_side: int | None = None,
        num_samples: int | None = None,
        seed: int | None = None,
        hint: str = "",
    ) -> None:
        if crop_size < 1 or image_size < crop_size:
            raise ValueError(f"need 1 <= crop_size <= image_size, got crop_size={crop_size}, image_size={image_size}")
        self.root = _Root(root, hint, f"train set at data.root={root}")
        self.image_size = int(image_size)
        self.crop_size = int(crop_size)
        self.downscale_prob = float(downscale_prob)
        self.max_side = None if max_side is None else int(max_side)
        self.seed = seed
        self.layout = self.root.choose_layout(layouts, ("fg", "image", "alpha"))
        self.layered = "fg" in self.layout
        problems: list[str] = []
        self.sources = self._scan_sources(problems)
        self.backgrounds = self._scan_backgrounds(bg, bg_names, problems) if self.layered else []
        if problems:
            raise DatasetLayoutError(self.root.what, problems)
        default = len(self.backgrounds) if self.layered else len(self.sources)
        self.num_samples = int(num_samples) if num_samples is not None else default

    # -------------------------------------------------------------------------- scanning
    def _scan_sources(self, problems: list[str]) -> list[_Pair]:
        kind = "fg" if self.layered else "image"
        colour_dirs, alpha_dirs = _as_list(self.layout[kind]), _as_list(self.layout["alpha"])
        if len(colour_dirs) != len(alpha_dirs):
            raise ValueError(f"layout {dict(self.layout)}: {kind} and alpha need the same number of folders")
        folders = [
            (c, a, self.root.index(c, problems), self.root.index(a, problems)) for c, a in zip(colour_dirs, alpha_dirs)
        ]
        names_file = self.layout.get("names")
        if names_file:
            listed = self.root.read_lines(names_file, problems) or []
            stems = [Path(line).stem for line in listed]
        else:
            stems = sorted({s for _, _, colours, _ in folders for s in colours})
            for colour_dir, alpha_dir, colours, alphas in folders:
                for stem, path in sorted(alphas.items()):
                    if stem not in colours:
                        problems.append(f"{self.root.rel(path)} has no {colour_dir}/{stem}.*")
        sources = []
        for stem in stems:
            found = [(c, a, colours[stem], alphas.get(stem)) for c, a, colours, alphas in folders if stem in colours]
            if not found:
                where = " or ".join(f"{c}/" for c, *_ in folders)
                problems.append(f"{names_file} lists {stem} but {where} has no {stem}.*")
                continue
            if len(found) > 1:
                problems.append(f"{stem} is in several folders: {', '.join(self.root.rel(f[2]) for f in found)}")
                continue
            _, alpha_dir, colour, alpha = found[0]
            if alpha is None:
                problems.append(f"{self.root.rel(colour)} has no {alpha_dir}/{stem}.*")
                continue
            colour_size, alpha_size = self.root.size(colour, problems), self.root.size(alpha, problems)
            if colour_size is None or alpha_size is None:
                continue
            if colour_size != alpha_size:
                problems.append(
                    f"{self.root.rel(alpha)}: size {_format_hw(alpha_size)} differs from "
                    f"{self.root.rel(colour)} {_format_hw(colour_size)} (H×W)"
                )
                continue
            sources.append(_Pair(stem, colour, alpha, colour_size))
        if not sources and not problems:
            problems.append(f"no {kind}/alpha pairs found in {', '.join(colour_dirs)}")
        return sources

    def _scan_backgrounds(self, bg: str | None, bg_names: str | None, problems: list[str]) -> list[Path]:
        if bg is None:
            problems.append(
                "no backgrounds: set data.train_set.bg to a folder of background images "
                "(e.g. COCO train2014) or to a .txt file listing their paths"
            )
            return []
        source = self.root.path / os.path.expanduser(str(bg))
        if source.is_file():
            base = source.parent
            with open(source, encoding="utf-8-sig", errors="replace") as file:
                paths = [base / line.strip() for line in file if line.strip()]
        elif source.is_dir():
            if bg_names:
                paths = [source / name for name in self.root.read_lines(bg_names, problems) or []]
            else:
                try:
                    paths = list_images(source)
                except ValueError:
                    problems.append(f"background folder {bg} has no images ({', '.join(IMAGE_EXTENSIONS)})")
                    return []
        else:
            problems.append(
                f"backgrounds {source} do not exist: set data.train_set.bg to a folder of background "
                "images (e.g. COCO train2014) or to a .txt file listing their paths"
            )
            return []
        found = []
        for path in paths:
            try:
                size = path.stat().st_size
            except OSError:
                problems.append(f"background {self.root.rel(path)} does not exist")
                continue
            if size == 0:
                problems.append(f"background {self.root.rel(path)}: empty file (0 bytes)")
                continue
            found.append(path)
        if not found and not problems:
            problems.append(f"no background images in {bg}")
        return found

    # -------------------------------------------------------------------------- sampling
    def __len__(self) -> int:
        return self.num_samples

    def describe(self) -> str:
        """One line for ``python -m mematte.data check``."""
        kind = "fg" if self.layered else "image"
        folders = ", ".join(f + "/" for key in (kind, "alpha") for f in _as_list(self.layout[key]))
        sizes = _size_range([s.size for s in self.sources])
        text = f"{len(self.sources)} {kind}/alpha pairs in {folders}; sizes {sizes}"
        if self.layered:
            text += f"; {len(self.backgrounds)} backgrounds"
        return text + f"; {self.num_samples} samples per epoch, {self.image_size}² canvas, {self.crop_size}² crops"

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            # torch's generator: seeded per epoch and worker by the DataLoader
            return np.random.default_rng([int(torch.randint(0, 2**62, (1,)).item()), index])
        return np.random.default_rng([int(self.seed), index])

    def _window(
        self, rng: np.random.Generator, alpha: np.ndarray
    ) -> tuple[tuple[float, float, float, float], float, float]:
        """Canvas window ``(left, top, right, bottom)`` in source pixels, the source's longer
        side measured in canvas pixels, and its longer side as the official affine sees it
        (native pixels, or the canvas side when the whole source is resized onto the canvas:
        the rotation gate's size)."""
        height, width = alpha.shape
        side = self.image_size
        if rng.uniform() < self.downscale_prob:
            return (0.0, 0.0, float(width), float(height)), float(side), float(side)
        ratio = 1.0  # canvas pixels per source pixel
        if self.max_side is not None and max(height, width) > self.max_side:
            ratio = self.max_side / max(height, width)
        ratio = max(ratio, side / min(height, width))  # the window must fit inside the source
        span = side / ratio
        partial = np.flatnonzero((alpha > 0) & (alpha < 255))
        flat = int(partial[rng.integers(partial.size)]) if partial.size else int(rng.integers(alpha.size))
        centre_y, centre_x = divmod(flat, width)
        left = min(max(centre_x + 0.5 - span / 2, 0.0), width - span)
        top = min(max(centre_y + 0.5 - span / 2, 0.0), height - span)
        return (left, top, left + span, top + span), max(height, width) * ratio, float(max(height, width))

    def _resize(
        self, array: np.ndarray, box: tuple[float, float, float, float], rng: np.random.Generator
    ) -> np.ndarray:
        resample = _RESAMPLES[int(rng.integers(len(_RESAMPLES)))]
        side = self.image_size
        # np.array (not asarray): a writable copy, torch refuses to wrap read-only buffers
        return np.array(Image.fromarray(array).resize((side, side), resample=resample, box=box))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | float | str]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = self._rng(index)
        source = self.sources[index % len(self.sources)]
        colour, alpha = read_image(source.colour), read_gray(source.alpha)
        if colour.shape[:2] != alpha.shape:
            raise ValueError(
                f"{source.alpha}: decoded size {alpha.shape} differs from {source.colour} {colour.shape[:2]} "
                "(EXIF orientation?); re-save one of them"
            )
        box, extent, source_size = self._window(rng, alpha)
        sample: dict[str, torch.Tensor | float | str] = {
            "fg" if self.layered else "image": _to_chw(self._resize(colour, box, rng)),
            "alpha": _to_chw(self._resize(alpha, box, rng)),
        }
        if self.layered:
            path = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            background = read_image(path)
            # ViTMatte stretches the background to the source's size; window it the same way
            sy, sx = background.shape[0] / alpha.shape[0], background.shape[1] / alpha.shape[1]
            left, top, right, bottom = box
            sample["bg"] = _to_chw(self._resize(background, (left * sx, top * sy, right * sx, bottom * sy), rng))
        sample["source_extent"] = float(extent)
        sample["source_size"] = source_size
        sample["name"] = source.name
        return sample


# ------------------------------------------------------------------------------ evaluation
@dataclass(frozen=True)
class _Triplet:
    name: str
    image: Path
    alpha: Path
    trimap: Path | None
    size: tuple[int, int]


class FolderEvalSet(Dataset):
    """Full-resolution evaluation samples (image, alpha, trimap) matched by file stem.

    Args:
        root: dataset root (``data.root``).
        layouts: candidate layouts, first complete one wins; each maps ``image``, ``alpha``
            and optionally ``trimap`` to a folder relative to the root.
        split: "val" | "test" (for messages).
        num_samples: None = every image; else this many, evenly spaced in name order.
        require_trimaps: a layout's trimap folder must exist; if False and it is absent,
            trimaps are generated from alpha (:func:`deterministic_trimap`).
        trimap_seed: seed of generated trimaps.
        hint: how to obtain the dataset (used in error messages).
        on_bad_file: ``error``: any unreadable or mismatched file fails construction (or the
            loading of its sample) with an error naming it: what training wants before a long
            run. ``skip`` (``eval.py``): such samples are left out and listed, the rest is
            scored — problems found at construction go to :attr:`skipped`, files that fail
            to decode later come back as ``{"name", "skipped": message}`` samples, which
            :func:`mematte.data.datamodule.collate_eval` moves to ``batch["skipped"]``.

    Returns (``__getitem__``): "image" (3, H, W) float32 in [0, 1], "alpha" (1, H, W) float32
    in [0, 1], "trimap" (1, H, W) float32 in {0, 0.5, 1}, "name" str (file stem).
    """

    def __init__(
        self,
        root: str | Path,
        layouts: Sequence[Mapping[str, Any]],
        split: str = "test",
        num_samples: int | None = None,
        require_trimaps: bool = True,
        trimap_seed: int = 0,
        hint: str = "",
        on_bad_file: str = "error",
    ) -> None:
        if on_bad_file not in ("error", "skip"):
            raise ValueError(f"on_bad_file={on_bad_file!r}: choose error or skip")
        self.split = split
        self.on_bad_file = on_bad_file
        self.root = _Root(root, hint, f"{split} set at data.root={root}")
        keys = ("image", "alpha", "trimap") if require_trimaps else ("image", "alpha")
        self.layout = self.root.choose_layout(layouts, keys)
        trimap_dir = self.layout.get("trimap")
        self.trimap_dir = trimap_dir if trimap_dir and (self.root.path / trimap_dir).is_dir() else None
        self.trimap_seed = int(trimap_seed)
        problems: list[str] = []
        entries = self._scan(problems)
        # skip mode still refuses a set with nothing to score
        if problems and (on_bad_file == "error" or not entries):
            raise DatasetLayoutError(self.root.what, problems)
        self.skipped: list[str] = problems  # what skip mode left out, one line per problem
        if problems:
            log.warning("%s", format_problems(f"{self.root.what}, on_bad_file=skip: leaving out", problems))
        self.total = len(entries)
        if num_samples is not None and num_samples < len(entries):
            picks = np.unique(np.linspace(0, len(entries) - 1, max(int(num_samples), 1)).round().astype(int))
            entries = [entries[i] for i in picks]
        self.entries = entries

    def _scan(self, problems: list[str]) -> list[_Triplet]:
        image_dir, alpha_dir = self.layout["image"], self.layout["alpha"]
        images = self.root.index(image_dir, problems)
        alphas = self.root.index(alpha_dir, problems)
        trimaps = self.root.index(self.trimap_dir, problems) if self.trimap_dir else {}
        others = [(alpha_dir, alphas)] + ([(self.trimap_dir, trimaps)] if self.trimap_dir else [])
        for folder, index in others:
            for stem, path in sorted(index.items()):
                if stem not in images:
                    problems.append(f"{self.root.rel(path)} has no {image_dir}/{stem}.*")
        entries = []
        for stem, image in sorted(images.items()):
            alpha, trimap = alphas.get(stem), trimaps.get(stem)
            missing = [f"{alpha_dir}/{stem}.*"] if alpha is None else []
            if self.trimap_dir and trimap is None:
                missing.append(f"{self.trimap_dir}/{stem}.*")
            if missing:
                problems.append(f"{self.root.rel(image)} has no {' and no '.join(missing)}")
                continue
            size = self.root.size(image, problems)
            ok = size is not None
            for path in (alpha, trimap):
                if path is None:
                    continue
                other = self.root.size(path, problems)
                if other is None:
                    ok = False
                elif size is not None and other != size:
                    problems.append(
                        f"{self.root.rel(path)}: size {_format_hw(other)} differs from "
                        f"{self.root.rel(image)} {_format_hw(size)} (H×W)"
                    )
                    ok = False
            if ok:
                entries.append(_Triplet(stem, image, alpha, trimap, size))
        if not entries and not problems:
            problems.append(f"no images in {image_dir}/")
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every sample, in order."""
        return [entry.size for entry in self.entries]

    def describe(self) -> str:
        """One line for ``python -m mematte.data check``."""
        count = f"{len(self.entries)} images" + (f" (of {self.total})" if len(self.entries) < self.total else "")
        folders = ", ".join(f + "/" for f in (self.layout["image"], self.layout["alpha"], self.trimap_dir) if f)
        trimaps = "" if self.trimap_dir else f"; trimaps generated from alpha (seed {self.trimap_seed})"
        return f"{count} in {folders}; sizes {_size_range(self.sizes)}{trimaps}"

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        entry = self.entries[index]
        try:
            return self._load(entry)
        except (ImageReadError, ValueError) as err:  # a file that passed the header check
            if self.on_bad_file == "error":
                raise
            return {"name": entry.name, "skipped": str(err)}

    def _load(self, entry: _Triplet) -> dict[str, torch.Tensor | str]:
        image, alpha_u8 = read_image(entry.image), read_gray(entry.alpha)
        alpha = alpha_u8.astype(np.float32) / 255.0
        if entry.trimap is not None:
            trimap = quantise_trimap(read_gray(entry.trimap))
        else:
            trimap = deterministic_trimap(alpha, entry.name, self.trimap_seed)
        for path, array in ((entry.alpha, alpha), (entry.trimap, trimap)):
            if path is not None and array.shape != image.shape[:2]:
                raise ValueError(
                    f"{path}: decoded size {array.shape} differs from {entry.image} {image.shape[:2]} "
                    "(EXIF orientation?); re-save one of them"
                )
        return {
            "image": _to_chw(image),
            "alpha": torch.from_numpy(alpha)[None],
            "trimap": torch.from_numpy(trimap)[None],
            "name": entry.name,
        }


# ------------------------------------------------------------------------------ data module
# ------------------------------------------------------------------------------ DIM test set
def dim_composite(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """DIM's ``composite4``: ``int(a·fg + (1 − a)·bg)`` per channel with ``a = alpha / 255``.

    The 8-bit benchmark images truncate (not round) the composite in float64; this is the
    exact arithmetic of Adobe's script, vectorised. (Training composites use
    :func:`mematte.data.composition.composite` on floats.)

    Args:
        fg: (H, W, 3) uint8; bg: (H, W, 3) uint8; alpha: (H, W) uint8.

    Returns:
        (H, W, 3) uint8.
    """
    a = alpha.astype(np.float64)[..., None] / 255
    return np.floor(a * fg.astype(np.float64) + (1 - a) * bg.astype(np.float64)).astype(np.uint8)


def _dim_background(path: Path, height: int, width: int) -> np.ndarray:
    """A background as DIM's script prepares it: upscaled (bicubic, ceil) until it covers the
    foreground if it is smaller along either side, then cropped at the top-left corner."""
    background = Image.fromarray(read_image(path))
    bw, bh = background.size
    ratio = max(width / bw, height / bh)
    if ratio > 1:
        background = background.resize((math.ceil(bw * ratio), math.ceil(bh * ratio)), Image.Resampling.BICUBIC)
    return np.asarray(background)[:height, :width]


def _copy_png(source: Path, target: Path, gray: bool) -> None:
    """Copy a PNG byte for byte (atomically) or re-encode any other format to PNG."""
    if source.suffix.lower() == ".png":
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    else:
        write_png(target, read_gray(source) if gray else read_image(source))


def _compose_one(job: tuple[str, Path, Path, Path | None, list[Path], Path, int]) -> int:
    """Write the composites of one foreground (runs in a worker process)."""
    stem, fg_path, alpha_path, trimap_path, backgrounds, out, seed = job
    fg, alpha = read_image(fg_path), read_gray(alpha_path)
    height, width = alpha.shape
    if trimap_path is None:
        trimap = trimap_to_uint8(deterministic_trimap(alpha.astype(np.float32) / 255.0, stem, seed))
    for i, bg_path in enumerate(backgrounds):
        name = f"{stem}_{i}.png"
        write_png(out / "merged" / name, dim_composite(fg, _dim_background(bg_path, height, width), alpha))
        _copy_png(alpha_path, out / "alpha_copy" / name, gray=True)
        if trimap_path is not None:
            _copy_png(trimap_path, out / "trimaps" / name, gray=True)
        else:
            write_png(out / "trimaps" / name, trimap)
    return len(backgrounds)


def compose_test_set(
    fg: str | Path,
    alpha: str | Path,
    bg: str | Path,
    out: str | Path,
    fg_names: str | Path | None = None,
    bg_names: str | Path | None = None,
    trimaps: str | Path | None = None,
    num_bgs: int = 20,
    overwrite: bool = False,
    workers: int = 0,
    seed: int = 0,
) -> int:
    """Reproduce DIM's test composition (Composition-1k-testset and alike).

    Each foreground, in ``fg_names`` order (default: sorted file names), is composited on the
    next ``num_bgs`` backgrounds of ``bg_names`` (default: sorted files of ``bg``) with
    :func:`dim_composite` after DIM's background preparation (bicubic upscale to cover, top-left
    crop). Writes ``out/merged/{fg_stem}_{i}.png``, ``out/alpha_copy/{fg_stem}_{i}.png`` (the
    alpha, copied) and ``out/trimaps/{fg_stem}_{i}.png`` (copied from ``trimaps/{fg_stem}.*``
    when given, else generated deterministically from alpha). Everything is written into a
    temporary folder inside ``out`` and moved in place at the end, so ``out`` never holds a
    half-written set.

    Raises:
        DatasetLayoutError: listing every missing file, unmatched name or size mismatch.
        FileExistsError: an output folder exists and ``overwrite`` is False.

    Returns:
        Number of composites written.
    """
    root = Path(out)
    problems: list[str] = []
    inputs = _Root(Path(fg).parent, "", "compose-test inputs")  # only used for relative names

    def index(folder: str | Path, label: str) -> dict[str, Path]:
        folder = Path(folder).resolve()
        if not folder.is_dir():
            problems.append(f"{label} folder {folder} does not exist")
            return {}
        # relative to the parent, so messages read "fg/x.png"
        return _Root(folder.parent, "", label).index(folder.name, problems)

    def names(path: str | Path | None) -> list[str] | None:
        if path is None:
            return None
        path = Path(path)
        if not path.is_file():
            problems.append(f"names file {path} does not exist")
            return []
        with open(path, encoding="utf-8-sig", errors="replace") as file:
            return [line.strip() for line in file if line.strip()]

    fgs, alphas = index(fg, "--fg"), index(alpha, "--alpha")
    trimap_index = index(trimaps, "--trimaps") if trimaps is not None else None
    fg_list = names(fg_names)
    fg_stems = [Path(n).stem for n in fg_list] if fg_list is not None else sorted(fgs)
    bg_list = names(bg_names)
    if bg_list is not None:
        backgrounds = [Path(bg) / n for n in bg_list]
    else:
        backgrounds = list(index(bg, "--bg").values())
    needed = len(fg_stems) * num_bgs
    if len(backgrounds) < needed and not problems:
        problems.append(
            f"{len(fg_stems)} foregrounds × {num_bgs} backgrounds need {needed} backgrounds, got {len(backgrounds)}"
        )
    for path in backgrounds[:needed]:
        if not path.is_file():
            problems.append(f"background {path} does not exist")
    jobs = []
    for i, stem in enumerate(fg_stems):
        fg_path, alpha_path = fgs.get(stem), alphas.get(stem)
        trimap_path = trimap_index.get(stem) if trimap_index is not None else None
        candidates = (("--fg", fg, fg_path), ("--alpha", alpha, alpha_path))
        missing = [f"{label} {folder}" for label, folder, path in candidates if path is None]
        if trimap_index is not None and trimap_path is None:
            missing.append(f"--trimaps {trimaps}")
        if missing:
            listed = f" (listed in {fg_names})" if fg_names is not None else ""
            problems.append(f"{stem}{listed} has no {stem}.* in {' nor in '.join(missing)}")
            continue
        files = (("fg", fg_path), ("alpha", alpha_path), ("trimap", trimap_path))
        sizes = {label: inputs.size(path, problems) for label, path in files if path is not None}
        if None in sizes.values():
            continue
        if len(set(sizes.values())) > 1:
            problems.append(f"{stem}: sizes differ: " + ", ".join(f"{k} {_format_hw(v)}" for k, v in sizes.items()))
            continue
        jobs.append((stem, fg_path, alpha_path, trimap_path, backgrounds[i * num_bgs : (i + 1) * num_bgs]))
    if problems:
        raise DatasetLayoutError("compose-test", problems)

    outputs = ("merged", "alpha_copy", "trimaps")
    existing = [root / name for name in outputs if (root / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, existing))} already exist: remove them or pass --overwrite")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".compose-test.{os.getpid()}.tmp"
    try:
        for name in outputs:
            (staging / name).mkdir(parents=True, exist_ok=True)
        tasks = [(stem, f, a, t, b, staging, seed) for stem, f, a, t, b in jobs]
        if workers > 0:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                written = sum(pool.map(_compose_one, tasks))
        else:
            written = sum(map(_compose_one, tasks))
        for name in outputs:
            if (root / name).exists():
                shutil.rmtree(root / name)
            os.replace(staging / name, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
