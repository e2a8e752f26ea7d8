"""Checkpoint interop: official ViTMatte/MEMatte files, Hugging Face folders, timm/DINO/MAE
backbones, official export and the conversion CLI. Every file is generated here from tiny
random nets, so the tests need no downloads."""

from __future__ import annotations

import argparse
import copy
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from mematte.checkpoints import (
    WeightsMismatchError,
    build_net,
    detect_format,
    export_official,
    infer_net_config,
    init_net_from,
    load_checkpoint,
    load_net_weights,
    load_teacher,
    net_from_any,
    net_from_checkpoint,
    official_to_ours,
    ours_to_official,
    read_weights,
    save_net_checkpoint,
)
from mematte.convert import main as convert_main

ROOT = Path(__file__).resolve().parents[1]
# 4 blocks (global 1, 3), C=64, 2 heads, 2×2 windows, half-width decoder (vit_tiny's default).
TINY = [
    "backbone=vit_tiny",
    "backbone.depth=4",
    "backbone.embed_dim=64",
    "backbone.num_heads=2",
    "backbone.window_size=2",
    "backbone.global_block_indexes=[1,3]",
    "backbone.residual_block_indexes=[1,3]",
    "backbone.rel_pos_grid=4",
]
# MEMatte's global blocks, and therefore its routers, in the tiny net.
ROUTED = (1, 3)


_MODEL_CONFIGS: dict[tuple[bool, tuple[str, ...]], dict[str, Any]] = {}


def model_config(make_cfg, routed: bool, extra: list[str] | None = None) -> dict[str, Any]:
    """The tiny net's model config, composed once per module (a compose takes ~0.4 s); each
    call gets its own copy."""
    key = (routed, tuple(extra or []))
    if key not in _MODEL_CONFIGS:
        router = "router=local_global" if routed else "router=none"
        cfg = make_cfg("train", [*TINY, router, *(extra or [])])
        _MODEL_CONFIGS[key] = OmegaConf.to_container(cfg.model, resolve=True)
    return copy.deepcopy(_MODEL_CONFIGS[key])


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every tensor (zero-initialised norms and rel-pos tables included), so
    that equal outputs mean every tensor landed in its place."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.startswith("pixel_"):
            state[key] = value
        else:
            state[key] = torch.randn(value.shape, generator=gen) * 0.2
    net.load_state_dict(state)
    return net.eval()


