"""Tests for mematte.data.folders and ``python -m mematte.data`` (check, compose-test).

Every dataset layout is generated in a temporary folder with a few 64×48 images, composed
through Hydra exactly as ``python train.py data=<name> data.root=<dir>`` does, and sampled.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from mematte.data.__main__ import main as data_main
from mematte.data.datamodule import MattingDataModule
from mematte.image_io import read_size
from mematte.data.folders import (
    DatasetLayoutError,
    FolderEvalSet,
    FolderTrainSet,
    compose_test_set,
    deterministic_trimap,
    dim_composite,
)

SRC_DIR = Path(__file__).resolve().parents[1] / "src"
HEIGHT, WIDTH = 48, 64
# a tiny canvas and crop so a train batch is cheap
TINY = ["data.train_set.image_size=40", "data.train_set.crop_size=32"]
LOADERS = ["data.batch_size=2", "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false"]


# ------------------------------------------------------------------------------ builders
def disc_alpha(height: int = HEIGHT, width: int = WIDTH, shift: int = 0) -> np.ndarray:
    """uint8 alpha: an opaque disc with a soft rim (partial alpha)."""
    yy, xx = np.mgrid[:height, :width]
    radius = np.hypot(yy - height / 2, xx - width / 2 - shift)
    return (np.clip((16 - radius) / 6, 0, 1) * 255).round().astype(np.uint8)


def trimap_of(alpha: np.ndarray) -> np.ndarray:
    trimap = np.full_like(alpha, 128)
    trimap[alpha == 255] = 255
    trimap[alpha == 0] = 0
    return trimap


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def rgb(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_pairs(colour_dir: Path, alpha_dir: Path, stems: list[str], ext: str = ".jpg") -> None:
    for i, stem in enumerate(stems):
        save(colour_dir / f"{stem}{ext}", rgb(i))
        save(alpha_dir / f"{stem}.png", disc_alpha(shift=i))


def write_eval(root: Path, image: str, alpha: str, trimap: str | None, stems: list[str], ext: str = ".png") -> None:
    for i, stem in enumerate(stems):
        save(root / image / f"{stem}{ext}", rgb(100 + i))
        a = disc_alpha(shift=i)
        save(root / alpha / f"{stem}.png", a)
        if trimap:
            save(root / trimap / f"{stem}.png", trimap_of(a))


def write_backgrounds(folder: Path, count: int = 3) -> None:
    for i in range(count):
        save(folder / f"bg{i}.jpg", rgb(200 + i, 30 + 10 * i, 50))


def make_composition1k(root: Path) -> None:
    train = root / "Combined_Dataset" / "Training_set"
    write_pairs(train / "Adobe-licensed images" / "fg", train / "Adobe-licensed images" / "alpha", ["a0", "a1"])
    write_pairs(train / "Other" / "fg", train / "Other" / "alpha", ["o0"])
    (train / "training_fg_names.txt").write_text("a0.jpg\r\no0.jpg\na1.jpg\n")
    write_backgrounds(root / "train2014")
    test = "Composition-1k-testset"
    write_eval(root, f"{test}/merged", f"{test}/alpha_copy", f"{test}/trimaps", ["t0_0", "t0_1", "t1_0"])


def make_distinctions646(root: Path) -> None:
    write_pairs(root / "Train" / "FG", root / "Train" / "GT", ["d0", "d1"], ext=".png")
    write_backgrounds(root / "train2014")
    write_eval(root, "Test/merged", "Test/alpha_copy", "Test/trimaps", ["e0_0", "e0_1"])


def make_aim500(root: Path) -> None:
    write_eval(root, "original", "mask", "trimap", ["p_1", "p_2"], ext=".jpg")


def make_uhr395(root: Path) -> None:
    write_pairs(root / "train" / "fg", root / "train" / "alpha", ["u0", "u1"])
    write_backgrounds(root / "train" / "bg")
    write_eval(root, "test/merged", "test/alpha_copy", "test/trimaps", ["v0_0"])


def make_folder(root: Path) -> None:
    write_pairs(root / "train" / "fg", root / "train" / "alpha", ["f0", "f1"], ext=".png")
    write_backgrounds(root / "train" / "bg")
    write_eval(root, "test/image", "test/alpha", None, ["g0", "g1"])  # trimaps generated


def make_folder_composites(root: Path) -> None:
    write_pairs(root / "train" / "image", root / "train" / "alpha", ["c0", "c1"], ext=".png")
    write_eval(root, "test/image", "test/alpha", "test/trimap", ["g0"])


LAYOUTS: dict[str, Callable[[Path], None]] = {
    "composition1k": make_composition1k,
    "distinctions646": make_distinctions646,
    "aim500": make_aim500,
    "uhr395": make_uhr395,
    "folder": make_folder,
}


@pytest.fixture
def data_module(make_cfg) -> Callable[..., MattingDataModule]:
    """``data_module("composition1k", root)``: the config composed and instantiated as train.py does."""

    def build(name: str, root: Path, extra: list[str] | None = None) -> MattingDataModule:
        overrides = [f"data={name}", f"data.root={root}", *LOADERS, *(extra or [])]
        cfg = make_cfg("train", overrides, tiny=False)
        if cfg.data.train_set is not None:
            cfg = make_cfg("train", overrides + TINY, tiny=False)
        return instantiate(cfg.data, _convert_="partial")

    return build


def train_batch(dm: MattingDataModule) -> dict:
    """One training batch as the trainer sees it: collated, 'transferred', augmented."""
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1, fit_loop=None)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return dm.on_after_batch_transfer(batch, 0)


# ------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_layout_composes_and_yields_train_and_test_samples(name: str, data_module, tmp_path: Path) -> None:
    root = tmp_path / name
    LAYOUTS[name](root)
    dm = data_module(name, root)
    assert dm.eval_region == ("all" if name == "distinctions646" else "unknown")

    sample = dm.test_set[0]
    assert sample["image"].shape == (3, HEIGHT, WIDTH) and sample["image"].dtype == torch.float32
    assert sample["alpha"].shape == sample["trimap"].shape == (1, HEIGHT, WIDTH)
    assert set(sample["trimap"].unique().tolist()) <= {0.0, 0.5, 1.0}
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert isinstance(sample["name"], str)
    assert len(dm.val_set) <= len(dm.test_set)
    eval_batch = next(iter(dm.test_dataloader()))
    assert eval_batch["image"].shape == (1, 3, HEIGHT, WIDTH)

    if dm.train_set is None:  # AIM-500 is a test set only
        assert name == "aim500"
        return
    raw = dm.train_set[0]
    assert raw["fg"].shape == raw["bg"].shape == (3, 40, 40)
    assert raw["alpha"].shape == (1, 40, 40) and isinstance(raw["source_extent"], float)
    batch = train_batch(dm)
    assert batch["image"].shape == batch["fg"].shape == batch["bg"].shape == (2, 3, 32, 32)
    assert batch["alpha"].shape == batch["trimap"].shape == (2, 1, 32, 32)
    assert set(batch["trimap"].unique().tolist()) <= {0.0, 0.5, 1.0}
    assert all(isinstance(n, str) for n in batch["name"])


def test_train_samples_carry_the_source_size_that_gates_rotation(tmp_path: Path) -> None:
    """Native longer side for a canvas window, the canvas side for a source resized whole
    (the size the official affine sees when it decides whether to rotate)."""
    write_pairs(tmp_path / "fg", tmp_path / "alpha", ["a"])
    write_backgrounds(tmp_path / "bg")
    layouts = [{"fg": "fg", "alpha": "alpha"}]
    for prob, expected in ((0.0, float(max(HEIGHT, WIDTH))), (1.0, 24.0)):
        train = FolderTrainSet(tmp_path, layouts, bg="bg", image_size=24, crop_size=16, downscale_prob=prob, seed=0)
        assert train[0]["source_size"] == expected


def test_composition1k_uses_the_names_file_and_both_folders(data_module, tmp_path: Path) -> None:
    make_composition1k(tmp_path)
    dm = data_module("composition1k", tmp_path)
    assert [s.name for s in dm.train_set.sources] == ["a0", "o0", "a1"]  # names-file order
    assert len(dm.train_set) == 3  # one epoch = every background once (ViTMatte)
    assert [e.name for e in dm.test_set.entries] == ["t0_0", "t0_1", "t1_0"]


def test_composition1k_flat_fg_alpha_layout(data_module, tmp_path: Path) -> None:
    write_pairs(tmp_path / "fg", tmp_path / "alpha", ["x0", "x1"])
    write_backgrounds(tmp_path / "train2014")
    write_eval(tmp_path, "merged", "alpha_copy", "trimaps", ["t0_0"])
    dm = data_module("composition1k", tmp_path)
    assert [s.name for s in dm.train_set.sources] == ["x0", "x1"]
    assert train_batch(dm)["image"].shape == (2, 3, 32, 32)


def test_folder_layout_trains_from_composites(data_module, tmp_path: Path) -> None:
    make_folder_composites(tmp_path)
    dm = data_module("folder", tmp_path)
    assert not dm.train_set.layered
    batch = train_batch(dm)
    assert set(batch) == {"image", "alpha", "trimap", "name"}
    assert batch["image"].shape == (2, 3, 32, 32)


def test_generated_trimaps_are_deterministic_and_valid(tmp_path: Path) -> None:
    make_folder(tmp_path)
    layouts = [{"image": "test/image", "alpha": "test/alpha", "trimap": "test/trimap"}]
    first = FolderEvalSet(tmp_path, layouts, require_trimaps=False)[1]
    second = FolderEvalSet(tmp_path, layouts, require_trimaps=False)[1]
    assert torch.equal(first["trimap"], second["trimap"])
    alpha = first["alpha"][0].numpy()
    np.testing.assert_array_equal(first["trimap"][0].numpy(), deterministic_trimap(alpha, first["name"]))
    partial = (alpha > 1e-5) & (alpha < 1 - 1e-5)
    assert np.all(first["trimap"][0].numpy()[partial] == 0.5)
    with pytest.raises(DatasetLayoutError, match="missing test/trimap/"):
        FolderEvalSet(tmp_path, layouts, require_trimaps=True)


def test_train_samples_are_fixed_per_index_with_a_seed(tmp_path: Path) -> None:
    make_folder(tmp_path)
    layouts = [{"fg": "train/fg", "alpha": "train/alpha"}]
    make = lambda: FolderTrainSet(tmp_path, layouts, bg="train/bg", image_size=40, crop_size=32, seed=3)  # noqa: E731
    a, b = make()[1], make()[1]
    for key in ("fg", "alpha", "bg"):
        assert torch.equal(a[key], b[key])
    # the canvas is a window of the source centred on partial alpha, or the whole source
    assert ((a["alpha"] > 0) & (a["alpha"] < 1)).any()


def test_eval_subset_is_evenly_spaced(tmp_path: Path) -> None:
    write_eval(tmp_path, "image", "alpha", "trimap", [f"n{i}" for i in range(7)])
    layouts = [{"image": "image", "alpha": "alpha", "trimap": "trimap"}]
    subset = FolderEvalSet(tmp_path, layouts, num_samples=3)
    assert [e.name for e in subset.entries] == ["n0", "n3", "n6"]
    assert "3 images (of 7)" in subset.describe()


def test_image_size_reads_headers_with_exif_rotation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: a viewer shows W×H swapped
    Image.fromarray(rgb(0)).save(path, exif=exif)
    assert read_size(path) == (WIDTH, HEIGHT)


def test_datamodule_requires_an_augment_for_raw_layers(tmp_path: Path) -> None:
    make_folder(tmp_path)
    layouts = [{"fg": "train/fg", "alpha": "train/alpha"}]
    train_set = FolderTrainSet(tmp_path, layouts, bg="train/bg", image_size=40, crop_size=32)
    with pytest.raises(ValueError, match="data.augment"):
        MattingDataModule(train_set=train_set, augment=None, root=str(tmp_path))


def test_augment_runs_only_while_training(data_module, tmp_path: Path) -> None:
    make_folder(tmp_path)
    dm = data_module("folder", tmp_path)
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=False, global_rank=0)
    assert dm.on_after_batch_transfer(batch, 0) is batch


# ------------------------------------------------------------------------------ broken roots
def test_missing_root_says_what_to_download(data_module, tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"does not exist: request the Adobe Deep Image Matting"):
        data_module("composition1k", tmp_path / "nowhere")


def make_broken_composition1k(root: Path) -> None:
    make_composition1k(root)
    train = root / "Combined_Dataset" / "Training_set"
    (train / "Other" / "alpha" / "o0.png").unlink()  # missing alpha
    test = root / "Composition-1k-testset"
    save(test / "trimaps" / "stray_9.png", trimap_of(disc_alpha()))  # unmatched trimap
    save(test / "trimaps" / "t0_1.png", np.zeros((HEIGHT + 2, WIDTH), np.uint8))  # size mismatch
    (test / "alpha_copy" / "t1_0.png").write_bytes(b"")  # zero-byte file


def test_check_reports_a_good_root(tmp_path: Path, capsys) -> None:
    make_composition1k(tmp_path)
    assert data_main(["check", "data=composition1k", f"data.root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 fg/alpha pairs" in out and "3 backgrounds" in out
    assert "test: 3 images" in out and "48×64 – 48×64 (H×W)" in out
    assert out.rstrip().endswith("OK")


def test_check_lists_every_problem_by_file_name(tmp_path: Path, capsys) -> None:
    make_broken_composition1k(tmp_path)
    assert data_main(["check", "data=composition1k", f"data.root={tmp_path}"]) == 1
    out = capsys.readouterr().out
    expected = [
        "Combined_Dataset/Training_set/Other/fg/o0.jpg has no Combined_Dataset/Training_set/Other/alpha/o0.*",
        "Composition-1k-testset/trimaps/stray_9.png has no Composition-1k-testset/merged/stray_9.*",
        "Composition-1k-testset/trimaps/t0_1.png: size 50×64 differs from Composition-1k-testset/merged/t0_1.png 48×64",
        "Composition-1k-testset/alpha_copy/t1_0.png: empty file (0 bytes)",
    ]
    for line in expected:
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "FAILED" in out and "Traceback" not in out


def test_check_cli_exit_status_without_traceback(tmp_path: Path) -> None:
    make_broken_composition1k(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR), "OMP_NUM_THREADS": "1"}
    broken = subprocess.run(
        [sys.executable, "-m", "mematte.data", "check", "data=composition1k", f"data.root={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert broken.returncode == 1, broken.stderr
    assert "empty file (0 bytes)" in broken.stdout and "Traceback" not in broken.stderr


def test_check_on_a_missing_root_says_what_to_download(tmp_path: Path, capsys) -> None:
    assert data_main(["check", "data=aim500", f"data.root={tmp_path}/none"]) == 1
    assert f"data.root={tmp_path}/none does not exist: download AIM-500" in capsys.readouterr().out
    assert data_main(["check", "data=aim500"]) == 1
    assert "data.root is not set" in capsys.readouterr().out


def test_layout_errors_name_the_expected_folders(tmp_path: Path) -> None:
    (tmp_path / "original").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"no known layout.*missing mask/, trimap/"):
        FolderEvalSet(tmp_path, [{"image": "original", "alpha": "mask", "trimap": "trimap"}], hint="get AIM-500")


def test_train_set_problems(tmp_path: Path) -> None:
    write_pairs(tmp_path / "fg", tmp_path / "alpha", ["k0", "k1"])
    save(tmp_path / "alpha" / "lonely.png", disc_alpha())  # alpha without fg
    save(tmp_path / "fg" / "k1.png", rgb(5))  # same stem twice
    save(tmp_path / "alpha" / "k0.png", disc_alpha(HEIGHT, WIDTH + 4))  # size mismatch
    with pytest.raises(DatasetLayoutError) as info:
        FolderTrainSet(tmp_path, [{"fg": "fg", "alpha": "alpha"}], bg="nowhere", image_size=40, crop_size=32)
    text = str(info.value)
    assert "alpha/lonely.png has no fg/lonely.*" in text
    assert "fg/k1.jpg and fg/k1.png have the same name" in text
    assert "alpha/k0.png: size 48×68 differs from fg/k0.jpg 48×64" in text
    assert "backgrounds" in text and "do not exist" in text


# ------------------------------------------------------------------------------ compose-test
def make_dim_test_inputs(root: Path) -> None:
    write_pairs(root / "fg", root / "alpha", ["boy", "cat"], ext=".png")
    for stem in ("boy", "cat"):
        save(root / "trimaps" / f"{stem}.png", trimap_of(disc_alpha()))
    # backgrounds: one smaller than the foreground (upscaled), the others larger (cropped)
    sizes = [(30, 50), (60, 80), (50, 70), (64, 90)]
    for i, (h, w) in enumerate(sizes):
        save(root / "voc" / f"{i:04d}.jpg", rgb(300 + i, h, w))
    (root / "test_fg_names.txt").write_text("cat.png\nboy.png\n")
    (root / "test_bg_names.txt").write_text("0003.jpg\n0000.jpg\n0002.jpg\n0001.jpg\n")


def test_compose_test_reproduces_the_dim_composition(tmp_path: Path, capsys) -> None:
    make_dim_test_inputs(tmp_path)
    out = tmp_path / "Composition-1k-testset"
    args = [
        "compose-test", "--fg", str(tmp_path / "fg"), "--alpha", str(tmp_path / "alpha"), "--bg", str(tmp_path / "voc"),
        "--fg-names", str(tmp_path / "test_fg_names.txt"), "--bg-names", str(tmp_path / "test_bg_names.txt"),
        "--trimaps", str(tmp_path / "trimaps"), "--num-bgs", "2", "--out", str(out),
    ]  # fmt: skip
    assert data_main(args) == 0
    assert "wrote 4 composites" in capsys.readouterr().out
    for folder in ("merged", "alpha_copy", "trimaps"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["boy_0.png", "boy_1.png", "cat_0.png", "cat_1.png"]
    assert not list(out.glob(".compose-test*"))
    # cat (first name) gets backgrounds 0003, 0000; boy gets 0002, 0001 (name-list order)
    fg = np.asarray(Image.open(tmp_path / "fg" / "cat.png")).astype(np.float64)
    alpha = np.asarray(Image.open(tmp_path / "alpha" / "cat.png")).astype(np.float64)[..., None] / 255
    bg = np.asarray(Image.open(tmp_path / "voc" / "0003.jpg").convert("RGB"))[:HEIGHT, :WIDTH].astype(np.float64)
    merged = np.asarray(Image.open(out / "merged" / "cat_0.png")).astype(np.float64)
    expected = fg * alpha + bg * (1 - alpha)
    assert np.all(np.abs(merged - expected) < 1.0)  # DIM truncates
    y, x = HEIGHT // 2, WIDTH // 2 + 14  # a pixel on the soft rim
    assert 0 < alpha[y, x, 0] < 1 and merged[y, x, 0] == np.floor(expected[y, x, 0])
    # the 30×50 background is upscaled (bicubic, ceil) by max(64/50, 48/30) to cover 48×64,
    # then cropped at the top-left corner
    ratio = max(WIDTH / 50, HEIGHT / 30)
    small = Image.open(tmp_path / "voc" / "0000.jpg").convert("RGB")
    small = small.resize((math.ceil(50 * ratio), math.ceil(30 * ratio)), Image.Resampling.BICUBIC)
    assert small.size == (80, 48)
    expected_small = dim_composite(
        np.asarray(Image.open(tmp_path / "fg" / "cat.png")),
        np.asarray(small)[:HEIGHT, :WIDTH],
        np.asarray(Image.open(tmp_path / "alpha" / "cat.png")),
    )
    np.testing.assert_array_equal(np.asarray(Image.open(out / "merged" / "cat_1.png")), expected_small)
    assert (out / "trimaps" / "boy_1.png").read_bytes() == (tmp_path / "trimaps" / "boy.png").read_bytes()
    assert (out / "alpha_copy" / "cat_0.png").read_bytes() == (tmp_path / "alpha" / "cat.png").read_bytes()
    # the output is a valid eval set for the composition1k layout
    layouts = [{"image": "merged", "alpha": "alpha_copy", "trimap": "trimaps"}]
    assert len(FolderEvalSet(out, layouts)) == 4


def test_compose_test_generates_trimaps_and_protects_existing_output(tmp_path: Path, capsys) -> None:
    make_dim_test_inputs(tmp_path)
    out = tmp_path / "out"
    written = compose_test_set(tmp_path / "fg", tmp_path / "alpha", tmp_path / "voc", out, num_bgs=2)
    assert written == 4  # sorted names: boy, cat; sorted backgrounds
    trimap = np.asarray(Image.open(out / "trimaps" / "boy_0.png"))
    assert set(np.unique(trimap).tolist()) <= {0, 128, 255}
    alpha = np.asarray(Image.open(tmp_path / "alpha" / "boy.png"))
    assert np.all(trimap[(alpha > 0) & (alpha < 255)] == 128)
    args = [
        "compose-test", "--fg", str(tmp_path / "fg"), "--alpha", str(tmp_path / "alpha"), "--bg", str(tmp_path / "voc"),
        "--num-bgs", "2", "--out", str(out),
    ]  # fmt: skip
    assert data_main(args) == 1
    assert "already exist" in capsys.readouterr().err
    assert data_main([*args, "--overwrite"]) == 0


def test_compose_test_lists_missing_inputs(tmp_path: Path, capsys) -> None:
    make_dim_test_inputs(tmp_path)
    (tmp_path / "alpha" / "boy.png").unlink()
    args = [
        "compose-test", "--fg", str(tmp_path / "fg"), "--alpha", str(tmp_path / "alpha"), "--bg", str(tmp_path / "voc"),
        "--fg-names", str(tmp_path / "test_fg_names.txt"), "--num-bgs", "3", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert data_main(args) == 1
    err = capsys.readouterr().err
    assert "boy (listed in" in err and "--alpha" in err
    assert "need 6 backgrounds, got 4" in err
    assert not (tmp_path / "out" / "merged").exists()


def test_train_and_eval_take_the_metric_region_from_the_data_config(make_cfg, tmp_path: Path) -> None:
    root = tmp_path / "d646"
    make_distinctions646(root)
    assert make_cfg("train", ["data=distinctions646", f"data.root={root}"], tiny=False).module.eval_region == "all"
    assert make_cfg("eval", ["data=distinctions646", f"data.root={root}", "ckpt_path=x"]).eval_region == "all"
    assert make_cfg("train", []).module.eval_region == "unknown"
