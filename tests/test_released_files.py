"""Checkpoint files as released: detectron2-style training files that pickle Python objects
besides their tensors load their weights without running code; full unpickling happens only
with an explicit trust flag."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mematte.checkpoints import build_net, ours_to_official, read_weights
from mematte.convert import main as convert_main
from mematte.predict import load_net

from test_checkpoint_interop import assert_same_state, model_config, randomise  # noqa: E402

# Set by _Payload when unpickling runs its code (it must not, unless trusted).
RAN: list[str] = []


class _Payload:
    """A pickled object whose unpickling runs code (as a malicious file would)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_run, (self.marker,))


def _run(marker: str) -> str:
    RAN.append(marker)
    return marker


class _ParamScheduler:
    """Like fvcore's schedulers: a plain object with attributes, pickled by reference."""

    def __init__(self) -> None:
        self.milestones = [30000, 35000]
        self.gamma = 0.1


def detectron2_file(net: torch.nn.Module, path: Path, marker: str = "loaded") -> Path:
    """``DetectionCheckpointer.save`` layout: model, optimizer, scheduler, iteration and the
    trainer's extra state, with Python objects besides tensors."""
    model = {k: v for k, v in ours_to_official(net.state_dict()).items()}
    params = [torch.zeros(2, requires_grad=True)]
    optimizer = torch.optim.AdamW(params, lr=5e-4)
    params[0].grad = torch.ones(2)
    optimizer.step()
    torch.save({
        "model": model,
        "optimizer": optimizer.state_dict(),
        "scheduler": {"base_lrs": [5e-4], "last_epoch": 40406, "_multiplier": _ParamScheduler()},
        "iteration": np.int64(40406),
        "trainer": {"hooks": {"PeriodicCheckpointer": _Payload(marker)}},
    }, path)
    return path


@pytest.fixture
def tiny_official(make_cfg, tmp_path):
    cfg = model_config(make_cfg, routed=True)
    net = randomise(build_net(cfg), seed=21)
    return net, detectron2_file(net, tmp_path / "MEMatte_S_release.pth")


def test_the_fixture_really_needs_more_than_weights_only(tiny_official):
    _, path = tiny_official
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)


def test_released_file_loads_safely_without_trust(tiny_official, caplog):
    net, path = tiny_official
    RAN.clear()
    with caplog.at_level(logging.INFO, logger="mematte"):
        weights = read_weights(path)
    assert RAN == []  # nothing from the file ran
    assert weights.format == "official"
    assert "read without running code" in caplog.text and "_ParamScheduler" in caplog.text
    assert_same_state(load_net(path), net)


def test_weights_inside_pickled_objects_need_trust(make_cfg, tmp_path, capsys):
    cfg = model_config(make_cfg, routed=False)
    net = randomise(build_net(cfg), seed=22)
    path = tmp_path / "whole_model.pth"
    torch.save(net, path)  # the weights live inside pickled module objects
    with pytest.raises(ValueError, match=r"(?s)holds no state dict.*trust_checkpoint=true.*--trust-checkpoint"):
        read_weights(path)
    assert convert_main(["--from", str(path), "--to", str(tmp_path / "out.ckpt")]) == 1
    assert "trust" in capsys.readouterr().err

    assert_same_state(load_net(path, trust=True), net)
    assert convert_main(["--from", str(path), "--to", str(tmp_path / "out.ckpt"), "--trust-checkpoint"]) == 0


def test_trust_runs_the_files_code_and_says_so(tiny_official, caplog):
    _, path = tiny_official
    RAN.clear()
    with caplog.at_level(logging.WARNING, logger="mematte"):
        read_weights(path, trust=True)
    assert RAN == ["loaded"]  # what trusting means
    assert "runs any code stored in the file" in caplog.text


def test_predict_and_eval_configs_carry_the_trust_flag(make_cfg):
    for name in ("predict", "eval"):
        cfg = make_cfg(name, ["ckpt_path=x.pth", "input=a", "out=b"] if name == "predict" else [])
        assert cfg.trust_checkpoint is False and cfg.preset == "default"
