"""Training-free baselines (mematte.baselines, conf/baseline/): the classical methods on known
composites, the degenerate trimaps, and `eval.py baseline=...` through the checkpoint test loop."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from conftest import ROOT
from mematte.baselines import METHODS, ClassicalMatting
from mematte.cli import _evaluate, run_task
from mematte.metrics import MattingMetrics
from test_train import run_script

SIZE = 48
FG = (0.9, 0.3, 0.1)
BG = (0.1, 0.4, 0.8)
# few test images, small: each eval run takes seconds
TINY_TEST = ["data.test_set.num_samples=2", "data.test_set.min_size=64", "data.test_set.max_size=96"]


def ramp_composite(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Constant fg/bg colours, alpha a horizontal linear ramp from column 12 (0) to 35 (1).

    Returns image (1, 3, S, S), trimap (1, 1, S, S) (bg for columns < 10, fg for ≥ 38, unknown
    between) and the true alpha (1, 1, S, S).
    """
    cols = np.arange(size, dtype=np.float64)
    alpha = np.broadcast_to(np.clip((cols - 12) / 23, 0, 1), (size, size))
    image = alpha[..., None] * np.array(FG) + (1 - alpha[..., None]) * np.array(BG)
    trimap = np.full((size, size), 0.5)
    trimap[:, :10], trimap[:, 38:] = 0.0, 1.0
    as_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()  # noqa: E731
    return (as_tensor(image).permute(2, 0, 1)[None], as_tensor(trimap)[None, None],
            as_tensor(alpha)[None, None])


def sad(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred - target).abs().sum())


# ----------------------------------------------------------------------------- the methods
def test_closed_form_recovers_a_smooth_alpha_and_the_others_beat_fill_half():
    image, trimap, alpha = ramp_composite()
    results = {m: ClassicalMatting(m)(image, trimap) for m in METHODS}
    for method, out in results.items():
        assert out.alpha.shape == (1, 1, SIZE, SIZE) and out.alpha.dtype == torch.float32, method
        assert out.routing == [] and out.features.numel() == 0
        # known regions are the trimap's
        known = trimap != 0.5
        assert torch.equal(out.alpha[known], trimap[known]), method
    # the colour-line model holds exactly here: closed form is near-exact
    assert (results["closed_form"].alpha - alpha).abs().max() < 1e-3
    floor = sad(results["fill_half"].alpha, alpha)
    assert floor > 300  # 0.5 everywhere in the unknown band: far off
    assert torch.equal(results["fill_half"].alpha, trimap)
    for method in ("knn", "lkm"):
        assert sad(results[method].alpha, alpha) < 0.25 * floor, method
    # an image smaller than lkm's default windows (41 px) still gets an answer
    small = [x[..., 16:32, 4:44] for x in (image, trimap, alpha)]
    assert sad(ClassicalMatting("lkm")(*small[:2]).alpha, small[2]) < 0.25 * sad(small[1], small[2])


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_trimaps_have_defined_answers(method):
    image, _, _ = ramp_composite(16)
    unknown_band = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    unknown_band[..., 4:12] = True
    no_fg = torch.where(unknown_band, 0.5, 0.0)  # background and unknown only
    no_bg = torch.where(unknown_band, 0.5, 1.0)  # foreground and unknown only
    no_unknown = torch.zeros(1, 1, 16, 16)
    no_unknown[..., 8:] = 1.0
    all_unknown = torch.full((1, 1, 16, 16), 0.5)
    # one batch of four: each image is answered on its own
    out = ClassicalMatting(method)(image.expand(4, -1, -1, -1), torch.cat([no_fg, no_bg, no_unknown, all_unknown]))
    alpha = out.alpha
    assert alpha.shape == (4, 1, 16, 16)
    assert torch.equal(alpha[2:3], no_unknown)  # nothing to solve: the trimap
    if method == "fill_half":  # the floor stays the trimap whatever it holds
        assert torch.equal(alpha, torch.cat([no_fg, no_bg, no_unknown, all_unknown]))
        return
    assert torch.equal(alpha[0:1], torch.zeros_like(no_fg))  # no foreground: all 0
    assert torch.equal(alpha[1:2], torch.ones_like(no_bg))  # no background: all 1
    assert torch.equal(alpha[3:4], torch.zeros_like(all_unknown))  # neither: the no-fg rule first


