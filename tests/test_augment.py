"""Tests for mematte.data.augment: the batched (GPU-ready) training augmentation.

Tiny batches (48-96 px canvases) on the CPU; the whole file runs in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mematte.data.augment import (
    MattingAugment,
    affine_matrices,
    batch_binary_erosion,
    crop_centres,
    hsv_jitter,
    merge_second_foreground,
    random_trimap,
    warp_per_sample,
)
from mematte.data.composition import binary_erosion, ellipse_kernel

ALPHA_EPS = 1e-5
ALL_OFF = dict(crop_size=None, merge_prob=0.0, flip_prob=0.0, vflip_prob=0.0, affine=False, jitter=False)


def disc_alpha(size: int, solid: float, soft: float, batch: int = 1) -> torch.Tensor:
    """(B, 1, size, size) centred disc: 1 inside ``solid`` px, linear ramp to 0 at ``solid + soft``."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = torch.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    alpha = ((solid + soft - radius) / soft).clamp(0, 1)
    return alpha.expand(batch, 1, size, size).clone()


def layered_batch(batch: int = 3, size: int = 48, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "fg": torch.rand(batch, 3, size, size, generator=gen),
        "bg": torch.rand(batch, 3, size, size, generator=gen),
        "alpha": disc_alpha(size, size / 6, size / 8, batch),
        "name": [f"s{i}" for i in range(batch)],
    }


def assert_valid_trimap(trimap: torch.Tensor, alpha: torch.Tensor) -> None:
    assert set(trimap.unique().tolist()) <= {0.0, 0.5, 1.0}
    partial = (alpha > ALPHA_EPS) & (alpha < 1 - ALPHA_EPS)
    assert torch.all(trimap[partial] == 0.5), "a partial-alpha pixel is not unknown"
    assert torch.all(alpha[trimap == 1.0] >= 1 - ALPHA_EPS)
    assert torch.all(alpha[trimap == 0.0] <= ALPHA_EPS)


# ------------------------------------------------------------------------------ pipeline
def test_full_pipeline_shapes_ranges_and_contract() -> None:
    batch = layered_batch(batch=3, size=48)
    out = MattingAugment(crop_size=32, seed=1)(batch)
    assert set(out) == {"image", "alpha", "trimap", "fg", "bg", "name"}
    for key, channels in (("image", 3), ("fg", 3), ("bg", 3), ("alpha", 1), ("trimap", 1)):
        assert out[key].shape == (3, channels, 32, 32), key
        assert out[key].dtype == torch.float32
        assert 0.0 <= out[key].min() and out[key].max() <= 1.0, key
    assert out["name"] == batch["name"]
    assert_valid_trimap(out["trimap"], out["alpha"])
    composite = out["fg"] * out["alpha"] + out["bg"] * (1 - out["alpha"])
    torch.testing.assert_close(out["image"], composite, atol=1e-6, rtol=0)


def test_all_steps_off_is_identity_except_composite() -> None:
    batch = layered_batch()
    out = MattingAugment(**ALL_OFF)(batch)
    torch.testing.assert_close(out["fg"], batch["fg"], atol=0, rtol=0)
    torch.testing.assert_close(out["bg"], batch["bg"], atol=0, rtol=0)
    torch.testing.assert_close(out["alpha"], batch["alpha"], atol=0, rtol=0)
    expected = batch["fg"] * batch["alpha"] + batch["bg"] * (1 - batch["alpha"])
    torch.testing.assert_close(out["image"], expected, atol=1e-6, rtol=0)
    assert_valid_trimap(out["trimap"], out["alpha"])


@pytest.mark.parametrize(
    "switch,changes",
    [
        (dict(merge_prob=1.0), {"alpha", "fg"}),
        (dict(flip_prob=1.0), {"alpha", "fg"}),
        (dict(vflip_prob=1.0), {"alpha", "fg"}),
        (dict(affine=True), {"alpha", "fg"}),
        (dict(jitter=True), {"fg"}),
        (dict(crop_size=32), {"alpha", "fg", "bg"}),
    ],
)
def test_each_step_switches_on_alone(switch: dict, changes: set) -> None:
    batch = layered_batch(batch=2, size=48, seed=3)
    ramp = torch.linspace(0.3, 1.0, 48)
    batch["alpha"] = batch["alpha"] * ramp.view(1, 1, 1, 48) * ramp.view(1, 1, 48, 1)  # no symmetry
    out = MattingAugment(**{**ALL_OFF, **switch}, seed=5)(batch)
    for key in ("alpha", "fg", "bg"):
        same = out[key].shape == batch[key].shape and torch.equal(out[key], batch[key])
        assert same != (key in changes), f"{switch}: {key} {'unchanged' if same else 'changed'}"


