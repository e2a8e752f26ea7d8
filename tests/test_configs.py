"""Every root config and every option of every config group composes (and instantiates)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import CONF_DIR
from test_folders import LAYOUTS, LOADERS
from test_folders import TINY as TINY_FOLDERS

ROOTS = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
# Groups selected by the root configs, with every option on disk.
GROUPS = {
    # files starting with "_" are shared pieces included by options, not options
    d.name: sorted(p.stem for p in d.glob("*.yaml") if not p.stem.startswith("_"))
    for d in sorted(CONF_DIR.iterdir())
    if d.is_dir() and d.name not in ("hydra",)
}


def test_layout_has_the_agreed_groups():
    for group in ("paths", "data", "backbone", "decoder", "router", "ltrm", "routing", "model",
                  "trainer", "logger", "callbacks", "extras", "debug", "experiment"):
        assert GROUPS.get(group), f"conf/{group}/ is missing or empty"


@pytest.mark.parametrize("root", ROOTS)
def test_root_configs_compose(make_cfg, root):
    overrides = ["ckpt_path=dummy.ckpt"] if root == "eval" else []
    cfg = make_cfg(root, overrides, tiny=False)
    assert cfg.task_name == root


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g, opts in GROUPS.items() for o in opts if g not in ("paths", "extras")],
)
def test_every_group_option_composes_and_instantiates(make_cfg, group, option, tmp_path: Path):
    if group == "baseline":  # eval.py's group: training-free methods scored like a checkpoint
        net = instantiate(make_cfg("eval", [f"baseline={option}"]).baseline, _convert_="all")
        assert net.method == option and not net.is_routed
        return
    # LTRM and routing options only act on a routed net
    routed = ["router=local_global"] if group in ("ltrm", "routing") else []
    if group == "data" and option in LAYOUTS:  # real layouts: a tiny root written as released
        root = tmp_path / "root"
        LAYOUTS[option](root)
        overrides = [f"data={option}", f"data.root={root}", *LOADERS]
        cfg = make_cfg("train", overrides, tiny=False)
        if cfg.data.get("train_set") is not None:
            cfg = make_cfg("train", overrides + TINY_FOLDERS, tiny=False)
    else:
        # the paper recipes (experiment=mematte_s_c1k, ...) name real datasets and GPUs: they
        # compose as written, without the tiny CPU overrides (tests/test_sweeps.py checks them)
        cfg = make_cfg("train", [*routed, f"{group}={option}"], tiny=group != "experiment")
    # Build what the option describes, cheaply (no trainer run).
    if group in ("backbone", "decoder", "router", "model", "ltrm", "routing"):
        net = instantiate(cfg.model)
        assert net.backbone.embed_dim == cfg.backbone.embed_dim
        assert net.is_routed == (cfg.router is not None)
        if group == "routing":
            objective = instantiate(cfg.module.routing)
            assert objective.mode in ("batch", "image", "layer", "fixed")
            assert objective.targets(0, len(net.backbone.routed_blocks))
    elif group == "data":
        dm = instantiate(cfg.data, _convert_="partial")
        assert dm is not None
    elif group in ("logger", "callbacks"):
        node = cfg.get(group)
        for c in (node or {}).values():
            if group == "logger" and "wandb" in c._target_:
                continue  # W&B init spawns a service; exercised in test_train
            instantiate(c)
    elif group == "trainer" and cfg.trainer.accelerator == "cpu":
        instantiate(cfg.trainer, logger=False, callbacks=[])


def test_unknown_group_option_fails_with_choices(make_cfg):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="vit_huge"):
        make_cfg("train", ["backbone=vit_huge"])


def test_router_none_is_the_vitmatte_default(make_cfg):
    cfg = make_cfg("train", [])
    assert cfg.router is None
    assert cfg.backbone.embed_dim == 192
    assert list(cfg.decoder.fusion_out) == [128, 64, 32, 16]
    big = make_cfg("train", ["backbone=vit_small"])
    assert big.backbone.embed_dim == 384 and list(big.decoder.fusion_out) == [256, 128, 64, 32]