def tiny_net(make_cfg, routed: bool, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    cfg = model_config(make_cfg, routed)
    return randomise(build_net(cfg), seed), cfg


def inputs(size: int = 64, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, size, size, generator=gen)
    trimap = torch.randint(0, 3, (1, 1, size, size), generator=gen).float() / 2
    return image, trimap


@torch.no_grad()
def alpha(net: nn.Module, image: Tensor, trimap: Tensor) -> Tensor:
    return net.eval()(image, trimap).alpha


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def official_layout_by_hand(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official MEMatte names, written independently of the library's mapping:
    blocks.{1,3}.router → routers.{0,1}; blocks.i.ltrm → blocks.i.efficient_block."""
    out = {}
    for key, value in state.items():
        if key.startswith("pixel_"):
            continue
        for k, block in enumerate(ROUTED):
            key = key.replace(f"backbone.blocks.{block}.router.", f"backbone.routers.{k}.")
        out[key.replace(".ltrm.", ".efficient_block.")] = value
    return out


# --------------------------------------------------------------------------- official files
def test_official_vitmatte_with_ddp_prefix_and_teacher_junk(make_cfg, tmp_path):
    net, cfg = tiny_net(make_cfg, routed=False)
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("pixel_")}
    junk = {"module.teacher_backbone.patch_embed.proj.weight": torch.zeros(3)}
    path = tmp_path / "ViTMatte_S_Com.pth"
    torch.save({"model": {**state, **junk}, "iteration": 7}, path)

    assert detect_format(path) == "official"
    weights = read_weights(path)
    assert weights.dropped == ["teacher_backbone.patch_embed.proj.weight"]
    assert infer_net_config(weights.state) == cfg  # no config given: the shapes tell it
    loaded = net_from_any(path)
    assert_same_state(loaded, net)
    image, trimap = inputs()
    assert torch.equal(alpha(loaded, image, trimap), alpha(net, image, trimap))
    # into a given net too
    other = load_net_weights(path, build_net(cfg))
    assert_same_state(other, net)


def test_official_mematte_router_and_ltrm_names(make_cfg, tmp_path):
    net, cfg = tiny_net(make_cfg, routed=True)
    official = official_layout_by_hand(net.state_dict())
    for name in (
        "backbone.routers.0.in_conv.0.weight",  # LayerNorm
        "backbone.routers.1.out_conv.4.bias",  # last Linear of the scoring MLP
        "backbone.blocks.1.efficient_block.dwconv.weight",
        "backbone.blocks.3.efficient_block.eca.conv.weight",
    ):
        assert name in official, name
    assert "backbone.blocks.1.attn.rel_pos_h" not in official  # routed global blocks have none
    # a bare state dict plus the frozen teacher, as MEMatte's pretrained/preprocess.py writes
    teacher = {f"teacher_{k}": v for k, v in official.items() if k.startswith("backbone.")}
    path = tmp_path / "MEMatte_S.pth"
    torch.save({**official, **teacher}, path)

    loaded = net_from_any(path)
    assert loaded.is_routed and loaded.backbone.routed_block_indexes == list(ROUTED)
    assert_same_state(loaded, net)
    image, trimap = inputs()
    assert torch.equal(alpha(loaded, image, trimap), alpha(net, image, trimap))
    # the exporter writes exactly these names and tensors
    exported = torch.load(export_official(net, tmp_path / "export.pth"), weights_only=True)["model"]
    assert list(exported) == list(official)
    assert all(torch.equal(exported[k], official[k]) for k in official)


@pytest.mark.parametrize("routed", [False, True], ids=["vitmatte", "mematte"])
def test_export_official_round_trip(make_cfg, tmp_path, routed):
    net, _ = tiny_net(make_cfg, routed=routed, seed=3)
    path = export_official(net, tmp_path / "net.pth")
    assert detect_format(path) == "official"
    assert_same_state(net_from_any(path), net)
    saved = torch.load(path, weights_only=True)["model"]
    again = ours_to_official(official_to_ours(saved)[0])
    assert list(again) == list(saved) and all(again[k] is saved[k] for k in saved)


def test_export_flavour_must_match_the_net(make_cfg, tmp_path):
    vitmatte, _ = tiny_net(make_cfg, routed=False)
    mematte, _ = tiny_net(make_cfg, routed=True)
    with pytest.raises(ValueError, match="no routers: export it with flavour='vitmatte'"):
        export_official(vitmatte, tmp_path / "a.pth", flavour="mematte")
    with pytest.raises(ValueError, match="cannot hold routers"):
        export_official(mematte, tmp_path / "b.pth", flavour="vitmatte")
    se = build_net(model_config(make_cfg, True, ["router=se"]))
    with pytest.raises(ValueError, match="only the local-global router"):
        export_official(se, tmp_path / "c.pth")


@pytest.mark.parametrize("backbone", ["vit_small", "vit_base"])
@pytest.mark.parametrize("router", ["none", "local_global"])
def test_inferred_config_matches_conf(make_cfg, monkeypatch, backbone, router):
    """Full-size shapes (on the meta device: no memory, no init time) → the conf/ preset."""
    cfg = OmegaConf.to_container(
        make_cfg("train", [f"backbone={backbone}", f"router={router}"]).model, resolve=True
    )
    # ViT reads its drop-path schedule with float(): keep that one tensor on the CPU
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **kw: linspace(*a, **{**kw, "device": "cpu"}))
    with torch.device("meta"):
        state = build_net(cfg).state_dict()
    inferred = infer_net_config(official_to_ours(ours_to_official(state))[0])
    cfg["backbone"]["drop_path_rate"] = 0.0  # a training setting; not in the weights
    if router != "none":
        cfg["backbone"]["rel_pos_grid"] = 32  # routed global blocks hold no rel-pos table
    assert inferred == cfg


def test_student_init_from_official_vitmatte(make_cfg, tmp_path, caplog):
    teacher, _ = tiny_net(make_cfg, routed=False)
    path = export_official(teacher, tmp_path / "vitmatte.pth")
    student = build_net(model_config(make_cfg, routed=True))
    fresh_router = student.backbone.blocks[1].router.in_conv[1].weight.clone()
    with caplog.at_level(logging.INFO, logger="mematte"):
        init_net_from(student, path)
    own = student.state_dict()
    for key, value in teacher.state_dict().items():
        if key in own:
            assert torch.equal(own[key], value), key
    assert torch.equal(student.backbone.blocks[1].router.in_conv[1].weight, fresh_router)
    assert any("dropped: 4 rel-pos tables" in r.getMessage() for r in caplog.records)


def test_official_teacher(make_cfg, tmp_path):
    net, _ = tiny_net(make_cfg, routed=False)
    teacher = load_teacher(export_official(net, tmp_path / "t.pth"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert_same_state(teacher, net)


# --------------------------------------------------------------------------- errors
def test_mismatched_official_file_lists_every_problem(make_cfg, tmp_path):
    net, cfg = tiny_net(make_cfg, routed=False)
    state = ours_to_official(net.state_dict())
    del state["backbone.blocks.0.mlp.fc1.bias"]
    state["backbone.blocks.0.mlp.fc3.weight"] = state.pop("backbone.blocks.0.mlp.fc2.weight")
    state["decoder.matting_head.matting_convs.3.bias"] = torch.zeros(2)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsMismatchError) as err:
        load_net_weights(path, build_net(cfg))
    message = str(err.value)
    assert f"cannot load the net from {path} (detected: official ViTMatte/MEMatte (detectron2) weights):" in message
    assert "missing (2): backbone.blocks.0.mlp.fc1.bias, backbone.blocks.0.mlp.fc2.weight" in message
    assert "unexpected (1): backbone.blocks.0.mlp.fc3.weight" in message
    assert "mismatched (1): decoder.matting_head.matting_convs.3.bias: checkpoint (2,) vs model (1,)" in message


def test_mematte_file_into_vitmatte_net_says_which_model(make_cfg, tmp_path):
    mematte, _ = tiny_net(make_cfg, routed=True)
    path = export_official(mematte, tmp_path / "m.pth")
    routed_hint = r"(?s)unexpected \(\d+\): .*routed MEMatte net: build it with model=mematte"
    with pytest.raises(WeightsMismatchError, match=routed_hint):
        load_net_weights(path, build_net(model_config(make_cfg, routed=False)))
    vitmatte, _ = tiny_net(make_cfg, routed=False)
    path = export_official(vitmatte, tmp_path / "v.pth")
    with pytest.raises(WeightsMismatchError, match=r"(?s)missing \(\d+\): .*use init_from="):
        load_net_weights(path, build_net(model_config(make_cfg, routed=True)))


def test_unreadable_and_unknown_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"backbone.patch_embed.proj.weight": torch.zeros(8, 4, 16, 16)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=f"cannot read {truncated}: .*Is the file complete"):
        read_weights(truncated)
    unknown = tmp_path / "unknown.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, unknown)
    with pytest.raises(ValueError, match=r"unknown weight layout \(first keys: fc.weight\)"):
        read_weights(unknown)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pth"):
        read_weights(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown format='onnx'"):
        read_weights(good, "onnx")


# --------------------------------------------------------------------------- ViT backbones
def timm_vit(embed_dim: int = 64, depth: int = 4, img_size: int = 224, seed: int = 5) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(
        img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=2, num_classes=10
    )
    for p in vit.parameters():  # timm zero-initialises the class and position tokens
        nn.init.normal_(p, std=0.2)
    return vit.eval()


def backbone_files(tmp_path: Path, vit: nn.Module) -> dict[str, Path]:
    """The same ViT as a timm state dict, a full DINO checkpoint and an MAE pretraining file."""
    sd = vit.state_dict()
    files = {name: tmp_path / f"{name}.pth" for name in ("timm", "dino", "mae")}
    torch.save(sd, files["timm"])
    dino_teacher = {f"module.backbone.{k}": v for k, v in sd.items() if not k.startswith("head.")}
    dino_teacher["module.head.last_layer.weight_g"] = torch.ones(1, 8)
    torch.save(
        {"teacher": dino_teacher, "student": dino_teacher, "epoch": 100,
         "args": argparse.Namespace(arch="vit_small")},  # needs the argparse allow-listing
        files["dino"],
    )
    mae = {k: v for k, v in sd.items() if not k.startswith("head.")}
    mae.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
                "decoder_blocks.0.attn.qkv.weight": torch.zeros(96, 32), "decoder_pred.bias": torch.zeros(768)})
    torch.save({"model": mae}, files["mae"])
    return files


@pytest.mark.parametrize("source", ["timm", "dino", "mae"])
def test_backbone_init_from_pretrained_vit(make_cfg, tmp_path, source):
    vit = timm_vit()
    path = backbone_files(tmp_path, vit)[source]
    assert detect_format(path) == "backbone"
    student = build_net(model_config(make_cfg, routed=True))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    init_net_from(student, path)
    own, ref = student.state_dict(), vit.state_dict()

    w = own["backbone.patch_embed.proj.weight"]
    assert torch.equal(w[:, :3], ref["patch_embed.proj.weight"]) and not w[:, 3].any()  # trimap channel 0
    assert torch.equal(own["backbone.pos_embed"], ref["pos_embed"])  # class slot kept, same 14×14 grid
    for i in range(4):
        for name in ("norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "mlp.fc2.bias"):
            assert torch.equal(own[f"backbone.blocks.{i}.{name}"], ref[f"blocks.{i}.{name}"])
    for key, value in own.items():  # decoder, routers, LTRMs, residuals, rel-pos: untouched
        if key.startswith("decoder.") or any(p in key for p in (".router.", ".ltrm.", ".residual.", "rel_pos")):
            assert torch.equal(value, before[key]), key
    # the zero trimap channel leaves the pretrained RGB patch response as it was
    rgb = torch.randn(1, 3, 32, 32)
    ours = student.backbone.patch_embed.proj(torch.cat([rgb, torch.rand(1, 1, 32, 32)], 1))
    assert torch.allclose(ours, vit.patch_embed.proj(rgb), atol=1e-6)


def test_backbone_pos_embed_grid_is_resized(make_cfg, tmp_path):
    from timm.layers import resample_abs_pos_embed

    vit = timm_vit(img_size=128)  # 8×8 grid → our 14×14 pretrain grid
    torch.save(vit.state_dict(), tmp_path / "vit128.pth")
    net = build_net(model_config(make_cfg, routed=False))
    init_net_from(net, tmp_path / "vit128.pth", format="timm")
    pos = net.backbone.pos_embed
    expected = resample_abs_pos_embed(vit.pos_embed[:, 1:], new_size=[14, 14], old_size=[8, 8],
                                      num_prefix_tokens=0, interpolation="bicubic", antialias=False)
    assert pos.shape == (1, 197, 64)
    assert torch.equal(pos[:, :1], vit.pos_embed[:, :1]) and torch.allclose(pos[:, 1:], expected)


def test_backbone_files_are_not_evaluable_and_sizes_must_match(make_cfg, tmp_path):
    path = backbone_files(tmp_path, timm_vit())["timm"]
    with pytest.raises(WeightsMismatchError, match="holds no decoder: it can only initialise a net"):
        net_from_any(path)
    wide = tmp_path / "wide.pth"
    torch.save(timm_vit(embed_dim=96).state_dict(), wide)
    wrong_width = r"(?s)cannot initialise the net from .*mismatched \(\d+\): backbone\.pos_embed"
    with pytest.raises(WeightsMismatchError, match=wrong_width):
        init_net_from(build_net(model_config(make_cfg, routed=False)), wide)


# --------------------------------------------------------------------------- Hugging Face
def hf_model(tmp_path: Path) -> tuple[nn.Module, Path, Any]:
    """A random VitMatteForImageMatting like the tiny net (global 1, 3; 2×2 windows), saved."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    backbone = transformers.VitDetConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_channels=4, image_size=64,
        pretrain_image_size=224, patch_size=16, window_size=2, window_block_indices=[0, 2],
        residual_block_indices=[1, 3], use_relative_position_embeddings=True, out_features=["stage4"],
    )
    config = transformers.VitMatteConfig(
        backbone_config=backbone, hidden_size=64, convstream_hidden_sizes=[24, 48, 96],
        fusion_hidden_sizes=[128, 64, 32, 16],
    )
    model = randomise(transformers.VitMatteForImageMatting(config), seed=7)
    folder = tmp_path / "hf-vitmatte"
    model.save_pretrained(folder)
    # ImageNet statistics in the processor (its default is 0.5): must travel to our net
    processor = transformers.VitMatteImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    processor.save_pretrained(folder)
    return model, folder, processor


def test_hf_folder_gives_the_same_alpha_as_transformers(make_cfg, tmp_path):
    import numpy as np

    model, folder, processor = hf_model(tmp_path)
    assert detect_format(folder) == "hf"
    net = net_from_any(folder)
    assert net.backbone.global_block_indexes == (1, 3) and torch.allclose(
        net.pixel_std.flatten(), torch.tensor([0.229, 0.224, 0.225])
    )
    # same architecture as the tiny conf net
    assert read_weights(folder).net_config == model_config(make_cfg, routed=False)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=(64, 64))
    pixel_values = processor(images=image, trimaps=trimap, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 4, 64, 64)  # 64 is a multiple of 32: no padding on either side
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).alphas
    # HF feeds trimap/255 unquantised (128 → 0.502); give ours the same values
    ours = alpha(net, torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                 torch.from_numpy(trimap)[None, None].float() / 255)
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()