def test_options_are_checked_and_every_config_is_pymattings_defaults(make_cfg):
    with pytest.raises(ValueError, match="choose one of"):
        ClassicalMatting("bayesian")
    with pytest.raises(ValueError, match="fill_half solves nothing"):
        ClassicalMatting("fill_half", cg_kwargs={"maxiter": 5})
    import pymatting

    laplacians = {"closed_form": pymatting.cf_laplacian, "knn": pymatting.knn_laplacian,
                  "lkm": pymatting.lkm_laplacian}
    defaults = lambda f: {k: p.default for k, p in inspect.signature(f).parameters.items()}  # noqa: E731
    for method in METHODS:
        cfg = make_cfg("eval", [f"baseline={method}"])
        net = instantiate(cfg.baseline, _convert_="all")
        assert isinstance(net, ClassicalMatting) and net.method == method
        assert not net.is_routed and list(net.backbone.routed_block_indexes) == []
        if method in laplacians:
            lap = defaults(laplacians[method])
            assert all(lap[k] == v for k, v in net.laplacian_kwargs.items()), method
            assert all(defaults(pymatting.cg)[k] == v for k, v in net.cg_kwargs.items()), method
    with pytest.raises(MissingConfigException, match="Could not find 'baseline/foo'"):
        make_cfg("eval", ["baseline=foo"])


@pytest.mark.slow  # a fresh interpreter: ~10 s of torch import on a busy machine
def test_importing_the_module_leaves_pymatting_unloaded():
    code = "import sys, mematte.cli, mematte.baselines; print(sorted({'pymatting', 'numba'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- eval.py
def test_eval_py_scores_a_baseline_like_a_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    # as a user runs it (the config printed first: ckpt_path unset must not stop that)
    run_script("eval.py", ["baseline=closed_form", *TINY_TEST, f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch)
    payload = json.loads((run_dir / "metrics.json").read_text())
    assert payload["baseline"] == "closed_form" and payload["checkpoint"] is None
    assert payload["checkpoint_step"] is None and payload["skipped"] == [] and payload["routed_inference"] == {}
    assert payload["num_images"] == 2 and payload["split"] == "test" and payload["data"] == "synthetic"
    assert set(payload["metrics"]) == {"sad", "mse", "grad", "conn", "latency_s", "peak_mib"}
    assert all(np.isfinite(v) and v >= 0 for v in payload["metrics"].values())
    # the eval callbacks ran on it: test panels (no routing maps: nothing is routed)
    panels = list((run_dir / "panels").glob("test_step*/*.png"))
    assert len(panels) == 2 and all(p.name.endswith("_panel.png") for p in panels)
    assert not list(tmp_path.rglob("eval/*.json"))  # no copy next to a checkpoint's run


def test_fill_half_is_scored_by_the_metrics_code(make_cfg, tmp_path):
    """The eval of fill_half equals MattingMetrics of the trimap itself on the same images."""
    cfg = make_cfg("eval", ["baseline=fill_half", *TINY_TEST, "callbacks=none", "logger=none",
                            "extras.print_config=false"])
    payload = _evaluate(cfg)
    datamodule = instantiate(cfg.data, _convert_="partial")
    expected = MattingMetrics(region=cfg.eval_region)
    for batch in datamodule.test_dataloader():
        expected.update(batch["trimap"], batch["alpha"], batch["trimap"])
    for key, value in expected.compute().items():
        assert payload["metrics"][key] == pytest.approx(float(value), rel=1e-6), key
    assert payload["metrics"]["sad"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == payload


def test_eval_needs_a_checkpoint_or_a_baseline(make_cfg, caplog, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = make_cfg("eval", [])
    with pytest.raises(ValueError, match="ckpt_path is required.*baseline=closed_form"):
        _evaluate(cfg)
    with pytest.raises(SystemExit) as stop:  # eval.py: one message, no traceback
        run_task(_evaluate, cfg)
    assert stop.value.code == 1 and "ckpt_path is required" in caplog.text and "Traceback" not in caplog.text
    with pytest.raises(ValueError, match="either a checkpoint or a baseline"):
        _evaluate(make_cfg("eval", ["baseline=knn", "ckpt_path=some.ckpt"]))
