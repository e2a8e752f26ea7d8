"""Batch alpha matting of a practitioner's files: the logic behind ``predict.py``.

``python predict.py ckpt_path=CKPT input=IMG_OR_DIR trimaps=DIR out=DIR`` (or ``masks=DIR``)
mattes one image or a folder. Each image is paired with its trimap (or coarse mask) by file
stem and produces, under ``out/``:

* ``alpha/<stem>.png``   the alpha matte (8-bit, or 16-bit with ``alpha_bits=16``),
* ``cutout/<stem>.png``  RGBA with estimated foreground colours (:func:`estimate_foreground`),
* ``routing/<stem>.png`` optional: which tokens each routed block sent to global attention,
* ``trimap/<stem>.png``  the trimaps built from masks (:func:`trimap_from_mask`).

A bad input (unreadable file, missing or mis-sized trimap, over the memory budget) fails that
image only; the run goes on and ends with a summary and ``out/failures.json``. A full disk
stops the run. A killed run is finished by running it again: every file is written atomically
and once (only missing outputs are made), and ``failures.json`` is kept current image by image.

Foreground estimation follows Germer et al. 2020, "Fast multi-level foreground estimation"
(the algorithm of pymatting's ``estimate_foreground_ml``), vectorised in torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mematte.checkpoints import net_from_any
from mematte.atomic import DiskFullError, clean_stale_temp_files
from mematte.cli import apply_extras, run_task, write_json
from mematte.data.composition import binary_erosion, ellipse_kernel, quantise_trimap, trimap_to_uint8
from mematte.image_io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    is_image_file,
    list_images,
    read_gray,
    read_image,
    write_png,
)
from mematte.inference import MemoryBudgetError, Predictor
from mematte.visualize import routing_overlay

log = logging.getLogger("mematte")

__all__ = [
    "Failure",
    "InputError",
    "PredictOptions",
    "PredictSummary",
    "estimate_foreground",
    "load_net",
    "predict",
    "run_from_config",
    "trimap_from_mask",
]

FAILURES_FILE = "failures.json"
_TRIMAP_VALUES = (0, 128, 255)


class InputError(ValueError):
    """One image's inputs do not fit together (trimap missing, ambiguous or of another size)."""


# --------------------------------------------------------------------------- options
@dataclass
class PredictOptions:
    """Everything a run needs; ``conf/predict.yaml`` documents each option.

    Exactly one of ``trimaps`` / ``masks`` is given: a folder matched by stem, or one file
    when ``input`` is one image.
    """

    ckpt_path: str
    input: str
    out: str
    trimaps: str | None = None
    masks: str | None = None
    device: str = "cpu"
    precision: str = "auto"
    tile: int = 512
    context: int = 32
    memory_budget_gb: float | None = None
    max_tokens: int | None = None
    routed_inference: str | None = None
    preset: str = "default"
    trust_checkpoint: bool = False
    overwrite: bool = False
    alpha_bits: int = 8
    cutout: bool = True
    routing_overlay: bool = False
    routing_max_side: int = 1024
    mask_unknown_px: int = 20
    mask_threshold: float = 0.5
    save_trimaps: bool = True

    def __post_init__(self) -> None:
        # `trimaps=` on the command line gives an empty string: treat it as not given
        self.trimaps = self.trimaps or None
        self.masks = self.masks or None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PredictOptions:
        """Read the options from a composed ``conf/predict.yaml`` (extra keys are ignored)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in cfg:
                continue
            if OmegaConf.is_missing(cfg, f.name):
                raise ValueError(f"{f.name} is required: pass {f.name}=PATH on the command line")
            value = cfg[f.name]
            values[f.name] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        for required in ("ckpt_path", "input", "out"):
            if required not in values:
                raise ValueError(f"{required} is required: pass {required}=PATH on the command line")
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the option and the fix for inconsistent settings."""
        if (self.trimaps is None) == (self.masks is None):
            raise ValueError(
                "pass exactly one of trimaps=DIR_OR_FILE (0 = background, 128 = unknown, "
                "255 = foreground) or masks=DIR (coarse foreground masks turned into trimaps)"
                + ("; both were given" if self.trimaps is not None else "; neither was given")
            )
        if self.alpha_bits not in (8, 16):
            raise ValueError(f"alpha_bits={self.alpha_bits}: choose 8 or 16")
        if int(self.mask_unknown_px) != self.mask_unknown_px or self.mask_unknown_px < 0:
            raise ValueError(f"mask_unknown_px={self.mask_unknown_px} must be a whole number ≥ 0")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold={self.mask_threshold} must lie in (0, 1)")
        if self.routing_max_side < 16:
            raise ValueError(f"routing_max_side={self.routing_max_side} must be ≥ 16 pixels")
        device = torch.device(self.device)  # raises on a malformed name
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device} but torch sees no CUDA GPU; use device=cpu")

    @property
    def guide_kind(self) -> str:
        """``"trimap"`` or ``"mask"``: what the guide files are."""
        return "trimap" if self.trimaps is not None else "mask"