def test_hf_pytorch_bin_and_default_normalisation(tmp_path):
    model, folder, _ = hf_model(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "preprocessor_config.json").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    net = net_from_any(folder)
    assert torch.equal(net.pixel_mean.flatten(), torch.full((3,), 0.5))  # the processor's default
    image, trimap = inputs()
    x = torch.cat([(image - 0.5) / 0.5, trimap], 1)
    with torch.no_grad():
        assert torch.allclose(alpha(net, image, trimap), model(pixel_values=x).alphas, atol=1e-4)


# --------------------------------------------------------------------------- mematte + CLI
def test_saved_mematte_checkpoint_is_what_eval_reads(make_cfg, tmp_path):
    net, cfg = tiny_net(make_cfg, routed=True)
    path = save_net_checkpoint(net, cfg, tmp_path / "net.ckpt")
    assert detect_format(path) == "mematte"
    assert_same_state(net_from_checkpoint(load_checkpoint(path)), net)  # eval.py's path
    assert_same_state(net_from_any(path), net)


def test_nets_built_to_be_loaded_skip_the_random_init(make_cfg, tmp_path, monkeypatch):
    """predict.py / eval.py build the net only to overwrite every weight: no initialiser runs
    (a ViT-S start-up spent 0.35 s drawing values), the loaded net is the saved one, and the
    initialisers work again afterwards."""
    net, cfg = tiny_net(make_cfg, routed=True)
    path = save_net_checkpoint(net, cfg, tmp_path / "net.ckpt")
    calls = []
    for name in ("kaiming_uniform_", "trunc_normal_", "uniform_", "zeros_", "ones_"):
        real = getattr(nn.init, name)
        monkeypatch.setattr(nn.init, name, lambda t, *a, _real=real, _name=name, **k: calls.append(_name) or _real(t, *a, **k))
    loaded = net_from_any(path)
    assert calls == []
    assert_same_state(loaded, net)
    build_net(cfg)  # an ordinary build still initialises
    assert {"kaiming_uniform_", "trunc_normal_"} <= set(calls)