@pytest.mark.parametrize("probs,dims", [((1.0, 0.0), (-1,)), ((0.0, 1.0), (-2,)), ((1.0, 1.0), (-2, -1))])
def test_flip_is_exact_and_shared_by_fg_and_alpha(probs: tuple, dims: tuple) -> None:
    batch = layered_batch(batch=2)
    out = MattingAugment(**{**ALL_OFF, "flip_prob": probs[0], "vflip_prob": probs[1]})(batch)
    torch.testing.assert_close(out["alpha"], batch["alpha"].flip(dims), atol=0, rtol=0)
    torch.testing.assert_close(out["fg"], batch["fg"].flip(dims), atol=0, rtol=0)


# ------------------------------------------------------------------------------ official defaults
def test_defaults_are_the_official_pipeline(make_cfg) -> None:
    """ViTMatte/MEMatte's RandomAffine: both axes flipped with p 0.5, no rotation below 1024 px."""
    augment = MattingAugment()
    assert (augment.flip_prob, augment.vflip_prob, augment.rotate_min_size) == (0.5, 0.5, 1024)
    assert (augment.degrees, augment.scale, augment.shear) == (30.0, (0.8, 1.25), 10.0)
    cfg = make_cfg("train", ["data=synthetic_augment"])
    assert cfg.data.augment.vflip_prob == 0.5 and cfg.data.augment.rotate_min_size == 1024
    with pytest.raises(ValueError, match="rotate_min_size"):
        MattingAugment(rotate_min_size=-1)


