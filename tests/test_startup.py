"""Start-up cost: what ``predict.py --help`` and the predict path import (not timed: imports).

``import timm`` drags in torchvision, torch._dynamo and wandb (~5 s), torchmetrics drags in
transformers, Lightning its whole stack; none of them is needed to print help or to matte an
image. The models use :mod:`mematte.models.layers` instead of timm.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

HEAVY = ("torchvision", "transformers", "lightning", "timm", "torchmetrics", "wandb", "matplotlib",
         "kornia", "pymatting")


def _imported_after(code: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    listing = "print('MODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = f"{code}\nimport json, sys\n{listing}"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line.split(" ", 1)[1]))


def test_predict_help_imports_neither_torch_nor_heavy_frameworks():
    code = ("import runpy, sys\nsys.argv = ['predict.py', '--help']\ntry:\n"
            "    runpy.run_path('predict.py', run_name='__main__')\nexcept SystemExit:\n    pass")
    modules = _imported_after(code)
    assert "hydra" in modules  # the help was composed
    assert not modules & {"torch", *HEAVY}, sorted(modules & {"torch", *HEAVY})


def test_predict_path_imports_no_heavy_framework():
    modules = _imported_after("import mematte.predict, mematte.inference, mematte.checkpoints")
    assert "torch" in modules
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_local_layers_match_timm():
    timm_layers = pytest.importorskip("timm.layers")
    from mematte.models import layers

    torch.manual_seed(0)
    ours, theirs = layers.Mlp(8, 32, chunk_tokens=5), timm_layers.Mlp(8, 32)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 4, 8)
    with torch.no_grad():  # 24 tokens in chunks of 5
        torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours(x), theirs(x))
    norm, ref = layers.LayerNorm2d(6), timm_layers.LayerNorm2d(6)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    ref.load_state_dict(norm.state_dict())
    y = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(norm(y), ref(y))
    pos = torch.randn(1, 1 + 14 * 14, 8)
    for prefix in (0, 1):
        p = pos[:, 1 - prefix:]
        kw = dict(new_size=[9, 23], old_size=[14, 14], num_prefix_tokens=prefix, interpolation="bicubic",
                  antialias=False)
        torch.testing.assert_close(layers.resample_abs_pos_embed(p, **kw), timm_layers.resample_abs_pos_embed(p, **kw))
    drop = layers.DropPath(0.5).train()
    kept = drop(torch.ones(1000, 3))
    assert set(kept.unique().tolist()) <= {0.0, 2.0} and 300 < int((kept[:, 0] > 0).sum()) < 700