def test_skipped_weight_init_is_undone_on_errors():
    from mematte.checkpoints.netconfig import skipped_weight_init

    real = nn.init.kaiming_uniform_
    with pytest.raises(ZeroDivisionError), skipped_weight_init():
        assert nn.init.kaiming_uniform_ is not real
        1 / 0
    assert nn.init.kaiming_uniform_ is real
    assert nn.Linear(4, 4).weight.abs().sum() > 0


def test_a_parameter_left_unloaded_is_refused(make_cfg, tmp_path, monkeypatch):
    """Only buffers may be absent from a file (pixel statistics, BN step counters); should a
    parameter ever slip through, the uninitialised net is refused, not returned."""
    import dataclasses

    from mematte.checkpoints import loading
    from mematte.checkpoints.loading import net_from_weights

    net, cfg = tiny_net(make_cfg, routed=False)
    weights = read_weights(save_net_checkpoint(net, cfg, tmp_path / "net.ckpt"))
    key = "decoder.matting_head.matting_convs.0.weight"
    assert key in weights.state
    monkeypatch.setattr(loading, "_OPTIONAL", re.compile(re.escape(key) + "$"))
    partial = dataclasses.replace(weights, state={k: v for k, v in weights.state.items() if k != key})
    with pytest.raises(WeightsMismatchError, match="leaves parameters unset: " + re.escape(key)):
        net_from_weights(partial)


