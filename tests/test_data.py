"""Tests for mematte.data: compositing / trimap / crop utilities, synthetic data, data module.

Kept small (images of 64-160 px) so the whole file runs in a few seconds on two CPU cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mematte.data.composition import (
    binary_erosion,
    composite,
    crop_around_unknown,
    ellipse_kernel,
    quantise_trimap,
    trimap_from_alpha,
    trimap_to_uint8,
)
from mematte.data.datamodule import MattingDataModule
from mematte.data.synthetic import (
    SyntheticMattingEvalSet,
    SyntheticMattingSource,
    SyntheticMattingTrainSet,
    merge_foregrounds,
    write_folder_dataset,
)

SRC_DIR = Path(__file__).resolve().parents[1] / "src"
ALPHA_EPS = 1e-5


def assert_valid_trimap(trimap: np.ndarray | torch.Tensor, alpha: np.ndarray | torch.Tensor) -> None:
    """Trimap values in {0, 0.5, 1}, every partial-alpha pixel unknown, known regions exact."""
    trimap, alpha = np.asarray(trimap), np.asarray(alpha)
    assert set(np.unique(trimap).tolist()) <= {0.0, 0.5, 1.0}
    partial = (alpha > ALPHA_EPS) & (alpha < 1 - ALPHA_EPS)
    assert np.all(trimap[partial] == 0.5), "a partial-alpha pixel is not marked unknown"
    assert np.all(alpha[trimap == 1.0] >= 1 - ALPHA_EPS)
    assert np.all(alpha[trimap == 0.0] <= ALPHA_EPS)


# ------------------------------------------------------------------------------------------
# composition.py
# ------------------------------------------------------------------------------------------
def test_composite_formula_and_alpha_shapes() -> None:
    rng = np.random.default_rng(0)
    fg = rng.random((5, 7, 3), dtype=np.float32)
    bg = rng.random((5, 7, 3), dtype=np.float32)
    alpha = rng.random((5, 7), dtype=np.float32)
    expected = fg * alpha[..., None] + bg * (1 - alpha[..., None])
    out = composite(fg, bg, alpha)
    assert out.dtype == np.float32 and out.shape == (5, 7, 3)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(composite(fg, bg, alpha[..., None]), expected, atol=1e-6)
    np.testing.assert_array_equal(composite(fg, bg, np.ones((5, 7), np.float32)), fg)
    np.testing.assert_array_equal(composite(fg, bg, np.zeros((5, 7), np.float32)), bg)
    with pytest.raises(ValueError):
        composite(fg, bg, alpha[:4])


def test_trimap_quantisation_thresholds_and_round_trip() -> None:
    values = np.array([[0, 84, 85, 128, 169, 170, 255]], dtype=np.uint8)
    trimap = quantise_trimap(values)
    assert trimap.dtype == np.float32
    np.testing.assert_array_equal(trimap, [[0, 0, 0.5, 0.5, 0.5, 1, 1]])
    np.testing.assert_array_equal(trimap_to_uint8(trimap), [[0, 0, 128, 128, 128, 255, 255]])
    all_bytes = np.arange(256, dtype=np.uint8)[None]
    np.testing.assert_array_equal(quantise_trimap(trimap_to_uint8(quantise_trimap(all_bytes))), quantise_trimap(all_bytes))


def test_trimap_quantisation_is_one_rule_for_numpy_and_torch() -> None:
    all_bytes = np.arange(256, dtype=np.uint8)
    expected = quantise_trimap(all_bytes)
    as_tensor = quantise_trimap(torch.from_numpy(all_bytes))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32
    np.testing.assert_array_equal(as_tensor.numpy(), expected)
    # float trimaps in [0, 1]: the same thresholds on that scale, for both kinds
    as_float = all_bytes.astype(np.float32) / 255
    np.testing.assert_array_equal(quantise_trimap(as_float), expected)
    np.testing.assert_array_equal(quantise_trimap(torch.from_numpy(as_float)).numpy(), expected)
    for bad_range in (np.array([2.0]), torch.tensor([-0.1])):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            quantise_trimap(bad_range)
    for bad_dtype in (np.array([1], dtype=np.int64), torch.tensor([1], dtype=torch.int64)):
        with pytest.raises(TypeError, match="uint8"):
            quantise_trimap(bad_dtype)


def official_trimap(alpha: np.ndarray, fg_size: int, bg_size: int) -> np.ndarray:
    """The DIM / ViTMatte ``GenTrimap`` recipe, written with OpenCV as in their pipelines:
    pure fg / bg masks by ``(alpha + 1e-5).astype(int)``, each eroded by an elliptical kernel,
    the rest 128. Returns (H, W) uint8 in {0, 128, 255}."""
    import cv2

    fg_mask = (alpha + 1e-5).astype(np.int32).astype(np.uint8)
    bg_mask = (1 - alpha + 1e-5).astype(np.int32).astype(np.uint8)
    fg_mask = cv2.erode(fg_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (fg_size, fg_size)))
    bg_mask = cv2.erode(bg_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (bg_size, bg_size)))
    trimap = np.full(alpha.shape, 128, dtype=np.uint8)
    trimap[fg_mask == 1] = 255
    trimap[bg_mask == 1] = 0
    return trimap


@pytest.mark.parametrize("sizes", [(1, 1), (3, 7), (14, 29)])
def test_trimap_from_alpha_matches_the_official_recipe(sizes: tuple[int, int]) -> None:
    # at the 640-px reference size the kernel sizes are used unscaled, as in GenTrimap
    fg_size, bg_size = sizes
    yy, xx = np.mgrid[0:640, 0:480]
    alpha = np.clip((150 - np.hypot(yy - 300, xx - 240)) / 12 + 0.5, 0, 1).astype(np.float32)
    alpha[:, :40] = 1.0  # a foreground strip on the border: the border must not erode it
    alpha[600:, 200:300] = 0.37  # flat partial alpha
    draws = iter(sizes)

    class FixedSizes:  # stands in for the generator: the two kernel-size draws, fg then bg
        def integers(self, low: int, high: int) -> int:
            return next(draws)

    ours = trimap_from_alpha(alpha, FixedSizes())  # type: ignore[arg-type]
    np.testing.assert_array_equal(trimap_to_uint8(ours), official_trimap(alpha, fg_size, bg_size))


def test_ellipse_kernel_matches_opencv() -> None:
    # cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)) for k = 1, 3, 5, 7, written out.
    np.testing.assert_array_equal(ellipse_kernel(1), [[1]])
    np.testing.assert_array_equal(ellipse_kernel(3), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        ellipse_kernel(5),
        [[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]],
    )
    # OpenCV's row-wise rounding makes 7x7 slightly non-transpose-symmetric
    np.testing.assert_array_equal(
        ellipse_kernel(7),
        [[0, 0, 0, 1, 0, 0, 0]] + [[0, 1, 1, 1, 1, 1, 0]] + [[1] * 7] * 3 + [[0, 1, 1, 1, 1, 1, 0]] + [[0, 0, 0, 1, 0, 0, 0]],
    )
    assert ellipse_kernel(29).dtype == bool and ellipse_kernel(29).shape == (29, 29)
    with pytest.raises(ValueError):
        ellipse_kernel(0)


def test_erosion_of_square_loses_exactly_its_one_pixel_border() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[2:7, 2:7] = True
    expected = np.zeros_like(mask)
    expected[3:6, 3:6] = True
    np.testing.assert_array_equal(binary_erosion(mask, ellipse_kernel(3)), expected)


def test_erosion_does_not_erode_from_the_image_border() -> None:
    mask = np.zeros((12, 16), dtype=bool)
    mask[:, :8] = True  # touches the top, bottom and left borders
    eroded = binary_erosion(mask, ellipse_kernel(5))
    expected = np.zeros_like(mask)
    expected[:, :6] = True  # only the interior edge recedes, by the kernel radius (2)
    np.testing.assert_array_equal(eroded, expected)
    assert binary_erosion(np.ones((6, 6), bool), ellipse_kernel(7)).all()
    # non-contiguous and non-bool masks (nonzero = True) give the same result
    np.testing.assert_array_equal(binary_erosion(np.asfortranarray(mask, dtype=np.float32), ellipse_kernel(5)), expected)


def test_trimap_from_alpha_marks_partial_pixels_unknown() -> None:
    yy, xx = np.mgrid[0:80, 0:100]
    # Disc with a 6-px soft edge, plus a faint isolated pixel.
    alpha = np.clip((30 - np.hypot(yy - 40, xx - 50)) / 6 + 0.5, 0, 1).astype(np.float32)
    alpha[5, 5] = 0.01
    trimap = trimap_from_alpha(alpha, np.random.default_rng(0))
    assert trimap.dtype == np.float32 and trimap.shape == alpha.shape
    assert_valid_trimap(trimap, alpha)
    assert (trimap == 1).any() and (trimap == 0).any()
    # Same generator state -> same trimap.
    np.testing.assert_array_equal(trimap, trimap_from_alpha(alpha, np.random.default_rng(0)))
    # Kernel size 1 (no erosion): unknown is exactly the partial-alpha region.
    exact = trimap_from_alpha(alpha, np.random.default_rng(0), kernel_range=(1, 2))
    np.testing.assert_array_equal(exact == 0.5, (alpha > ALPHA_EPS) & (alpha < 1 - ALPHA_EPS))


def test_trimap_band_scales_with_image_size() -> None:
    def unknown_band_width(side: int) -> float:
        yy, xx = np.mgrid[0:side, 0:side]
        alpha = (xx < side // 2).astype(np.float32)  # a straight hard edge
        trimap = trimap_from_alpha(alpha, np.random.default_rng(1), kernel_range=(29, 30))
        return float((trimap == 0.5).sum(axis=1).mean())

    small, large = unknown_band_width(160), unknown_band_width(640)
    assert large > 3 * small > 0  # 4x smaller image -> ~4x thinner band


def test_crop_is_centred_on_the_unknown_pixel_and_shared_by_all_arrays() -> None:
    height, width, crop = 100, 120, 21
    trimap = np.zeros((height, width), np.float32)
    trimap[30, 40] = 0.5
    coords = np.stack(np.mgrid[0:height, 0:width], axis=-1).astype(np.float32)  # (H, W, 2)
    out = crop_around_unknown({"coords": coords, "trimap": trimap}, trimap, crop, np.random.default_rng(0))
    assert out["trimap"].shape == (crop, crop) and out["coords"].shape == (crop, crop, 2)
    assert out["trimap"][crop // 2, crop // 2] == 0.5
    np.testing.assert_array_equal(out["coords"][0, 0], [30 - crop // 2, 40 - crop // 2])

    # Near a corner the window is shifted inside the image but still contains the pixel.
    trimap = np.zeros((height, width), np.float32)
    trimap[2, 117] = 0.5
    out = crop_around_unknown({"coords": coords, "trimap": trimap}, trimap, (16, 24), np.random.default_rng(0))
    np.testing.assert_array_equal(out["coords"][0, 0], [0, width - 24])
    assert out["trimap"][2, 117 - (width - 24)] == 0.5


def test_crop_pads_consistently_when_the_image_is_smaller() -> None:
    rng = np.random.default_rng(0)
    fg = rng.random((40, 50, 3), dtype=np.float32)
    bg = rng.random((40, 50, 3), dtype=np.float32)
    alpha = rng.random((40, 50), dtype=np.float32)
    trimap = np.full((40, 50), 0.5, np.float32)
    trimap[:10] = 0.0
    arrays = {"fg": fg, "bg": bg, "alpha": alpha, "trimap": trimap, "image": composite(fg, bg, alpha)}
    out = crop_around_unknown(arrays, trimap, 64, np.random.default_rng(1))
    for name, array in out.items():
        assert array.shape[:2] == (64, 64), name
    assert set(np.unique(out["trimap"]).tolist()) <= {0.0, 0.5, 1.0}
    assert 0.0 <= out["alpha"].min() and out["alpha"].max() <= 1.0
    # Padding keeps the sample self-consistent: image == composite(fg, bg, alpha) everywhere.
    np.testing.assert_allclose(out["image"], composite(out["fg"], out["bg"], out["alpha"]), atol=1e-6)
    # Crop larger than the image along one axis only.
    out = crop_around_unknown(arrays, trimap, (32, 80), np.random.default_rng(2))
    assert out["alpha"].shape == (32, 80)
    with pytest.raises(ValueError):
        crop_around_unknown({"alpha": alpha[:5]}, trimap, 8, np.random.default_rng(0))


def test_crop_without_unknown_pixels_still_returns_a_valid_window() -> None:
    trimap = np.ones((30, 30), np.float32)
    out = crop_around_unknown({"trimap": trimap}, trimap, 10, np.random.default_rng(0))
    assert out["trimap"].shape == (10, 10)


# ------------------------------------------------------------------------------------------
# synthetic.py
# ------------------------------------------------------------------------------------------
def test_source_samples_are_pure_functions_of_seed_split_index() -> None:
    source = SyntheticMattingSource(seed=3, size=(72, 96))
    fg, alpha, bg = source.sample("train", 5)
    assert fg.shape == (72, 96, 3) and bg.shape == (72, 96, 3) and alpha.shape == (72, 96)
    for array in (fg, alpha, bg):
        assert array.dtype == np.float32
        assert array.min() >= 0.0 and array.max() <= 1.0
    again = SyntheticMattingSource(seed=3, size=(72, 96)).sample("train", 5)
    for a, b in zip((fg, alpha, bg), again):
        np.testing.assert_array_equal(a, b)
    for other in (source.sample("train", 6), source.sample("val", 5), SyntheticMattingSource(4, (72, 96)).sample("train", 5)):
        assert not np.array_equal(alpha, other[1])
        assert not np.array_equal(bg, other[2])
    assert source.sample("test", 0, size=40)[1].shape == (40, 40)
    with pytest.raises(ValueError):
        source.sample("holdout", 0)


def test_source_alphas_have_real_unknown_structure() -> None:
    source = SyntheticMattingSource(seed=0, size=96)
    partial_fractions = []
    for index in range(12):
        _, alpha, _ = source.sample("train", index)
        partial_fractions.append(np.mean((alpha > 0.02) & (alpha < 0.98)))
        assert alpha.max() > 0.5, "every sample has a visible foreground"
    assert min(partial_fractions) > 0.0
    assert np.median(partial_fractions) > 0.01


def test_merge_foregrounds_equals_stacking_the_layers() -> None:
    rng = np.random.default_rng(0)
    fg1, fg2, bg = (rng.random((6, 8, 3), dtype=np.float32) for _ in range(3))
    a1, a2 = rng.random((6, 8), dtype=np.float32), rng.random((6, 8), dtype=np.float32)
    a1[0, 0] = a2[0, 0] = 0.0
    fg, alpha = merge_foregrounds(fg1, a1, fg2, a2)
    np.testing.assert_allclose(alpha, 1 - (1 - a1) * (1 - a2), atol=1e-6)
    stacked = composite(fg2, composite(fg1, bg, a1), a2)  # fg2 over fg1 over bg
    np.testing.assert_allclose(composite(fg, bg, alpha), stacked, atol=1e-5)
    np.testing.assert_array_equal(fg[0, 0], fg1[0, 0])


def test_train_set_sample_contract_and_determinism() -> None:
    dataset = SyntheticMattingTrainSet(num_samples=6, seed=1, image_size=96, crop_size=64, merge_prob=0.5)
    assert len(dataset) == 6
    for index in range(len(dataset)):
        sample = dataset[index]
        assert set(sample) == {"image", "alpha", "trimap", "fg", "bg", "name"}
        assert sample["name"] == f"synthetic_train_{index:05d}"
        for key, channels in (("image", 3), ("fg", 3), ("bg", 3), ("alpha", 1), ("trimap", 1)):
            tensor = sample[key]
            assert tensor.dtype == torch.float32 and tensor.shape == (channels, 64, 64), key
            assert tensor.is_contiguous(), key
            assert 0.0 <= tensor.min() and tensor.max() <= 1.0, key
        assert_valid_trimap(sample["trimap"][0].numpy(), sample["alpha"][0].numpy())
        assert (sample["trimap"] == 0.5).any(), "crops are centred on unknown pixels"
        expected = composite(
            sample["fg"].permute(1, 2, 0).numpy(), sample["bg"].permute(1, 2, 0).numpy(), sample["alpha"][0].numpy()
        )
        np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    again = SyntheticMattingTrainSet(num_samples=6, seed=1, image_size=96, crop_size=64, merge_prob=0.5)[2]
    first = dataset[2]
    for key in ("image", "alpha", "trimap", "fg", "bg"):
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(dataset[3]["alpha"], first["alpha"])
    with pytest.raises(IndexError):
        dataset[6]


def test_train_set_merge_changes_the_alpha() -> None:
    merged = SyntheticMattingTrainSet(num_samples=4, seed=0, image_size=64, crop_size=64, merge_prob=1.0)
    single = SyntheticMattingTrainSet(num_samples=4, seed=0, image_size=64, crop_size=64, merge_prob=0.0)
    # Full-size crops: the merged alpha is the union, so it covers at least the single one.
    for index in range(4):
        a_merged, a_single = merged[index]["alpha"], single[index]["alpha"]
        assert (a_merged >= a_single - 1e-6).all()
        assert a_merged.sum() > a_single.sum()


def test_train_set_crop_larger_than_image_size() -> None:
    sample = SyntheticMattingTrainSet(num_samples=1, image_size=48, crop_size=80)[0]
    assert sample["image"].shape == (3, 80, 80)


def test_eval_set_contract_sizes_and_fixed_trimaps() -> None:
    dataset = SyntheticMattingEvalSet("val", num_samples=24, seed=0, min_size=40, max_size=100)
    sizes = [dataset.image_size(index) for index in range(len(dataset))]
    assert all(40 <= side <= 100 for size in sizes for side in size)
    assert len(set(sizes)) > 10, "image sizes vary per sample"
    assert any(side % 32 for size in sizes for side in size), "sizes are not all multiples of 32"
    for index in range(3):
        sample = dataset[index]
        height, width = sizes[index]
        assert set(sample) == {"image", "alpha", "trimap", "name"}
        assert sample["name"] == f"synthetic_val_{index:05d}"
        assert sample["image"].shape == (3, height, width) and sample["image"].dtype == torch.float32
        assert sample["alpha"].shape == sample["trimap"].shape == (1, height, width)
        assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
        assert_valid_trimap(sample["trimap"][0].numpy(), sample["alpha"][0].numpy())
        assert (sample["trimap"] == 0.5).any()
        assert torch.equal(sample["trimap"], dataset[index]["trimap"])
    test_sample = SyntheticMattingEvalSet("test", num_samples=1, min_size=40, max_size=100)[0]
    assert not torch.equal(test_sample["alpha"], dataset[0]["alpha"]) or test_sample["alpha"].shape != dataset[0]["alpha"].shape
    with_fg_bg = SyntheticMattingEvalSet("val", 1, min_size=40, max_size=60, return_fg_bg=True)[0]
    assert with_fg_bg["fg"].shape == with_fg_bg["image"].shape == with_fg_bg["bg"].shape
    with pytest.raises(ValueError):
        SyntheticMattingEvalSet("train", 1)


# ------------------------------------------------------------------------------------------
# Folder export and CLI
# ------------------------------------------------------------------------------------------
def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_write_folder_dataset_round_trip(tmp_path: Path) -> None:
    dataset = SyntheticMattingEvalSet("test", num_samples=3, seed=2, min_size=40, max_size=72, return_fg_bg=True)
    root = tmp_path / "synthetic_test"
    assert write_folder_dataset(dataset, root, with_fg_bg=True) == 3
    for index in range(3):
        sample = dataset[index]
        name = sample["name"]
        alpha = _read_png(root / "alpha" / f"{name}.png")
        trimap = _read_png(root / "trimap" / f"{name}.png")
        image = _read_png(root / "image" / f"{name}.png")
        assert alpha.dtype == np.uint8 and alpha.shape == tuple(sample["alpha"].shape[1:])
        assert image.shape == (*sample["image"].shape[1:], 3)
        np.testing.assert_allclose(alpha / 255.0, sample["alpha"][0].numpy(), atol=0.5 / 255 + 1e-6)
        np.testing.assert_allclose(image / 255.0, sample["image"].permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)
        assert set(np.unique(trimap).tolist()) <= {0, 128, 255}
        np.testing.assert_array_equal(quantise_trimap(trimap), sample["trimap"][0].numpy())
        for folder in ("fg", "bg"):
            assert (root / folder / f"{name}.png").is_file()
    files = [path for path in root.rglob("*") if path.is_file()]
    assert len(files) == 3 * 5
    assert all(path.suffix == ".png" and not path.name.startswith(".") for path in files), "temp files left"


def test_write_folder_dataset_skips_fg_bg_unless_asked(tmp_path: Path) -> None:
    dataset = SyntheticMattingEvalSet("val", num_samples=1, min_size=32, max_size=40)
    write_folder_dataset(dataset, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["alpha", "image", "trimap"]


def test_cli_writes_a_split_identical_to_in_process_generation(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "mematte.data.synthetic", "--out", str(tmp_path), "--split", "val", "--num", "2",
               "--seed", "5", "--min-size", "40", "--max-size", "64"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 val samples" in result.stdout
    expected = SyntheticMattingEvalSet("val", num_samples=2, seed=5, min_size=40, max_size=64)
    for index in range(2):
        sample = expected[index]
        alpha = _read_png(tmp_path / "alpha" / f"{sample['name']}.png")
        # Generated in another process: identical up to 8-bit quantisation.
        np.testing.assert_array_equal(alpha, np.round(sample["alpha"][0].numpy() * 255).astype(np.uint8))
        assert (tmp_path / "trimap" / f"{sample['name']}.png").is_file()


# ------------------------------------------------------------------------------------------
# datamodule.py
# ------------------------------------------------------------------------------------------
def test_datamodule_loaders() -> None:
    module = MattingDataModule(
        train_set=SyntheticMattingTrainSet(num_samples=5, image_size=64, crop_size=48),
        val_set=SyntheticMattingEvalSet("val", num_samples=2, min_size=40, max_size=70),
        test_set=SyntheticMattingEvalSet("test", num_samples=2, min_size=40, max_size=70),
        batch_size=2,
    )
    train_loader = module.train_dataloader()
    # seeded shuffle, a pure function of (seed, epoch): resumable mid-epoch
    from mematte.data.datamodule import ResumableSampler

    assert isinstance(train_loader.sampler, ResumableSampler)
    assert not train_loader.persistent_workers
    batches = list(train_loader)
    assert len(batches) == 2  # 5 samples, batch 2, last incomplete batch dropped
    batch = batches[0]
    assert batch["image"].shape == (2, 3, 48, 48) and batch["fg"].shape == (2, 3, 48, 48)
    assert batch["alpha"].shape == batch["trimap"].shape == (2, 1, 48, 48)
    assert len(batch["name"]) == 2

    val_loader = module.val_dataloader()
    assert isinstance(val_loader.sampler, torch.utils.data.SequentialSampler)
    val_batches = list(val_loader)
    assert len(val_batches) == 2
    assert val_batches[0]["image"].shape[0] == 1 and val_batches[0]["name"] == ["synthetic_val_00000"]
    assert [b["name"] for b in module.predict_dataloader()] == [b["name"] for b in module.test_dataloader()]


def test_datamodule_missing_split_raises_a_clear_error() -> None:
    module = MattingDataModule(train_set=SyntheticMattingTrainSet(num_samples=2, image_size=32, crop_size=32))
    with pytest.raises(ValueError, match=r"data\.val_set is not set in the data config"):
        module.val_dataloader()
    with pytest.raises(ValueError, match=r"data\.test_set"):
        module.predict_dataloader()
    with pytest.raises(ValueError, match=r"data\.train_set"):
        MattingDataModule().train_dataloader()


def test_datamodule_persistent_workers_only_with_workers() -> None:
    dataset = SyntheticMattingEvalSet("val", num_samples=1, min_size=32, max_size=32)
    assert not MattingDataModule(val_set=dataset, persistent_workers=True).val_dataloader().persistent_workers
    loader = MattingDataModule(val_set=dataset, num_workers=1, persistent_workers=True).val_dataloader()
    assert loader.persistent_workers  # not iterated: no worker process is started