@dataclass
class Failure:
    """An input that produced no output, and why."""

    file: str
    reason: str


@dataclass
class PredictSummary:
    """What a run did: images written, skipped (outputs existed) and failed."""

    done: int = 0
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every image was written or skipped, 1 when any failed."""
        return 1 if self.failed else 0


@dataclass
class _Job:
    """One image and its guide (trimap or mask) file, or why it has none."""

    image: Path
    guide: Path | None
    guide_error: str | None = None


@dataclass
class _RunState:
    """Per-run memory: which one-time warnings were already given."""

    warned_quantised: bool = False


# --------------------------------------------------------------------------- trimaps
def trimap_from_mask(mask: np.ndarray, unknown_width_px: int, threshold: float = 0.5) -> np.ndarray:
    """Trimap from a coarse foreground mask.

    The mask is thresholded, then eroded (sure foreground) and dilated (everything outside
    is sure background) by an elliptical kernel of radius ``unknown_width_px``; the band in
    between, about ``2 * unknown_width_px`` wide across each edge, is unknown.

    Args:
        mask: (H, W) uint8 0..255, bool, or float in [0, 1]; high = foreground.
        unknown_width_px: erosion/dilation radius in pixels (0 = no unknown band).
        threshold: foreground where ``mask >= threshold`` (on the [0, 1] scale).

    Returns:
        (H, W) uint8 trimap with values in {0, 128, 255}.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    if unknown_width_px < 0:
        raise ValueError(f"unknown_width_px={unknown_width_px} must be ≥ 0")
    if mask.dtype == np.uint8:
        foreground = mask >= threshold * 255.0
    else:
        foreground = mask.astype(np.float32) >= threshold
    if unknown_width_px == 0:
        return np.where(foreground, 255, 0).astype(np.uint8)
    kernel = ellipse_kernel(2 * int(unknown_width_px) + 1)
    sure_fg = binary_erosion(foreground, kernel)
    # dilation = complement of the eroded complement (the kernel is symmetric)
    maybe_fg = ~binary_erosion(~foreground, kernel)
    trimap = np.zeros(mask.shape, dtype=np.uint8)
    trimap[maybe_fg] = 128
    trimap[sure_fg] = 255
    return trimap


def _check_same_size(
    guide: np.ndarray, guide_path: Path, image_hw: tuple[int, int], image_path: Path, kind: str
) -> None:
    """Raise :class:`InputError` naming both files and sizes when a guide does not fit."""
    if guide.shape == image_hw:
        return
    (gh, gw), (h, w) = guide.shape, image_hw
    hint = ""
    if (gh, gw) == (w, h):
        hint = (
            " (width and height swapped: the image carries an EXIF rotation and is used upright; "
            f"the {kind} must match the upright image)"
        )
    raise InputError(
        f"{kind} {guide_path} is {gw}×{gh} but image {image_path} is {w}×{h}{hint}. "
        f"Fix: resize or re-export the {kind} at the image's size ({w}×{h})"
    )