def flip_outcomes(out: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(B, 2) bool (horizontal, vertical) flip per sample; each output must be an exact flip."""
    candidates = {(h, v): pattern.flip([d for d, on in ((-1, h), (-2, v)) if on]) for h in (0, 1) for v in (0, 1)}
    found = []
    for sample in out:
        hits = [key for key, flipped in candidates.items() if torch.equal(sample, flipped)]
        assert len(hits) == 1, "output is not exactly one of the four flips"
        found.append(hits[0])
    return torch.tensor(found, dtype=torch.bool)


@pytest.mark.parametrize("hprob,vprob", [(0.5, 0.5), (0.2, 0.7), (0.0, 0.5), (0.5, 0.0)])
def test_both_flip_axes_happen_independently_at_their_probabilities(hprob: float, vprob: float) -> None:
    count, side = 4000, 4
    # no symmetry: each of the four flips gives a different image; fg gets its own pattern
    alpha = (torch.arange(side * side, dtype=torch.float32) / (side * side - 1)).view(1, 1, side, side)
    fg = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    batch = {"fg": fg.expand(count, -1, -1, -1), "bg": torch.zeros(count, 3, side, side),
             "alpha": alpha.expand(count, -1, -1, -1)}
    augment = MattingAugment(**{**ALL_OFF, "flip_prob": hprob, "vflip_prob": vprob})
    out = augment(batch, torch.Generator().manual_seed(11))
    flips = flip_outcomes(out["alpha"], alpha[0])
    # fg and alpha always get the same flip
    assert torch.equal(flip_outcomes(out["fg"], fg[0]), flips)
    rate_h, rate_v = flips.float().mean(dim=0).tolist()
    both = (flips[:, 0] & flips[:, 1]).float().mean().item()
    tol = 0.035  # > 4 standard deviations at 4000 samples
    assert abs(rate_h - hprob) < tol and abs(rate_v - vprob) < tol
    assert abs(both - hprob * vprob) < tol  # independent axes
    if hprob == 0 or vprob == 0:  # a disabled axis never flips
        assert (rate_h == 0) == (hprob == 0) and (rate_v == 0) == (vprob == 0)


def bar_batch(sizes: list[float], key: str = "source_extent", side: int = 64) -> dict:
    """Thin horizontal bar through the centre: its orientation after the warp is the rotation."""
    alpha = torch.zeros(len(sizes), 1, side, side)
    alpha[:, :, side // 2 - 2 : side // 2 + 2, 12 : side - 12] = 1.0
    fg = torch.rand(len(sizes), 3, side, side, generator=torch.Generator().manual_seed(0))
    return {"fg": fg, "bg": torch.zeros_like(fg), "alpha": alpha, key: torch.tensor(sizes, dtype=torch.float64)}


def orientation_deg(alpha: torch.Tensor) -> torch.Tensor:
    """(B,) angle of the principal axis of each alpha mass (second moments), in degrees."""
    _, _, height, width = alpha.shape
    rows, cols = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")
    w = alpha[:, 0].double()
    mass = w.sum(dim=(1, 2))
    my, mx = (w * yy).sum(dim=(1, 2)) / mass, (w * xx).sum(dim=(1, 2)) / mass
    dy, dx = yy - my[:, None, None], xx - mx[:, None, None]
    mu20, mu02, mu11 = ((w * f).sum(dim=(1, 2)) / mass for f in (dx * dx, dy * dy, dx * dy))
    return torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))


# scale and shear off: the warp is a pure rotation (or exactly the identity without one)
ROTATE_ONLY = {**ALL_OFF, "affine": True, "scale": (1.0, 1.0), "shear": 0.0, "interpolations": ["nearest"]}
SOURCES = [512.0, 1023.0, 1024.0, 4000.0] * 6  # longer side of each sample's source


def test_rotation_only_for_sources_of_1024_px_or_more() -> None:
    batch = bar_batch(SOURCES)
    out = MattingAugment(**ROTATE_ONLY)(batch, torch.Generator().manual_seed(2))
    big = torch.tensor(SOURCES) >= 1024
    # below 1024 px: never rotated (pure identity warp, exact with nearest)
    assert torch.equal(out["alpha"][~big], batch["alpha"][~big])
    assert torch.equal(out["fg"][~big], batch["fg"][~big])
    # from 1024 px on: rotated within ±30°, both ways, by clearly non-zero angles
    angles = orientation_deg(out["alpha"][big])
    assert angles.abs().max() <= 31 and angles.abs().max() > 10
    assert (angles > 1).any() and (angles < -1).any()
    assert (angles.abs() > 0.5).float().mean() > 0.8


def test_rotate_min_size_zero_rotates_every_sample() -> None:
    batch = bar_batch(SOURCES)
    gated = MattingAugment(**ROTATE_ONLY)(batch, torch.Generator().manual_seed(2))
    always = MattingAugment(**{**ROTATE_ONLY, "rotate_min_size": 0})(batch, torch.Generator().manual_seed(2))
    big = torch.tensor(SOURCES) >= 1024
    # the angle stream does not depend on the gate: large sources get the very same warp
    assert torch.equal(always["alpha"][big], gated["alpha"][big])
    angles = orientation_deg(always["alpha"][~big])
    assert (angles.abs() > 0.5).float().mean() > 0.8 and angles.abs().max() > 10
    assert not torch.equal(always["alpha"][~big], batch["alpha"][~big])


def test_rotation_gate_reads_source_size_then_extent_then_canvas() -> None:
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    rotated = lambda out, batch: not torch.equal(out["alpha"], batch["alpha"])  # noqa: E731
    augment = MattingAugment(**ROTATE_ONLY)
    # source_size wins over source_extent (here: a large canvas window of a small source)
    batch = {**bar_batch([4000.0] * 4), "source_size": torch.tensor([800.0] * 4)}
    assert not rotated(augment(batch, gen()), batch)
    batch = {**bar_batch([600.0] * 4), "source_size": torch.tensor([2000.0] * 4)}
    assert rotated(augment(batch, gen()), batch)
    # without either, the canvas is the source: 64 px
    batch = bar_batch([0.0] * 4)
    del batch["source_extent"]
    assert not rotated(augment(batch, gen()), batch)
    assert rotated(MattingAugment(**{**ROTATE_ONLY, "rotate_min_size": 64})(batch, gen()), batch)
    assert not rotated(MattingAugment(**{**ROTATE_ONLY, "rotate_min_size": 65})(batch, gen()), batch)


def test_affine_keeps_alpha_in_range_for_every_interpolation() -> None:
    batch = layered_batch(batch=4, size=48)
    # hard edges make bicubic overshoot before the clamp
    batch["alpha"] = (batch["alpha"] > 0.5).float()
    for mode in ("nearest", "bilinear", "bicubic"):
        augment = MattingAugment(**{**ALL_OFF, "affine": True, "interpolations": [mode]}, seed=2)
        out = augment(batch)
        assert 0.0 <= out["alpha"].min() and out["alpha"].max() <= 1.0
        assert not torch.equal(out["alpha"], batch["alpha"])
        assert_valid_trimap(out["trimap"], out["alpha"])


def test_fg_and_alpha_get_the_same_warp() -> None:
    # fg = alpha replicated: after the warp the fg channels must still equal alpha
    alpha = disc_alpha(40, 8, 6, batch=3)
    batch = {"fg": alpha.expand(3, 3, 40, 40).clone(), "bg": torch.zeros(3, 3, 40, 40), "alpha": alpha}
    switches = {"affine": True, "rotate_min_size": 0, "flip_prob": 0.5, "vflip_prob": 0.5}
    out = MattingAugment(**{**ALL_OFF, **switches}, seed=4)(batch)
    for channel in range(3):
        torch.testing.assert_close(out["fg"][:, channel : channel + 1], out["alpha"], atol=1e-6, rtol=0)


def test_crop_is_centred_on_an_unknown_pixel() -> None:
    # unknown ring well inside the canvas, so no window is shifted at the border
    size, crop = 96, 48
    batch = layered_batch(batch=4, size=size)
    batch["alpha"] = disc_alpha(size, 8, 6, batch=4)
    out = MattingAugment(**{**ALL_OFF, "crop_size": crop, "merge_prob": 0.5, "flip_prob": 0.5}, seed=0)(batch)
    assert torch.all(out["trimap"][:, 0, crop // 2, crop // 2] == 0.5)


def test_crop_centres_are_unknown_pixels_or_uniform_without_any() -> None:
    gen = torch.Generator().manual_seed(0)
    trimap = torch.zeros(5, 1, 30, 20)
    trimap[:4] = (torch.rand(4, 1, 30, 20, generator=gen) < 0.05).float() * 0.5
    for _ in range(20):
        rows, cols = crop_centres(trimap, torch.rand(5, generator=gen))
        assert torch.all(trimap[torch.arange(4), 0, rows[:4], cols[:4]] == 0.5)
        assert 0 <= rows[4] < 30 and 0 <= cols[4] < 20


def test_deterministic_under_a_generator() -> None:
    batch = layered_batch(batch=3)
    augment = MattingAugment(crop_size=32)
    first = augment(batch, torch.Generator().manual_seed(7))
    again = augment(batch, torch.Generator().manual_seed(7))
    other = augment(batch, torch.Generator().manual_seed(8))
    for key in ("image", "alpha", "trimap"):
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["image"], other["image"])
    # the module's own generator restarts with reseed
    augment.reseed(3)
    a = augment(batch)
    augment.reseed(3)
    assert torch.equal(a["image"], augment(batch)["image"])


def test_composite_only_batches_without_fg_bg() -> None:
    batch = layered_batch(batch=2)
    image_batch = {"image": batch["fg"], "alpha": batch["alpha"], "name": batch["name"]}
    out = MattingAugment(crop_size=32, seed=0)(image_batch)
    assert set(out) == {"image", "alpha", "trimap", "name"}
    assert out["image"].shape == (2, 3, 32, 32)
    assert_valid_trimap(out["trimap"], out["alpha"])


def test_source_extent_scales_the_trimap_kernels() -> None:
    batch = layered_batch(batch=2, size=64)
    narrow = MattingAugment(**ALL_OFF, seed=0)({**batch, "source_extent": torch.tensor([64.0, 64.0])})
    wide = MattingAugment(**ALL_OFF, seed=0)({**batch, "source_extent": torch.tensor([640.0 * 4, 640.0 * 4])})
    assert (wide["trimap"] == 0.5).sum() > (narrow["trimap"] == 0.5).sum()
    assert_valid_trimap(wide["trimap"], wide["alpha"])


def test_too_small_canvas_names_the_fix() -> None:
    with pytest.raises(ValueError, match="image_size >= crop_size"):
        MattingAugment(crop_size=64)(layered_batch(size=48))


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="interpolations"):
        MattingAugment(interpolations=["lanczos"])
    with pytest.raises(ValueError, match="trimap_kernel_range"):
        MattingAugment(trimap_kernel_range=(0, 5))


# ------------------------------------------------------------------------------ steps
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 10])
def test_batch_erosion_matches_the_numpy_reference(size: int) -> None:
    rng = np.random.default_rng(size)
    masks = rng.random((3, 23, 31)) < 0.8
    sizes = [size, max(1, size - 1), size + 2]
    out = batch_binary_erosion(torch.from_numpy(masks)[:, None], sizes)
    for mask, k, eroded in zip(masks, sizes, out[:, 0].numpy()):
        np.testing.assert_array_equal(eroded, binary_erosion(mask, ellipse_kernel(k)))


def test_random_trimap_marks_partial_alpha_unknown() -> None:
    alpha = disc_alpha(48, 10, 6, batch=2)
    trimap = random_trimap(alpha, [1, 9], [3, 1])
    assert_valid_trimap(trimap, alpha)
    assert (trimap[1] == 1.0).sum() < (trimap[0] == 1.0).sum()  # bigger fg kernel, less fg


def test_merge_is_the_over_operator() -> None:
    gen = torch.Generator().manual_seed(0)
    fg, over, bg = (torch.rand(2, 3, 8, 8, generator=gen) for _ in range(3))
    alpha, alpha_over = (torch.rand(2, 1, 8, 8, generator=gen) * 0.9 for _ in range(2))
    merged_fg, merged_alpha = merge_second_foreground(fg, alpha, over, alpha_over, torch.tensor([True, False]))
    torch.testing.assert_close(merged_alpha[0], 1 - (1 - alpha[0]) * (1 - alpha_over[0]))
    stacked = over[0] * alpha_over[0] + (fg[0] * alpha[0] + bg[0] * (1 - alpha[0])) * (1 - alpha_over[0])
    torch.testing.assert_close(merged_fg[0] * merged_alpha[0] + bg[0] * (1 - merged_alpha[0]), stacked)
    assert torch.equal(merged_fg[1], fg[1]) and torch.equal(merged_alpha[1], alpha[1])


def test_merge_skips_samples_that_would_become_opaque() -> None:
    ones = torch.ones(1, 1, 4, 4)
    fg = torch.rand(1, 3, 4, 4)
    merged_fg, merged_alpha = merge_second_foreground(fg, ones * 0.5, torch.rand(1, 3, 4, 4), ones, torch.tensor([True]))
    assert torch.equal(merged_fg, fg) and torch.equal(merged_alpha, ones * 0.5)


def test_affine_identity_matrix_and_warp() -> None:
    matrices = affine_matrices(torch.zeros(2), torch.ones(2, 2), torch.zeros(2), 10, 12)
    torch.testing.assert_close(matrices, torch.eye(2, 3).expand(2, 2, 3))
    x = torch.rand(2, 4, 10, 12)
    torch.testing.assert_close(warp_per_sample(x, matrices, ["bilinear", "nearest"]), x, atol=1e-5, rtol=0)


def test_hsv_jitter_changes_weighted_samples_only() -> None:
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 6, 6, generator=gen)
    weight = torch.zeros(2, 1, 6, 6)
    weight[0] = 1
    out = hsv_jitter(rgb, weight, torch.tensor([20.0, 20.0]), torch.rand(2, generator=gen), torch.rand(2, generator=gen))
    assert not torch.allclose(out[0], rgb[0])
    assert torch.equal(out[1], rgb[1])
    assert 0 <= out.min() and out.max() <= 1


def test_synthetic_data_goes_through_the_same_augmentation(make_cfg):
    """data=synthetic_augment: raw synthetic layers → MattingAugment → training crops."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    cfg = make_cfg("train", ["data=synthetic_augment", "data.num_workers=0"])
    dm = instantiate(cfg.data, _convert_="partial")
    raw = dm.train_set[0]
    side = max(cfg.data.train_set.image_size, cfg.data.train_set.crop_size)
    assert set(raw) == {"fg", "alpha", "bg", "name"} and raw["fg"].shape == (3, side, side)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1, fit_loop=None)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    crop = cfg.data.train_set.crop_size
    assert batch["image"].shape == (cfg.data.batch_size, 3, crop, crop)
    assert batch["trimap"].shape == batch["alpha"].shape == (cfg.data.batch_size, 1, crop, crop)
    assert set(batch["trimap"].unique().tolist()) <= {0.0, 0.5, 1.0}
    # without the augmentation the raw set is refused, naming the fix
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="data.augment"):
        instantiate(cfg.data, augment=None, _convert_="partial")
