"""The ``official`` inference preset against the released scripts' rules, written out here from
the official ViTMatte / MEMatte inference code (not from mematte.presets):

- trimap: ``torchvision.transforms.functional.to_tensor(Image.open(trimap))`` → value / 255;
- padding (``preprocess_inputs``): ``if H % 32 or W % 32: new_H = 32 - H % 32 + H`` and the
  same for W, zeros at the bottom / right;
- MEMatte: ``max_number_token = 18500``, then ``output[trimap == 0] = 0; output[trimap == 1] = 1``;
  ViTMatte: no clamping;
- saving: ``F.to_pil_image(output)`` → ``output.mul(255).byte()``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from mematte.checkpoints import build_net, export_official
from mematte.inference import Predictor
from mematte.metrics import MattingMetrics
from mematte.models.matting_net import padded_size
from mematte.presets import OFFICIAL_MAX_TOKENS, encode_trimap, finish_alpha, inference_rules

from test_checkpoint_interop import model_config, randomise  # noqa: E402

def tiny_net(make_cfg, routed: bool, seed: int = 0) -> torch.nn.Module:
    """The interop tests' tiny net with random values everywhere, routers sending about half
    the tokens to global attention."""
    net = randomise(build_net(model_config(make_cfg, routed)), seed)
    with torch.no_grad():
        for i in net.backbone.routed_block_indexes:
            head = [m for m in net.backbone.blocks[i].router.out_conv if isinstance(m, torch.nn.Linear)][-1]
            head.bias.zero_()
    return net.eval()


# --------------------------------------------------------------------------- the official code
def official_padded(images: Tensor) -> Tensor:
    """ViTMatte / MEMatte ``preprocess_inputs``: pad as the official code does."""
    b, c, h, w = images.shape
    if images.shape[-1] % 32 != 0 or images.shape[-2] % 32 != 0:
        new_h = (32 - images.shape[-2] % 32) + h
        new_w = (32 - images.shape[-1] % 32) + w
        new_images = torch.zeros((b, c, new_h, new_w))
        new_images[:, :, :h, :w] = images[:, :, :, :]
        images = new_images
    return images


def read_as_official(image_u8: np.ndarray, trimap_u8: np.ndarray) -> tuple[Tensor, Tensor]:
    """The official dataset's ``F.to_tensor(Image.open(...))`` of an image and its trimap."""
    from PIL import Image
    from torchvision.transforms import functional as F

    return F.to_tensor(Image.fromarray(image_u8))[None], F.to_tensor(Image.fromarray(trimap_u8))[None][:, 0:1]


def official_script(net, image: Tensor, trimap: Tensor, routed: bool) -> np.ndarray:
    """What the official inference script saves for one image (1, 3, H, W) with its trimap
    (1, 1, H, W) as ``to_tensor`` gives it: uint8 (H, W)."""
    from torchvision.transforms import functional as F

    h, w = image.shape[-2:]
    x = torch.cat([(image - net.pixel_mean) / net.pixel_std, trimap], dim=1)
    x = official_padded(x)
    with torch.no_grad():
        features = net.backbone(x).features
        output = net.decoder(features, x)[..., :h, :w].flatten(0, 2)
    if routed:
        trimap = trimap.squeeze(0).squeeze(0)
        output[trimap == 0] = 0
        output[trimap == 1] = 1
    return np.asarray(F.to_pil_image(output))


def sample(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], dtype=np.uint8), size=(h, w))
    trimap[:3, :5] = 70  # a value besides 0/128/255: the official script feeds it as it is
    return image, trimap


# --------------------------------------------------------------------------- rules one by one
@pytest.mark.parametrize(
    "hw", [(1080, 1920), (1920, 1080), (512, 620), (64, 64), (33, 64), (64, 33), (31, 31), (96, 128)]
)
def test_official_padding_rule(hw):
    h, w = hw
    expected = official_padded(torch.zeros(1, 1, h, w)).shape[-2:]
    assert padded_size(h, w, 32, "official") == tuple(expected)
    aligned = padded_size(h, w, 32, "aligned")
    assert aligned == (h + (-h) % 32, w + (-w) % 32)
    # the two differ exactly when one side is aligned and the other is not
    assert (aligned != tuple(expected)) == ((h % 32 == 0) != (w % 32 == 0))
    assert padded_size(1080, 1920, 32, "official") == (1088, 1952)


def test_official_trimap_values_are_to_tensor():
    from PIL import Image
    from torchvision.transforms import functional as F

    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    official = F.to_tensor(Image.fromarray(levels))[0]
    assert torch.equal(encode_trimap(torch.from_numpy(levels), "scale"), official)
    assert abs(float(encode_trimap(torch.tensor([128], dtype=torch.uint8), "scale")) - 0.50196) < 1e-5
    # a quantised float trimap (the datasets') maps 0.5 to the 128 the files hold
    assert torch.equal(encode_trimap(torch.tensor([0.0, 0.5, 1.0]), "scale"),
                       torch.tensor([0, 128, 255]) / 255.0)
    # ours: {0, 0.5, 1}
    assert encode_trimap(torch.tensor([0, 70, 128, 200], dtype=torch.uint8), "quantise").tolist() == [0, 0, 0.5, 1]