def _load_guide(
    job: _Job, image_hw: tuple[int, int], options: PredictOptions, state: _RunState
) -> np.ndarray:
    """The image's trimap as (H, W) uint8 in {0, 128, 255}, read or built from its mask."""
    assert job.guide is not None
    kind = options.guide_kind
    if kind == "mask":
        mask = read_gray(job.guide, alpha_if_present=True)
        _check_same_size(mask, job.guide, image_hw, job.image, kind)
        if not (mask >= options.mask_threshold * 255).any():
            log.warning("mask %s has no foreground at threshold %g: the alpha will be all 0",
                        job.guide, options.mask_threshold)
        return trimap_from_mask(mask, options.mask_unknown_px, options.mask_threshold)
    trimap = read_gray(job.guide)
    _check_same_size(trimap, job.guide, image_hw, job.image, kind)
    if options.preset == "official":  # the official scripts feed the file's values as they are
        return trimap
    if not np.isin(trimap, _TRIMAP_VALUES).all():
        if not state.warned_quantised:
            values = np.unique(trimap[~np.isin(trimap, _TRIMAP_VALUES)])[:5].tolist()
            log.warning(
                "trimap %s has values other than 0/128/255 (e.g. %s; JPEG trimaps or smooth "
                "resizing cause this): quantised to <85 background, ≥170 foreground, else "
                "unknown. Other trimaps of this run are quantised without a warning.",
                job.guide, values,
            )
            state.warned_quantised = True
        trimap = trimap_to_uint8(quantise_trimap(trimap))
    return trimap