def test_convert_cli_official_to_mematte_and_back(make_cfg, tmp_path, capsys):
    net, cfg = tiny_net(make_cfg, routed=True)
    official = export_official(net, tmp_path / "official.pth")
    ckpt = tmp_path / "converted.ckpt"
    assert convert_main(["--from", str(official), "--to", str(ckpt)]) == 0
    stored = load_checkpoint(ckpt)
    router = stored["mematte"]["net_config"]["backbone"]["global_block"]["router"]
    assert router["_target_"] == "mematte.models.router.LocalGlobalRouter"
    assert stored["mematte"]["source_format"] == "official"
    assert_same_state(net_from_checkpoint(stored), net)

    back = tmp_path / "back.pth"
    assert convert_main(["--from", str(ckpt), "--to", str(back), "--to-format", "official"]) == 0
    a, b = torch.load(official, weights_only=True)["model"], torch.load(back, weights_only=True)["model"]
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)

    # a model config that does not fit: one error listing the keys, exit code 1
    yaml = tmp_path / "vit.yaml"
    OmegaConf.save({"model": model_config(make_cfg, routed=False)}, yaml)
    assert convert_main(["--from", str(official), "--to", str(tmp_path / "x.ckpt"), "--model-config", str(yaml)]) == 1
    assert "routed MEMatte net" in capsys.readouterr().err


