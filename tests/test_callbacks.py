"""Validation panels, routing maps and the inference profiler (W&B and local files)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mematte.callbacks import InferenceProfiler, MattingPanels
from mematte.cli import evaluate, train
from mematte.models.vit import RoutingInfo
from mematte.profiling import PeakMemory, release_free_memory
from mematte.visualize import error_colormap, matting_panel, routing_overlay

# MEMatte on top of the tiny CPU settings (TINY_TRAIN)
MEMATTE = ["router=local_global", "ltrm=conv"]


def test_matting_panel_tiles_and_error():
    h, w = 40, 60
    image = np.full((h, w, 3), 200, np.uint8)
    trimap = np.zeros((h, w), np.float32)
    trimap[:, 30:] = 0.5
    gt = np.zeros((h, w), np.float32)
    pred = gt.copy()
    pred[:, 45:] = 1.0  # wrong in half of the unknown region
    panel = matting_panel(image, trimap, pred, gt, max_side=1000)
    assert panel.shape == (h, 5 * w + 4 * 4, 3) and panel.dtype == np.uint8
    err = panel[:, 4 * (w + 4):]
    assert err[20, 50].tolist() == [255, 255, 255]  # |error| 1 → white
    assert err[20, 35].tolist() == [0, 0, 0]  # right → black
    # known regions are not coloured even where prediction and ground truth differ
    pred[:, :5] = 1.0
    assert matting_panel(image, trimap, pred, gt, max_side=1000)[30, 4 * (w + 4) + 2].tolist() == [0, 0, 0]
    # no ground truth: three tiles; shrinking keeps the aspect
    assert matting_panel(image, trimap, pred, None, max_side=30).shape == (20, 3 * 30 + 2 * 4, 3)
    with pytest.raises(ValueError, match="trimap is"):
        matting_panel(image, trimap[:10], pred, gt)


def test_error_colormap_ramp():
    ramp = error_colormap(np.array([[0.0, 1 / 3, 2 / 3, 1.0]]))
    assert ramp[0].tolist() == [[0, 0, 0], [255, 0, 0], [255, 255, 0], [255, 255, 255]]


def test_routing_overlay_draws_the_chosen_sample():
    decision = torch.zeros(2, 4)
    decision[1] = 1.0  # sample 1 sent every token to global attention
    info = RoutingInfo(decision=decision, log_probs=None, grid=(2, 2))
    image = np.full((32, 32, 3), 255, np.uint8)
    first = routing_overlay(image, [info], patch=16, sample=0)
    second = routing_overlay(image, [info], patch=16, sample=1)
    assert first[20, 20].tolist() == [89, 89, 89]  # dimmed: not routed
    assert second[20, 20].tolist() == [255, 202, 128]  # tinted orange: routed


@pytest.mark.skipif(not release_free_memory(), reason="needs glibc malloc_trim")
def test_cpu_peak_counts_memory_the_process_had_freed():
    """A process that just freed a lot keeps it resident; a forward reusing it must still count
    its activations (4 MiB each). The training test above checks the case that read 0 before
    PeakMemory handed freed memory back: the test loop right after training."""
    freed = [torch.ones(1024, 1024) for _ in range(64)]  # 256 MiB in 4 MiB blocks
    del freed
    net = torch.nn.Sequential(*[torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(4)])
    image = torch.randn(1, 16, 256, 256)  # 4 MiB per activation
    meter = PeakMemory("cpu")
    with torch.no_grad():
        for _ in range(2):
            meter.start(collect=False)
            out = net(image)
            assert meter.peak_bytes() >= 8 * 2**20
            del out


@pytest.mark.skipif(not release_free_memory(), reason="needs glibc malloc_trim / mallopt")
def test_tune_heap_keeps_freed_buffers_or_unmaps_them():
    """reuse=True: a freed 48 MiB buffer stays resident (for the next one to reuse) until
    release_free_memory; reuse=False: it is unmapped when freed (above 32 MiB)."""
    from mematte.profiling import read_status_bytes, tune_heap

    def rss() -> int:
        value = read_status_bytes("VmRSS")
        assert value is not None
        return value

    mib = 2**20
    try:
        assert tune_heap(reuse=True)
        release_free_memory()
        buffer = torch.ones(12 * mib)  # 48 MiB, touched
        touched = rss()
        del buffer
        kept = rss()
        assert touched - kept < 8 * mib
        release_free_memory()
        assert kept - rss() > 40 * mib
        assert tune_heap(reuse=False)
        buffer = torch.ones(12 * mib)
        touched = rss()
        del buffer
        assert touched - rss() > 40 * mib
    finally:
        tune_heap(reuse=False)


@pytest.mark.parametrize("kwargs", [{"num_images": -1}, {"every_n_validations": 0}, {"stages": "val"},
                                    {"stages": ["train"]}])
def test_panel_and_profiler_options_are_checked(kwargs):
    with pytest.raises(ValueError):
        MattingPanels(**kwargs)
    if "stages" in kwargs:
        with pytest.raises(ValueError, match="stages"):
            InferenceProfiler(stages=kwargs["stages"])


def test_training_logs_panels_routing_maps_and_test_cost_to_wandb_and_files(make_cfg):
    """A MEMatte run: val panels + routing maps per validation (W&B media and PNGs), test-time
    latency and peak memory in metrics.json."""
    cfg = make_cfg("train", [*MEMATTE, "logger=[csv,wandb]", "callbacks.matting_panels.num_images=1"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    # step 0 (untrained) and step 2 (after training): 1 panel + 1 routing map each (of 2 images)
    for step in (0, 2):
        folder = run / "panels" / f"val_step{step:06d}"
        panels, maps = sorted(folder.glob("*_panel.png")), sorted(folder.glob("*_routing.png"))
        assert len(panels) == 1 and len(maps) == 1, sorted(folder.iterdir())
        with Image.open(panels[0]) as picture:
            assert picture.mode == "RGB" and picture.width > 4 * picture.height  # five tiles in a row
    media = list((run / "wandb").glob("offline-run-*/files/media/images/val/*.png"))
    assert any("panels" in p.name for p in media) and any("routing" in p.name for p in media), media
    summary = json.loads((run / "metrics.json").read_text())
    # > 0: the test loop runs right after training, in memory training freed (handed back first)
    assert summary["test"]["latency_s"] > 0 and summary["test"]["peak_mib"] > 0
    assert 0 <= summary["test"]["keep_ratio"] <= 1


@pytest.mark.slow  # a profiled training run (~7 s); the full suite runs it
def test_profiler_times_the_forward_pass_only(make_cfg, monkeypatch):
    """Latency is the net's forward per image (a 50 ms sleep in it shows up), not metric time."""
    from mematte.metrics import MattingMetrics

    cfg = make_cfg("train", ["trainer.max_steps=1", "validate_before_training=false", "callbacks=none",
                             "data.test_set.num_samples=2"])
    slow_update = MattingMetrics.update

    def update_slowly(self, *args, **kwargs):  # 3 s of "metrics" per image, not counted
        time.sleep(3.0)
        return slow_update(self, *args, **kwargs)

    monkeypatch.setattr(MattingMetrics, "update", update_slowly)
    from hydra.utils import instantiate

    import lightning as L

    from mematte.cli import build_module

    module = build_module(cfg)
    forward = module.net.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.05)
        return forward(*args, **kwargs)

    module.net.forward = slow_forward
    profiler = InferenceProfiler(stages=["test"])
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[profiler], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(module, datamodule=instantiate(cfg.data, _convert_="partial"), verbose=False)
    latency = float(trainer.callback_metrics["test/latency_s"])
    # the tiny net's own forward is ~0.1 s, over 1 s on a loaded machine: far from the 3 s
    assert 0.05 <= latency < 3.0
    assert float(trainer.callback_metrics["test/peak_mib"]) >= 0
    assert not module.net._forward_hooks and not module.net._forward_pre_hooks  # hooks removed


def test_eval_logs_cost_and_test_panels(make_cfg, tmp_path):
    cfg = make_cfg("train", [*MEMATTE, "trainer.max_steps=1", "trainer.val_check_interval=1",
                             "validate_before_training=false", "test=false"])
    train(cfg)
    ckpt = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    eval_dir = tmp_path / "eval"
    eval_cfg = make_cfg("eval", [f"ckpt_path={ckpt}", "data.test_set.num_samples=2", "data.test_set.min_size=64",
                                 "data.test_set.max_size=90"])
    from omegaconf import open_dict

    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(eval_dir)
        eval_cfg.callbacks.matting_panels.save_dir = str(eval_dir / "panels")
    metrics = evaluate(eval_cfg)
    assert metrics["latency_s"] > 0 and metrics["peak_mib"] >= 0
    payload = json.loads((eval_dir / "metrics.json").read_text())
    assert payload["metrics"]["latency_s"] == metrics["latency_s"]
    folder = next((eval_dir / "panels").glob("test_step*"))
    assert len(list(folder.glob("*_panel.png"))) == 2 and len(list(folder.glob("*_routing.png"))) == 2