@pytest.mark.parametrize("routed", [False, True])
def test_official_clamping_and_truncation(routed):
    from torchvision.transforms import functional as F

    gen = torch.Generator().manual_seed(0)
    alpha = torch.rand(1, 1, 20, 30, generator=gen)
    trimap_u8 = torch.randint(0, 256, (1, 1, 20, 30), generator=gen, dtype=torch.uint8)
    trimap_u8[..., :5, :] = 0
    trimap_u8[..., 5:10, :] = 255
    trimap = encode_trimap(trimap_u8, "scale")
    expected = alpha.clone().flatten(0, 2)
    if routed:  # MEMatte's inference.py
        t = trimap.flatten(0, 2)
        expected[t == 0] = 0
        expected[t == 1] = 1
    expected_u8 = torch.from_numpy(np.asarray(F.to_pil_image(expected)).copy())
    rules = inference_rules("official", routed=routed)
    got = finish_alpha(alpha, trimap, rules)[0, 0]
    assert torch.equal(torch.round(got * 255).to(torch.uint8), expected_u8)
    # truncation, not rounding: 0.999 → 254
    assert float(finish_alpha(torch.full((1, 1, 1, 1), 0.999), torch.full((1, 1, 1, 1), 0.5), rules)) * 255 == pytest.approx(254)


def test_preset_rules_per_kind():
    assert inference_rules("official", routed=True).max_tokens == OFFICIAL_MAX_TOKENS == 18_500
    assert inference_rules("official", routed=False).max_tokens is None
    assert inference_rules("official", routed=True).clamp and not inference_rules("official", routed=False).clamp
    default = inference_rules("default", routed=True)
    assert (default.trimap_encoding, default.padding, default.max_tokens, default.clamp, default.alpha_rounding) == (
        "quantise", "aligned", None, True, "round")
    assert default.winograd and not inference_rules("official", routed=True).winograd
    with pytest.raises(ValueError, match="preset='paper'.*default.*official"):
        inference_rules("paper", routed=True)


# --------------------------------------------------------------------------- the Predictor
@pytest.mark.parametrize("routed", [False, True])
def test_predictor_official_preset_is_the_official_script(make_cfg, routed):
    net = tiny_net(make_cfg, routed)
    image, trimap = sample(40, 64)  # height unaligned, width aligned: the official padding adds 32 to W
    expected = official_script(net, *read_as_official(image, trimap), routed)
    predictor = Predictor(net, tile=None, preset="official")
    got = predictor(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(trimap)).alpha[0, 0]
    got_u8 = torch.round(got * 255).to(torch.uint8).numpy()
    assert np.array_equal(got_u8, expected), np.abs(got_u8.astype(int) - expected).max()
    if routed:
        assert all(net.backbone.blocks[i].max_tokens == 18_500 for i in net.backbone.routed_block_indexes)
    assert not net.decoder.winograd  # direct convolutions, the official code's arithmetic
    assert not net.backbone.winograd
    # tiled decoding with context is exact: at most a level where truncation sits on an edge
    tiled = Predictor(net, tile=32, context=32, preset="official")
    got_tiled = tiled(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(trimap)).alpha[0, 0]
    assert (torch.round(got_tiled * 255) - torch.round(got * 255)).abs().max() <= 1
    # and the default preset is a different computation (quantised trimap, aligned padding)
    ours = Predictor(net, tile=None)(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(trimap)).alpha[0, 0]
    assert (torch.round(ours * 255) - torch.round(got * 255)).abs().max() > 0


def test_predictor_explicit_max_tokens_wins(make_cfg):
    net = tiny_net(make_cfg, routed=True)
    Predictor(net, preset="official", max_tokens=7)
    assert all(net.backbone.blocks[i].max_tokens == 7 for i in net.backbone.routed_block_indexes)


# --------------------------------------------------------------------------- eval.py
def test_eval_official_preset_scores_what_the_official_evaluation_would(make_cfg, tmp_path):
    """eval.py preset=official equals: the official script's saved 8-bit alpha of every test
    image, scored by the DIM metrics."""
    from hydra.utils import instantiate

    from mematte.cli import evaluate

    net = tiny_net(make_cfg, routed=True, seed=3)
    path = export_official(net, tmp_path / "MEMatte_tiny.pth")
    data = ["data.test_set.num_samples=2", "data.test_set.min_size=40", "data.test_set.max_size=72"]
    official = evaluate(make_cfg("eval", [f"ckpt_path={path}", "preset=official", *data]))
    default = evaluate(make_cfg("eval", [f"ckpt_path={path}", *data]))

    cfg = make_cfg("eval", [f"ckpt_path={path}", *data])
    datamodule = instantiate(cfg.data, _convert_="partial")
    datamodule.setup("test")
    metrics = MattingMetrics(region="unknown")
    for batch in datamodule.test_dataloader():
        for i in range(batch["image"].shape[0]):
            # the trimap files hold 0 / 128 / 255 (the dataset quantises them to 0 / 0.5 / 1)
            trimap_u8 = torch.floor(batch["trimap"][i:i + 1] * 255 + 0.5)
            saved = official_script(net, batch["image"][i:i + 1], trimap_u8 / 255, routed=True)
            metrics.update(torch.from_numpy(saved)[None, None].float() / 255, batch["alpha"][i:i + 1],
                           batch["trimap"][i:i + 1])
    expected = {k.split("/")[-1]: float(v) for k, v in metrics.compute().items()}
    for name in ("sad", "mse", "grad", "conn"):
        assert official[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name
    assert any(official[n] != default[n] for n in ("sad", "mse", "grad", "conn"))