def test_convert_cli_backbone_with_model_config(make_cfg, tmp_path):
    path = backbone_files(tmp_path, timm_vit())["dino"]
    yaml = tmp_path / "model.yaml"
    OmegaConf.save(model_config(make_cfg, routed=False), yaml)
    out = tmp_path / "dino_init.ckpt"
    assert convert_main(["--from", str(path), "--format", "dino", "--model-config", str(yaml), "--to", str(out)]) == 0
    net = net_from_checkpoint(load_checkpoint(out))
    assert not net.backbone.patch_embed.proj.weight[:, 3].any()


def test_convert_runs_as_a_module(make_cfg, tmp_path):
    net, _ = tiny_net(make_cfg, routed=False)
    official = export_official(net, tmp_path / "vitmatte.pth")
    out = tmp_path / "vitmatte.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "mematte.convert", "--from", str(official), "--to", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert_same_state(net_from_checkpoint(load_checkpoint(out)), net)


def test_eval_and_predict_take_an_official_file(make_cfg, tmp_path):
    """`eval.py ckpt_path=X.pth` and `predict.py ckpt_path=X.pth` read official files directly."""
    from mematte.cli import evaluate
    from mematte.predict import load_net

    net, _ = tiny_net(make_cfg, routed=True)
    path = export_official(net, tmp_path / "downloads" / "MEMatte_S.pth")
    assert_same_state(load_net(path), net)

    cfg = make_cfg("eval", [f"ckpt_path={path}", "data.test_set.num_samples=1",
                            "data.test_set.min_size=64", "data.test_set.max_size=80"])
    metrics = evaluate(cfg)
    assert {"sad", "mse", "grad", "conn"} <= set(metrics)
    payload = (tmp_path / "metrics.json").read_text()
    assert '"checkpoint_step": null' in payload
    # a downloaded file has no training run around it: nothing written next to it
    assert sorted(p.name for p in path.parent.iterdir()) == ["MEMatte_S.pth"]