# --------------------------------------------------------------------------- foreground
def _resize_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of (C, h, w) to (C, H, W), source index ``⌊i·h/H⌋`` as pymatting."""
    c, h, w = x.shape
    hh, ww = size
    if (h, w) == (hh, ww):
        return x.clone()
    ys = torch.div(torch.arange(hh, device=x.device) * h, hh, rounding_mode="floor").clamp_(max=h - 1)
    xs = torch.div(torch.arange(ww, device=x.device) * w, ww, rounding_mode="floor").clamp_(max=w - 1)
    # two index_selects instead of one broadcast gather: no (H, W) int64 index tensors
    return x.index_select(1, ys).index_select(2, xs)


def _neighbour_sum(plane: Tensor, wx: Tensor, wy: Tensor, border: float) -> Tensor:
    """Σ over the 4 neighbours of edge weight × neighbour value.

    A neighbour outside the image is the pixel itself with weight ``border`` (pymatting clamps
    coordinates, and a pixel's alpha difference to itself is 0). Only slices, no padded copy.

    Args:
        plane: (H, W) values.  wx: (H, W-1) weights between horizontal neighbours.
        wy: (H-1, W) weights between vertical neighbours.  border: weight of a missing neighbour.

    Returns:
        (H, W).
    """
    total = torch.zeros_like(plane)
    total[:, 1:].addcmul_(wx, plane[:, :-1])  # left neighbours
    total[:, :-1].addcmul_(wx, plane[:, 1:])  # right
    total[1:, :].addcmul_(wy, plane[:-1, :])  # up
    total[:-1, :].addcmul_(wy, plane[1:, :])  # down
    for edge in (np.s_[:, 0], np.s_[:, -1], np.s_[0, :], np.s_[-1, :]):  # corners count twice
        total[edge].add_(plane[edge], alpha=border)
    return total


def _solve_level(image: Tensor, alpha: Tensor, fg: Tensor, bg: Tensor, iterations: int,
                 regularization: float, gradient_weight: float) -> None:
    """Jacobi iterations of one pyramid level, updating ``fg`` and ``bg`` in place.

    Per pixel, F and B minimise ``(αF + (1−α)B − I)²`` plus, for each of the 4 neighbours,
    ``w·(F − F_n)² + w·(B − B_n)²`` with ``w = ε + ω·|α − α_n|`` (smooth where alpha is flat):
    a 2×2 linear system per pixel and channel, solved in closed form with the neighbours'
    previous values, then clipped to [0, 1]. The matrix depends on alpha only, so it is
    shared by the channels and the channels are solved one at a time (memory: a handful of
    (H, W) planes besides the (3, H, W) image, F and B).

    Args:
        image: (3, H, W) float in [0, 1].  alpha: (H, W) float in [0, 1].
        fg, bg: (3, H, W) current estimates (overwritten).
        iterations: Jacobi sweeps.  regularization: ε.  gradient_weight: ω.
    """
    wx = (alpha[:, 1:] - alpha[:, :-1]).abs_().mul_(gradient_weight).add_(regularization)
    wy = (alpha[1:, :] - alpha[:-1, :]).abs_().mul_(gradient_weight).add_(regularization)
    # every pixel has 4 neighbour weights; missing ones (outside the image) are ε
    weight_sum = _neighbour_sum(torch.ones_like(alpha), wx, wy, regularization)

    # Inverse of [[α² + s, α(1−α)], [α(1−α), (1−α)² + s]], built in place to keep few planes
    # alive: det = s(α² + (1−α)²) + s² > 0 since s ≥ 4ε.
    a0, a1 = alpha, 1.0 - alpha
    m01 = a0 * a1
    m00 = (a1 * a1).add_(weight_sum)  # a11
    m11 = (a0 * a0).add_(weight_sum)  # a00
    del weight_sum
    det = (m00 * m11).addcmul_(m01, m01, value=-1.0)
    m00.div_(det)
    m11.div_(det)
    m01.div_(det).neg_()
    del det

    for _ in range(iterations):
        for c in range(image.shape[0]):
            rhs_f = _neighbour_sum(fg[c], wx, wy, regularization).addcmul_(a0, image[c])
            rhs_b = _neighbour_sum(bg[c], wx, wy, regularization).addcmul_(a1, image[c])
            torch.clamp(torch.mul(m00, rhs_f).addcmul_(m01, rhs_b), 0.0, 1.0, out=fg[c])
            torch.clamp(torch.mul(m01, rhs_f).addcmul_(m11, rhs_b), 0.0, 1.0, out=bg[c])
            del rhs_f, rhs_b


@torch.no_grad()
def estimate_foreground(
    image: Tensor,
    alpha: Tensor,
    regularization: float = 5e-3,
    gradient_weight: float = 1e-1,
    n_small_iterations: int = 10,
    n_big_iterations: int = 2,
    small_size: int = 32,
) -> tuple[Tensor, Tensor]:
    """Foreground and background colours behind a matte (Germer et al. 2020, multi-level).

    Coarse to fine over ``⌈log2(max(H, W))⌉ + 1`` levels of geometrically growing size
    (``H^(i/n) × W^(i/n)``, nearest-neighbour resampling); each level starts from the
    upsampled previous estimate and runs :func:`_solve_level` (``n_small_iterations`` while
    both sides ≤ ``small_size``, else ``n_big_iterations``). Defaults are the paper's.

    Memory: linear in pixels; besides the inputs, about 17 float32 (H, W) planes are alive at
    full resolution, outputs included (measured on CPU: 2.0 GiB for 6000 × 5000, 19 s on one
    core). Works on the device of ``image``.

    Args:
        image: (3, H, W) float in [0, 1] (uint8 is scaled).
        alpha: (H, W) or (1, H, W) float in [0, 1].

    Returns:
        (foreground, background), each (3, H, W) float32 in [0, 1] on the image's device.
    """
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    image = image.float()
    alpha = alpha.float().to(image.device)
    if alpha.ndim == 3:
        alpha = alpha[0]
    if image.ndim != 3 or alpha.shape != image.shape[1:]:
        raise ValueError(
            f"expected image (C, H, W) and alpha (H, W), got {tuple(image.shape)} and {tuple(alpha.shape)}"
        )
    h0, w0 = alpha.shape
    n_levels = math.ceil(math.log2(max(h0, w0))) if max(h0, w0) > 1 else 0
    # start from the mean colour: the 1×1 level then converges from a sensible point
    fg = image.mean(dim=(1, 2), keepdim=True)
    bg = fg.clone()
    for level in range(n_levels + 1):
        t = level / n_levels if n_levels else 1.0
        # Python round (half to even) as pymatting, so the pyramids agree
        h, w = max(1, round(h0**t)), max(1, round(w0**t))
        level_image = image if (h, w) == (h0, w0) else _resize_nearest(image, (h, w))
        level_alpha = alpha if (h, w) == (h0, w0) else _resize_nearest(alpha[None], (h, w))[0]
        fg = _resize_nearest(fg, (h, w))
        bg = _resize_nearest(bg, (h, w))
        iterations = n_small_iterations if (h <= small_size and w <= small_size) else n_big_iterations
        _solve_level(level_image, level_alpha, fg, bg, iterations, regularization, gradient_weight)
    return fg, bg


# --------------------------------------------------------------------------- inputs
def load_net(ckpt_path: str | Path, trust: bool = False) -> nn.Module:
    """The net of a mematte checkpoint, an official ViTMatte/MEMatte file or a Hugging Face
    VitMatte folder or hub id (:func:`mematte.checkpoints.net_from_any`); errors name the file.
    ``trust``: unpickle the file fully (``trust_checkpoint=true``)."""
    try:
        return net_from_any(ckpt_path, trust=trust)
    except RuntimeError as err:  # unreadable checkpoint: report it like a bad path
        raise ValueError(str(err)) from err


def _match_guides(images: list[Path], guides: Path, kind: str) -> list[_Job]:
    """Pair every image with its trimap/mask: the one file, or the folder's file of the same stem."""
    if not guides.exists():
        raise FileNotFoundError(f"{kind}s not found: {guides}")
    if guides.is_file():
        if len(images) != 1:
            raise ValueError(
                f"{kind}s={guides} is one file but input has {len(images)} images; "
                f"pass a folder of {kind}s named like the images (a.png ↔ a.png)"
            )
        return [_Job(images[0], guides)]
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(guides.iterdir()):
        if is_image_file(p):
            by_stem.setdefault(p.stem, []).append(p)
    jobs = []
    for image in images:
        found = by_stem.get(image.stem, [])
        if len(found) == 1:
            jobs.append(_Job(image, found[0]))
        elif not found:
            suffixes = "|".join(e[1:] for e in IMAGE_EXTENSIONS)
            jobs.append(_Job(image, None, f"no {kind} named {image.stem}.<{suffixes}> in {guides}"))
        else:
            names = ", ".join(p.name for p in found)
            jobs.append(_Job(image, None, f"several {kind}s match by name ({names}) in {guides}; keep one"))
    return jobs


def _output_paths(out: Path, stem: str, options: PredictOptions, routed: bool) -> dict[str, Path]:
    """The files an image produces with these options (all must exist to skip it)."""
    paths = {"alpha": out / "alpha" / f"{stem}.png"}
    if options.cutout:
        paths["cutout"] = out / "cutout" / f"{stem}.png"
    if options.routing_overlay and routed:
        paths["routing"] = out / "routing" / f"{stem}.png"
    if options.guide_kind == "mask" and options.save_trimaps:
        paths["trimap"] = out / "trimap" / f"{stem}.png"
    return paths


# --------------------------------------------------------------------------- one image
def _predict_one(job: _Job, paths: dict[str, Path], predictor: Predictor, options: PredictOptions,
                 state: _RunState) -> None:
    """Read, matte and write one image's outputs ``paths`` (those still missing when resuming);
    raises on any problem with it."""
    if job.guide is None:
        raise InputError(job.guide_error or f"no {options.guide_kind}")
    image = read_image(job.image)  # (H, W, 3) uint8
    trimap = _load_guide(job, image.shape[:2], options, state)  # (H, W) uint8
    prediction = predictor(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(trimap))
    alpha = prediction.alpha[0, 0]  # (H, W) float32 on the CPU
    if "trimap" in paths:
        write_png(paths["trimap"], trimap)
    if "alpha" in paths:
        write_png(paths["alpha"], alpha.numpy(), bits=options.alpha_bits)
    if "cutout" in paths:
        image_t = torch.from_numpy(image).to(predictor.device).permute(2, 0, 1)
        foreground, _ = estimate_foreground(image_t, alpha.to(predictor.device))
        rgba = torch.cat([foreground.cpu(), alpha[None]], dim=0).permute(1, 2, 0).numpy()
        write_png(paths["cutout"], rgba)
    if "routing" in paths:
        net = predictor.net
        overlay = routing_overlay(image, prediction.routing, net.backbone.patch_size,
                                  net.backbone.routed_block_indexes, options.routing_max_side)
        write_png(paths["routing"], overlay)


def _reason(err: Exception) -> str:
    """The failure reason written to failures.json: our messages as is, others with their type."""
    if isinstance(err, (ImageReadError, InputError, MemoryBudgetError)):
        return str(err)
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return f"out of GPU memory: {err}. Fix: set memory_budget_gb, lower tile or max_tokens"
    return f"{type(err).__name__}: {err}"


class _FailureList:
    """``out/failures.json``, kept current image by image, so that a kill leaves it consistent.

    It lists the inputs whose latest attempt failed, and only those: an input is added when it
    fails and dropped once its outputs are complete. Entries left by an interrupted run stay
    (``"finished": false``) until their input comes up again. At the end of a run the file
    lists exactly that run's failures (``"finished": true``), or is removed when none failed.
    Every write is atomic.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / FAILURES_FILE
        self.reasons: dict[str, str] = {}  # file → reason, earlier runs' entries first
        try:
            earlier = json.loads(self.path.read_text())["failed"]
            self.reasons = {str(f["file"]): str(f["reason"]) for f in earlier}
        except (OSError, ValueError, LookupError, TypeError):
            pass  # none yet, or unreadable: rewritten at the next change

    def failed(self, failure: Failure, summary: PredictSummary) -> None:
        self.reasons[failure.file] = failure.reason
        self._write(summary)

    def completed(self, file: str, summary: PredictSummary) -> None:
        if self.reasons.pop(file, None) is not None:
            self._write(summary)

    def finish(self, summary: PredictSummary) -> None:
        self.reasons = {f.file: f.reason for f in summary.failed}
        if self.reasons:
            self._write(summary, finished=True)
        else:
            self.path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead

    def _write(self, summary: PredictSummary, finished: bool = False) -> None:
        failed = [{"file": f, "reason": r} for f, r in self.reasons.items()]
        write_json(self.path, {"failed": failed, "done": summary.done, "skipped": summary.skipped,
                               "finished": finished})


# --------------------------------------------------------------------------- the run
def predict(options: PredictOptions, net: nn.Module | None = None) -> PredictSummary:
    """Matte every input image; see the module docstring for the outputs.

    Args:
        options: the run's settings.
        net: an already built net (default: rebuilt from ``options.ckpt_path``).

    Returns:
        The run's :class:`PredictSummary` (its ``exit_code`` is 1 when any image failed).

    Raises:
        FileNotFoundError: the checkpoint, input or guide path does not exist.
        ValueError: inconsistent options or an unreadable checkpoint.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    options.validate()
    if net is None and not Path(options.ckpt_path).exists():
        raise FileNotFoundError(
            f"checkpoint not found: {options.ckpt_path} (pass ckpt_path=<run>/checkpoints/last.ckpt, "
            "an official ViTMatte/MEMatte .pth or a Hugging Face VitMatte folder)"
        )
    if not Path(options.input).exists():
        raise FileNotFoundError(f"input not found: {options.input} (pass input=IMAGE_OR_FOLDER)")
    images = list_images(options.input)
    guide_dir = options.trimaps if options.trimaps is not None else options.masks
    jobs = _match_guides(images, Path(guide_dir), options.guide_kind)

    if net is None:
        net = load_net(options.ckpt_path, trust=options.trust_checkpoint)
    predictor = Predictor(net, device=options.device, precision=options.precision, tile=options.tile,
                          context=options.context, memory_budget_gb=options.memory_budget_gb,
                          max_tokens=options.max_tokens, routed_inference=options.routed_inference,
                          preset=options.preset)
    routed = bool(predictor.net.is_routed)
    if options.routing_overlay and not routed:
        log.info("routing_overlay: this checkpoint is ViTMatte (no routed blocks), nothing to draw")

    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={out} is a file; pass a folder for the results")
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, *(p for p in out.iterdir() if p.is_dir())):  # left by a killed run
        clean_stale_temp_files(folder)
    summary = PredictSummary()
    failures = _FailureList(out)
    state = _RunState()
    first_with_stem: dict[str, Path] = {}
    log.info("matting %d image(s) from %s into %s", len(jobs), options.input, out)
    # the bar shows on terminals only (disable=None); the per-image log lines always go to the
    # run's log file, and print above the bar instead of through it
    bar = tqdm(jobs, unit="img", disable=None, file=sys.stderr)
    with logging_redirect_tqdm():
        for i, job in enumerate(bar, start=1):
            stem = job.image.stem
            if stem in first_with_stem:  # a.png and a.jpg would write the same outputs
                summary.failed.append(Failure(str(job.image), (
                    f"same name as {first_with_stem[stem]}: both would write {stem}.png; rename one")))
                failures.failed(summary.failed[-1], summary)
                log.error("%s: same name as %s; rename one", job.image, first_with_stem[stem])
                continue
            first_with_stem[stem] = job.image
            paths = _output_paths(out, stem, options, routed)
            if not options.overwrite:  # resuming: each file is written once, only what is missing
                paths = {kind: p for kind, p in paths.items() if not p.exists()}
            if not paths:
                summary.skipped += 1
                failures.completed(str(job.image), summary)
                continue
            start = time.perf_counter()
            try:
                _predict_one(job, paths, predictor, options, state)
            except DiskFullError:  # not this image's fault: every next one would fail alike
                raise
            except Exception as err:  # one bad image must not stop the batch
                summary.failed.append(Failure(str(job.image), _reason(err)))
                failures.failed(summary.failed[-1], summary)
                expected = isinstance(err, (ImageReadError, InputError, MemoryBudgetError))
                log.error("[%d/%d] %s failed: %s", i, len(jobs), job.image, _reason(err),
                          exc_info=not expected)
                continue
            summary.done += 1
            failures.completed(str(job.image), summary)
            log.info("[%d/%d] %s done in %.1f s", i, len(jobs), job.image.name, time.perf_counter() - start)
    bar.close()

    failures.finish(summary)
    log.info(
        "predict: %d done, %d skipped%s, %d failed%s",
        summary.done, summary.skipped,
        " (their outputs exist; overwrite=true redoes them)" if summary.skipped else "",
        len(summary.failed), f" (listed in {out / FAILURES_FILE})" if summary.failed else "",
    )
    return summary


def run_from_config(cfg: DictConfig) -> int:
    """The Hydra main behind ``predict.py``: run, and return the process exit code.

    Configuration and path errors are logged as one message (no traceback) and give 1
    (:func:`mematte.cli.run_task`); so does a run in which any image failed.
    """
    apply_extras(cfg)
    try:
        summary = run_task(lambda c: predict(PredictOptions.from_config(c)), cfg)
    except SystemExit as stop:  # run_task's user-error exit, already logged
        return int(stop.code or 0)
    return summary.exit_code
