"""predict.py: the batch matting CLI, robust image I/O and multi-level foreground estimation."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from mematte.checkpoints import build_net
from mematte.image_io import ImageReadError, list_images, read_gray, read_image, write_png
from mematte.inference import Predictor
from mematte.predict import (
    PredictOptions,
    estimate_foreground,
    predict,
    routing_overlay,
    run_from_config,
    trimap_from_mask,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures
def net_config(routed: bool) -> dict:
    """A tiny MattingNet config with ``_target_``s (as a checkpoint stores it): 2 global blocks."""
    backbone = {
        "_target_": "mematte.models.vit.ViT", "embed_dim": 48, "depth": 4, "num_heads": 3,
        "window_size": 4, "global_block_indexes": [1, 3], "residual_block_indexes": [1, 3],
        "rel_pos_grid": 8, "global_block": None,
    }
    if routed:
        backbone["global_block"] = {
            "_target_": "mematte.models.routed_block.RoutedBlock", "_partial_": True,
            "router": {"_target_": "mematte.models.router.LocalGlobalRouter", "_partial_": True},
            "ltrm": {"_target_": "mematte.models.ltrm.ConvTokenRefiner", "_partial_": True},
            # route a fixed share so the overlay has something to show with untrained routers
            "selection": "topk", "keep_ratio": 0.3,
        }
    decoder = {"_target_": "mematte.models.decoder.DetailCapture", "in_chans": 48,
               "convstream_out": [8, 16, 24], "fusion_out": [32, 16, 8, 8]}
    return {"_target_": "mematte.models.matting_net.MattingNet", "backbone": backbone, "decoder": decoder}


def save_checkpoint(path: Path, config: dict) -> Path:
    """A checkpoint in the mematte layout, with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = build_net(config)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "mematte": {"net_config": config}}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "routed": save_checkpoint(root / "routed.ckpt", net_config(True)),
        "vitmatte": save_checkpoint(root / "vitmatte.ckpt", net_config(False)),
    }


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 with gradients and a little texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 3 * y)], axis=-1)
    return np.clip(255 * (0.8 * base + 0.2 * rng.random((h, w, 3))), 0, 255).astype(np.uint8)


def disc_trimap(h: int, w: int, band: int = 6) -> np.ndarray:
    """(H, W) uint8 {0, 128, 255}: a disc with an unknown ring."""
    y, x = np.mgrid[0:h, 0:w]
    r = np.hypot(y - h / 2, x - w / 2)
    radius = min(h, w) / 3
    trimap = np.full((h, w), 128, np.uint8)
    trimap[r < radius - band] = 255
    trimap[r > radius + band] = 0
    return trimap


def make_folder(root: Path, sizes: dict[str, tuple[int, int]]) -> tuple[Path, Path]:
    """images/<stem>.png (or .jpg for stems ending in _jpg) and trimaps/<stem>.png."""
    images, trimaps = root / "images", root / "trimaps"
    images.mkdir(parents=True, exist_ok=True)
    trimaps.mkdir(parents=True, exist_ok=True)
    for k, (stem, (h, w)) in enumerate(sizes.items()):
        Image.fromarray(smooth_image(h, w, k)).save(images / f"{stem}.png")
        Image.fromarray(disc_trimap(h, w)).save(trimaps / f"{stem}.png")
    return images, trimaps


