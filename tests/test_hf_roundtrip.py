"""The Hugging Face round trip: loading by hub id from the local cache, export to a folder that
transformers loads, both checked with HF_HUB_OFFLINE=1 in a temporary HF_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mematte.checkpoints import build_net, export_hf, export_official, save_net_checkpoint
from mematte.convert import main as convert_main

from test_checkpoint_interop import hf_model, model_config, randomise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def hf_alpha(model, processor, image: np.ndarray, trimap: np.ndarray) -> torch.Tensor:
    pixel_values = processor(images=image, trimaps=trimap, return_tensors="pt").pixel_values
    with torch.no_grad():
        return model(pixel_values=pixel_values).alphas


def our_alpha(net, image: np.ndarray, trimap: np.ndarray) -> torch.Tensor:
    # transformers feeds trimap / 255 unquantised (128 → 0.502): give ours the same values
    with torch.no_grad():
        return net.eval()(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                          torch.from_numpy(trimap)[None, None].float() / 255).alpha


def sample(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=(size, size))
    return image, trimap


# --------------------------------------------------------------------------- export
@pytest.mark.parametrize("source", ["mematte", "official"])
def test_export_hf_is_what_transformers_loads(make_cfg, tmp_path, source, capsys):
    cfg = model_config(make_cfg, routed=False)
    net = randomise(build_net(cfg), seed=11)
    if source == "mematte":
        src = save_net_checkpoint(net, cfg, tmp_path / "vitmatte.ckpt")
    else:  # official files store no normalisation: the ImageNet statistics must be exported
        src = export_official(net, tmp_path / "ViTMatte_tiny.pth")
    out = tmp_path / "vitmatte_hf"
    assert convert_main(["--from", str(src), "--to", str(out), "--to-format", "hf"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]

    model, info = transformers.VitMatteForImageMatting.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    processor = transformers.VitMatteImageProcessor.from_pretrained(out)
    assert list(processor.image_mean) == pytest.approx(IMAGENET_MEAN)
    assert list(processor.image_std) == pytest.approx(IMAGENET_STD)
    image, trimap = sample()
    expected = hf_alpha(model.eval(), processor, image, trimap)
    assert torch.allclose(our_alpha(net, image, trimap), expected, atol=1e-4)


def test_export_hf_refuses_mematte(make_cfg, tmp_path, capsys):
    cfg = model_config(make_cfg, routed=True)
    net = build_net(cfg)
    src = save_net_checkpoint(net, cfg, tmp_path / "mematte.ckpt")
    assert convert_main(["--from", str(src), "--to", str(tmp_path / "hf"), "--to-format", "hf"]) == 1
    err = capsys.readouterr().err
    assert "MEMatte" in err and "no MEMatte class" in err and "--to-format official" in err
    assert not (tmp_path / "hf").exists()


def test_export_hf_refuses_what_transformers_cannot_express(make_cfg, tmp_path):
    cfg = model_config(make_cfg, routed=False)
    net = build_net(cfg)
    # transformers' decoder reads as many image channels as the backbone; a size divisor is kept
    odd = dict(cfg, decoder=dict(cfg["decoder"], img_chans=3))
    with pytest.raises(ValueError, match=r"(?s)cannot express.*decoder\.img_chans: ours 3"):
        export_hf(net, tmp_path / "hf", odd)
    assert not (tmp_path / "hf").exists()


# --------------------------------------------------------------------------- hub ids
def put_in_cache(hub: Path, repo_id: str, folder: Path, commit: str) -> None:
    """Lay ``folder`` out as huggingface_hub's cache holds a downloaded model repo."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.slow  # builds and saves several HF models (~8 s); the full suite runs it
def test_hub_ids_both_directions_offline(make_cfg, tmp_path):
    """``ckpt_path=hustvl/...`` reads transformers' folder from the cache; transformers reads
    our export by hub id; a missing id says how to download it. HF_HUB_OFFLINE=1 throughout."""
    pytest.importorskip("huggingface_hub")
    hub = tmp_path / "hf_home" / "hub"
    model, folder, _ = hf_model(tmp_path)
    put_in_cache(hub, "hustvl/vitmatte-small-composition-1k", folder, "a" * 40)
    cfg = model_config(make_cfg, routed=False)
    net = randomise(build_net(cfg), seed=13)
    put_in_cache(hub, "someone/exported-vitmatte", export_hf(net, tmp_path / "exported", cfg), "b" * 40)
    image, trimap = sample()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "trimap.npy", trimap)
    torch.save(our_alpha(net, image, trimap), tmp_path / "ours_exported.pt")

    script = textwrap.dedent(f"""
        import json, numpy as np, torch, transformers
        from mematte.checkpoints import detect_format, net_from_any
        image, trimap = np.load({str(tmp_path / 'image.npy')!r}), np.load({str(tmp_path / 'trimap.npy')!r})
        def hf(repo):
            m = transformers.VitMatteForImageMatting.from_pretrained(repo).eval()
            p = transformers.VitMatteImageProcessor.from_pretrained(repo)
            with torch.no_grad():
                return m(pixel_values=p(images=image, trimaps=trimap, return_tensors="pt").pixel_values).alphas
        net = net_from_any("hustvl/vitmatte-small-composition-1k").eval()
        with torch.no_grad():
            ours = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                       torch.from_numpy(trimap)[None, None].float() / 255).alpha
        result = {{
            "format": detect_format("hustvl/vitmatte-small-composition-1k"),
            "hf_to_ours": float((ours - hf("hustvl/vitmatte-small-composition-1k")).abs().max()),
            "ours_to_hf": float((torch.load({str(tmp_path / 'ours_exported.pt')!r}) - hf("someone/exported-vitmatte")).abs().max()),
        }}
        try:
            net_from_any("hustvl/vitmatte-base-composition-1k")
        except FileNotFoundError as err:
            result["missing"] = str(err)
        print(json.dumps(result))
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["format"] == "hf"
    assert result["hf_to_ours"] < 1e-4 and result["ours_to_hf"] < 1e-4, result
    missing = result["missing"]
    assert "huggingface-cli download hustvl/vitmatte-base-composition-1k" in missing
    assert "HF_HUB_OFFLINE" in missing and str(hub) in missing


def test_a_missing_path_that_is_no_hub_id_is_a_plain_error(tmp_path):
    from mematte.checkpoints import is_hub_id, net_from_any

    assert is_hub_id("hustvl/vitmatte-small-composition-1k")
    assert not is_hub_id(str(tmp_path / "nowhere" / "model.pth"))  # absolute: never a hub id
    assert not is_hub_id("model.pth")
    assert not is_hub_id("checkpoints/last.ckpt")  # a missing local file, not a repo
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        net_from_any(tmp_path / "missing.pth")