def options(ckpt: Path, images: Path, out: Path, **kw) -> PredictOptions:
    kw.setdefault("trimaps", None if "masks" in kw else str(images.parent / "trimaps"))
    return PredictOptions(ckpt_path=str(ckpt), input=str(images), out=str(out), tile=64, context=32, **kw)


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (grey (H, W) or RGB (H, W, 3)) written by hand: PIL cannot write 16-bit RGB."""
    h, w = array.shape[:2]
    colour_type = 2 if array.ndim == 3 else 0
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- the CLI logic
def test_folder_with_trimaps_matches_the_predictor(ckpts, tmp_path):
    sizes = {"a": (70, 90), "b": (96, 64)}
    images, trimaps = make_folder(tmp_path, sizes)
    out = tmp_path / "out"
    summary = predict(options(ckpts["routed"], images, out))
    assert (summary.done, summary.skipped, summary.failed) == (2, 0, [])
    assert summary.exit_code == 0 and not (out / "failures.json").exists()

    predictor = Predictor(build_net(net_config(True)), tile=64, context=32)
    predictor.net.load_state_dict({k[4:]: v for k, v in torch.load(ckpts["routed"])["state_dict"].items()})
    for stem, (h, w) in sizes.items():
        image = read_image(images / f"{stem}.png")
        expected = predictor(torch.from_numpy(image).permute(2, 0, 1),
                             torch.from_numpy(read_gray(trimaps / f"{stem}.png"))).alpha[0, 0]
        alpha = np.asarray(Image.open(out / "alpha" / f"{stem}.png"))
        assert alpha.shape == (h, w) and alpha.dtype == np.uint8
        assert np.abs(alpha.astype(int) - np.rint(expected.numpy() * 255).astype(int)).max() <= 1
        cutout = Image.open(out / "cutout" / f"{stem}.png")
        assert cutout.mode == "RGBA" and cutout.size == (w, h)
        np.testing.assert_array_equal(np.asarray(cutout)[..., 3], alpha)
    assert not (out / "routing").exists() and not (out / "trimap").exists()
    assert temp_files(out) == []


def test_16_bit_alpha(ckpts, tmp_path):
    images, _ = make_folder(tmp_path, {"a": (50, 60)})
    predict(options(ckpts["vitmatte"], images, tmp_path / "o8", cutout=False))
    predict(options(ckpts["vitmatte"], images, tmp_path / "o16", cutout=False, alpha_bits=16))
    a16 = Image.open(tmp_path / "o16" / "alpha" / "a.png")
    assert a16.mode.startswith("I;16")
    a16 = np.asarray(a16).astype(np.int64)
    a8 = np.asarray(Image.open(tmp_path / "o8" / "alpha" / "a.png")).astype(np.int64)
    assert a16.max() > 255  # really 16-bit, not 8-bit values in a wide container
    assert np.abs(np.rint(a16 / 257) - a8).max() <= 1
    assert not (tmp_path / "o16" / "cutout").exists()


def test_trimap_from_mask_band():
    mask = np.zeros((100, 120), np.uint8)
    mask[30:70, 40:80] = 255
    trimap = trimap_from_mask(mask, unknown_width_px=5)
    assert set(np.unique(trimap)) == {0, 128, 255}
    row = trimap[50]
    # the edge at x = 40: sure foreground from 5 px inside, sure background from 6 px outside
    assert row[45] == 255 and row[44] == 128 and row[35] == 128 and row[34] == 0
    assert trimap[50, 60] == 255 and trimap[5, 5] == 0
    # soft float masks are thresholded the same way; width 0 gives a binary trimap
    soft = mask.astype(np.float32) / 255 * 0.8
    np.testing.assert_array_equal(trimap_from_mask(soft, 5, threshold=0.5), trimap)
    assert set(np.unique(trimap_from_mask(mask, 0))) == {0, 255}


def test_masks_become_trimaps(ckpts, tmp_path):
    images, _ = make_folder(tmp_path, {"a": (64, 80)})
    masks = tmp_path / "masks"
    masks.mkdir()
    mask = (disc_trimap(64, 80) > 0).astype(np.uint8) * 255
    Image.fromarray(mask).save(masks / "a.png")
    out = tmp_path / "out"
    summary = predict(options(ckpts["vitmatte"], images, out, masks=str(masks), mask_unknown_px=4))
    assert summary.done == 1
    trimap = np.asarray(Image.open(out / "trimap" / "a.png"))
    np.testing.assert_array_equal(trimap, trimap_from_mask(mask, 4))
    alpha = np.asarray(Image.open(out / "alpha" / "a.png"))
    assert (alpha[trimap == 255] == 255).all() and (alpha[trimap == 0] == 0).all()


def test_routing_overlay(ckpts, tmp_path, caplog):
    images, _ = make_folder(tmp_path, {"a": (48, 80), "b": (40, 40)})
    out = tmp_path / "out"
    predict(options(ckpts["routed"], images, out, cutout=False, routing_overlay=True))
    overlay = np.asarray(Image.open(out / "routing" / "a.png"))
    assert overlay.shape == (48, 2 * 80 + 4, 3)  # two routed blocks side by side, 4 px gap
    assert (out / "routing" / "b.png").exists()

    with caplog.at_level(logging.INFO, logger="mematte"):
        predict(options(ckpts["vitmatte"], images, tmp_path / "vit", cutout=False, routing_overlay=True))
    assert sum("nothing to draw" in r.getMessage() for r in caplog.records) == 1
    assert not (tmp_path / "vit" / "routing").exists()


def test_routing_overlay_panels_tint_routed_tokens():
    from mematte.models.vit import RoutingInfo

    image = np.full((40, 72, 3), 200, np.uint8)  # padded grid: 3 × 5 tokens of 16 px
    decision = torch.zeros(1, 15)
    decision[0, 6] = 1  # token (1, 1) only: pixels 16..31 × 16..31
    infos = [RoutingInfo(decision, None, (3, 5))] * 4
    overlay = routing_overlay(image, infos, patch=16, block_indexes=[2, 5, 8, 11])
    assert overlay.shape == (2 * 40 + 4, 2 * 72 + 4, 3)  # 2 × 2 grid
    panel = overlay[:40, :72].astype(int)
    assert panel[30, 60].tolist() == [70, 70, 70]  # dimmed
    assert panel[24, 24].tolist() == [228, 175, 100]  # tinted orange: (200 + tint) / 2
    small = routing_overlay(np.zeros((400, 800, 3), np.uint8), infos[:1], 16, max_side=100)
    assert small.shape == (50, 100, 3)


def test_skip_existing_and_overwrite(ckpts, tmp_path, caplog):
    images, _ = make_folder(tmp_path, {"a": (40, 48), "b": (48, 40)})
    out = tmp_path / "out"
    assert predict(options(ckpts["vitmatte"], images, out)).done == 2
    alpha = out / "alpha" / "a.png"
    os.utime(alpha, (1, 1))
    with caplog.at_level(logging.INFO, logger="mematte"):
        summary = predict(options(ckpts["vitmatte"], images, out))
    assert (summary.done, summary.skipped) == (0, 2) and alpha.stat().st_mtime == 1
    assert any("2 skipped" in r.getMessage() for r in caplog.records)
    # a missing output (here the cutout) makes that image run again
    (out / "cutout" / "b.png").unlink()
    assert (predict(options(ckpts["vitmatte"], images, out)).done, alpha.stat().st_mtime) == (1, 1)
    summary = predict(options(ckpts["vitmatte"], images, out, overwrite=True))
    assert (summary.done, summary.skipped) == (2, 0) and alpha.stat().st_mtime > 1


def test_write_png_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "x.png"
    write_png(target, np.full((8, 8), 0.5, np.float32))
    assert np.asarray(Image.open(target)).tolist()[0][0] == 128
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        if hasattr(fp, "write"):
            fp.write(b"\x89PNG half")
        else:
            Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(target, np.zeros((8, 8), np.uint8))
    assert target.read_bytes() == before  # the old file is untouched
    assert temp_files(tmp_path) == [] and sorted(p.name for p in target.parent.iterdir()) == ["x.png"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="16-bit"):
        write_png(tmp_path / "rgb16.png", np.zeros((4, 4, 3), np.float32), bits=16)
    assert temp_files(tmp_path) == []


def test_bad_inputs_fail_alone(ckpts, tmp_path, caplog):
    images, trimaps = make_folder(tmp_path, {"good": (40, 56), "good2": (40, 40), "mismatch": (48, 64)})
    (images / "empty.png").write_bytes(b"")
    good_png = (images / "good.png").read_bytes()
    (images / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (images / "notimage.jpg").write_text("hello, I am not a JPEG")
    Image.fromarray(smooth_image(32, 32, 9)).save(images / "lonely.png")  # no trimap
    # good2.bmp comes first by name and is matted; good2.png would write the same outputs
    Image.open(images / "good2.png").save(images / "good2.bmp")
    for stem in ("empty", "truncated", "notimage"):
        Image.fromarray(disc_trimap(40, 56)).save(trimaps / f"{stem}.png")
    Image.fromarray(disc_trimap(50, 64)).save(trimaps / "mismatch.png")  # wrong size
    # trimaps with in-between values (as after JPEG or smooth resizing): quantised, warned once
    for stem in ("good", "good2"):
        t = np.asarray(Image.open(trimaps / f"{stem}.png")).copy()
        t[t == 128] = 127
        t[:2, :2] = 250
        Image.fromarray(t).save(trimaps / f"{stem}.png")

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="mematte"):
        summary = predict(options(ckpts["routed"], images, out))
    assert summary.done == 2 and summary.exit_code == 1
    assert (out / "alpha" / "good.png").exists() and (out / "alpha" / "good2.png").exists()
    assert sum("values other than 0/128/255" in r.getMessage() for r in caplog.records) == 1
    report = json.loads((out / "failures.json").read_text())
    reasons = {Path(f["file"]).name: f["reason"] for f in report["failed"]}
    assert set(reasons) == {"empty.png", "truncated.png", "notimage.jpg", "mismatch.png", "lonely.png",
                            "good2.png"}
    assert "same name as" in reasons["good2.png"] and "good2.bmp" in reasons["good2.png"]
    assert "empty file" in reasons["empty.png"]
    assert "truncated or corrupt" in reasons["truncated.png"]
    assert "not an image" in reasons["notimage.jpg"]
    assert "64×50" in reasons["mismatch.png"] and "64×48" in reasons["mismatch.png"]
    assert "mismatch.png" in reasons["mismatch.png"] and "resize" in reasons["mismatch.png"]
    assert "no trimap named lonely" in reasons["lonely.png"]
    assert report["done"] == 2
    assert temp_files(out) == []
    # a later clean run removes the stale failure list
    for name in reasons:
        (images / name).unlink()
    assert predict(options(ckpts["routed"], images, out)).exit_code == 0
    assert not (out / "failures.json").exists()


def test_memory_budget_fails_the_image_and_goes_on(ckpts, tmp_path):
    images, _ = make_folder(tmp_path, {"a": (40, 40), "b": (48, 48)})
    summary = predict(options(ckpts["routed"], images, tmp_path / "out", memory_budget_gb=1e-4))
    assert summary.done == 0 and len(summary.failed) == 2
    assert all("GiB budget" in f.reason for f in summary.failed)


def test_option_and_path_errors(ckpts, tmp_path):
    images, trimaps = make_folder(tmp_path, {"a": (32, 32)})
    with pytest.raises(ValueError, match="exactly one of trimaps"):
        predict(options(ckpts["routed"], images, tmp_path / "o", masks=str(trimaps), trimaps=str(trimaps)))
    with pytest.raises(ValueError, match="neither"):
        predict(options(ckpts["routed"], images, tmp_path / "o", trimaps=None, masks=None))
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.ckpt"):
        predict(options(tmp_path / "nope.ckpt", images, tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="input not found: .*missing"):
        predict(options(ckpts["routed"], tmp_path / "missing", tmp_path / "o"))
    with pytest.raises(ValueError, match="one file but input has 2 images"):
        Image.fromarray(smooth_image(32, 32, 1)).save(images / "b.png")
        predict(options(ckpts["routed"], images, tmp_path / "o", trimaps=str(trimaps / "a.png")))
    with pytest.raises(ValueError, match="alpha_bits"):
        predict(options(ckpts["routed"], images, tmp_path / "o", alpha_bits=12))
    # a single image with a single trimap file
    summary = predict(options(ckpts["routed"], images / "a.png", tmp_path / "o", trimaps=str(trimaps / "a.png")))
    assert summary.done == 1


def test_config_composes_and_maps_to_options(ckpts, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="predict")
        assert OmegaConf.is_missing(cfg, "ckpt_path") and cfg.tile == 512 and cfg.trimaps is None
        with pytest.raises(ValueError, match="ckpt_path is required"):
            PredictOptions.from_config(cfg)
        images, trimaps = make_folder(tmp_path, {"a": (32, 40)})
        cfg = compose(config_name="predict", overrides=[
            f"ckpt_path={ckpts['vitmatte']}", f"input={images}", f"trimaps={trimaps}",
            f"out={tmp_path / 'out'}", "tile=64", "alpha_bits=16", "extras.print_config=false",
        ])
    GlobalHydra.instance().clear()
    opts = PredictOptions.from_config(cfg)
    assert (opts.tile, opts.alpha_bits, opts.masks, opts.mask_unknown_px) == (64, 16, None, 20)
    assert run_from_config(cfg) == 0 and (tmp_path / "out" / "alpha" / "a.png").exists()
    (images / "broken.png").write_bytes(b"")
    assert run_from_config(cfg) == 1  # the broken image fails the run, not the others
    cfg.input = str(tmp_path / "nowhere")
    assert run_from_config(cfg) == 1  # a path error: one logged line, exit code 1


def test_composed_mematte_checkpoint(tmp_path):
    """A checkpoint whose net config comes from conf/train.yaml (vit_tiny, routed)."""
    from conftest import compose_config

    cfg = compose_config("train", ["backbone=vit_tiny", "router=local_global"], tmp_path)
    GlobalHydra.instance().clear()
    ckpt = save_checkpoint(tmp_path / "m.ckpt", OmegaConf.to_container(cfg.model, resolve=True))
    images, _ = make_folder(tmp_path, {"a": (40, 72)})
    summary = predict(options(ckpt, images, tmp_path / "out", routing_overlay=True, routed_inference="expected"))
    assert summary.done == 1
    overlay = np.asarray(Image.open(tmp_path / "out" / "routing" / "a.png"))
    assert overlay.shape == (2 * 40 + 4, 2 * 72 + 4, 3)  # 4 routed blocks: 2 × 2 panels


def test_entry_script_subprocess(ckpts, tmp_path):
    images, trimaps = make_folder(tmp_path, {"a": (40, 48), "b": (32, 32)})
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "predict.py", f"ckpt_path={ckpts['vitmatte']}", f"input={images}",
         f"trimaps={trimaps}", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}",
         "extras.print_config=false", "tile=64", "context=32"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "alpha").iterdir()) == ["a.png", "b.png"]
    assert (tmp_path / "run" / "predict.log").exists()


# --------------------------------------------------------------------------- image I/O
def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    image = read_image(tmp_path / "r.jpg")
    assert image.shape == (40, 20, 3)  # portrait, as a viewer shows it
    assert image[5, 10, 0] > 200 and image[5, 10, 2] < 50  # the stored left half is now on top
    assert image[35, 10, 2] > 200 and image[35, 10, 0] < 50


def test_image_modes_are_read_as_rgb(tmp_path):
    rgb = smooth_image(12, 16, 3)
    # 16-bit RGB and grey PNG: scaled to 8 bits, not clipped
    wide = rgb.astype(np.uint16) * 257 + 100
    (tmp_path / "rgb16.png").write_bytes(png16(wide))
    assert np.abs(read_image(tmp_path / "rgb16.png").astype(int) - rgb).max() <= 1
    (tmp_path / "g16.png").write_bytes(png16(wide[..., 0]))
    np.testing.assert_array_equal(read_gray(tmp_path / "g16.png"), rgb[..., 0])
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), np.repeat(rgb[..., :1], 3, axis=2))
    # RGBA drops alpha (no compositing), grey and palette become RGB
    rgba = np.concatenate([rgb, np.full((12, 16, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    Image.fromarray(rgb[..., 1]).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(rgb[..., 1:2], 3, axis=2))
    Image.fromarray(rgb).quantize(256).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (12, 16, 3)
    # CMYK JPEG
    flat = np.zeros((16, 16, 3), np.uint8)
    flat[:, :8] = (200, 40, 90)
    flat[:, 8:] = (20, 180, 240)
    Image.fromarray(flat).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    with Image.open(tmp_path / "cmyk.jpg") as stored:
        assert stored.mode == "CMYK"
    assert np.abs(read_image(tmp_path / "cmyk.jpg")[:, [2, 13]].astype(int) - flat[:, [2, 13]]).max() <= 6
    # grey readers: RGB trimaps keep their grey value; masks may come as an RGBA cutout's alpha
    trimap = disc_trimap(12, 16)
    Image.fromarray(np.repeat(trimap[..., None], 3, axis=2)).save(tmp_path / "t.png")
    np.testing.assert_array_equal(read_gray(tmp_path / "t.png"), trimap)
    cut = np.concatenate([rgb, trimap[..., None]], axis=2)
    Image.fromarray(cut).save(tmp_path / "cut.png")
    np.testing.assert_array_equal(read_gray(tmp_path / "cut.png", alpha_if_present=True), trimap)


def test_unreadable_files_raise_one_clear_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(smooth_image(64, 64, 0)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    buf = io.BytesIO()
    Image.fromarray(smooth_image(64, 64, 0)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "text.png").write_text("not a png")
    cases = {"empty.png": "empty file", "cut.png": "truncated or corrupt", "cut.jpg": "truncated or corrupt",
             "text.png": "not an image", "absent.png": "file not found"}
    for name, message in cases.items():
        for reader in (read_image, read_gray):
            with pytest.raises(ImageReadError, match=message) as info:
                reader(tmp_path / name)
            assert name in str(info.value) and isinstance(info.value, ValueError)


def test_list_images_filters_and_sorts(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.webp", "notes.txt", "._a.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp"]
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path / "sub")


# --------------------------------------------------------------------------- foreground
def test_foreground_estimation_recovers_smooth_colours():
    h, w = 96, 128
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    fg = torch.stack([0.8 - 0.3 * x, 0.2 + 0.5 * y, 0.5 + 0.3 * torch.sin(3 * x)])  # smooth
    bg = torch.stack([0.1 + 0.6 * y, 0.9 - 0.4 * x, 0.3 + 0.2 * torch.cos(4 * y)])
    r = torch.hypot(y - 0.5, (x - 0.5) * w / h)
    alpha = ((0.35 - r) / 0.15).clamp(0, 1)  # a disc with a wide soft border
    stripes = 0.5 + 0.5 * torch.sin(40 * x)  # semi-transparent hair-like strands
    alpha = torch.where((alpha > 0) & (alpha < 1), alpha * stripes, alpha)
    image = alpha * fg + (1 - alpha) * bg

    est_fg, est_bg = estimate_foreground(image, alpha)
    assert est_fg.shape == (3, h, w) and est_fg.dtype == torch.float32
    region = (alpha > 0.1).expand(3, h, w)
    error = (est_fg - fg).abs()[region].mean()
    naive = (image - fg).abs()[region].mean()
    assert error <= 0.5 * naive, (float(error), float(naive))
    recomposed = alpha * est_fg + (1 - alpha) * est_bg
    assert (recomposed - image).abs().mean() < 0.01
    # uint8 input and a (1, H, W) alpha give the same answer
    est_u8, _ = estimate_foreground((image * 255).round().to(torch.uint8), alpha[None])
    assert (est_u8 - est_fg).abs().mean() < 0.01


def reference_foreground(image: np.ndarray, alpha: np.ndarray, eps=5e-3, omega=1e-1,
                         n_small=10, n_big=2, small_size=32):
    """Per-pixel loops of the paper's update (pymatting's, with Jacobi sweeps): slow, tiny only."""
    h0, w0, depth = image.shape
    n_levels = int(np.ceil(np.log2(max(h0, w0))))
    fg = bg = image.mean(axis=(0, 1), keepdims=True)
    for level in range(n_levels + 1):
        h, w = round(h0 ** (level / n_levels)), round(w0 ** (level / n_levels))
        ys = [min(h0 - 1, y * h0 // h) for y in range(h)]
        xs = [min(w0 - 1, x * w0 // w) for x in range(w)]
        img, a = image[ys][:, xs], alpha[ys][:, xs]
        ys = [min(fg.shape[0] - 1, y * fg.shape[0] // h) for y in range(h)]
        xs = [min(fg.shape[1] - 1, x * fg.shape[1] // w) for x in range(w)]
        fg, bg = fg[ys][:, xs].copy(), bg[ys][:, xs].copy()
        for _ in range(n_small if h <= small_size and w <= small_size else n_big):
            new_fg, new_bg = fg.copy(), bg.copy()
            for y in range(h):
                for x in range(w):
                    a0 = a[y, x]
                    a00, a11, a01 = a0 * a0, (1 - a0) ** 2, a0 * (1 - a0)
                    b0, b1 = a0 * img[y, x], (1 - a0) * img[y, x]
                    for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                        y2, x2 = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
                        da = eps + omega * abs(a0 - a[y2, x2])
                        a00, a11 = a00 + da, a11 + da
                        b0, b1 = b0 + da * fg[y2, x2], b1 + da * bg[y2, x2]
                    det = a00 * a11 - a01 * a01
                    new_fg[y, x] = np.clip((a11 * b0 - a01 * b1) / det, 0, 1)
                    new_bg[y, x] = np.clip((a00 * b1 - a01 * b0) / det, 0, 1)
            fg, bg = new_fg, new_bg
    return fg, bg


def test_foreground_estimation_matches_a_per_pixel_reference():
    rng = np.random.default_rng(0)
    image = rng.random((11, 14, 3))
    alpha = np.clip(rng.random((11, 14)) * 1.4 - 0.2, 0, 1)
    ref_fg, ref_bg = reference_foreground(image, alpha, small_size=8)  # 8: big levels too
    fg, bg = estimate_foreground(torch.from_numpy(image).permute(2, 0, 1).float(),
                                 torch.from_numpy(alpha).float(), small_size=8)
    np.testing.assert_allclose(fg.permute(1, 2, 0).numpy(), ref_fg, atol=1e-5)
    np.testing.assert_allclose(bg.permute(1, 2, 0).numpy(), ref_bg, atol=1e-5)
