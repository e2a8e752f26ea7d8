"""ViTMatte net: shapes, padding, exact attention variants, official key layout, optimiser groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mematte.models.attention import Attention, get_rel_pos
from mematte.models.decoder import DetailCapture
from mematte.models.matting_net import MattingNet, clamp_to_trimap, pad_to_multiple
from mematte.models.vit import ResBottleneck, ViT, window_partition, window_unpartition
from mematte.optim import param_groups, warmup_multistep_factor


def tiny_net(attn_impl: str = "sdpa", **vit_kw) -> MattingNet:
    vit = ViT(embed_dim=96, num_heads=3, attn_impl=attn_impl, **vit_kw)
    return MattingNet(vit, DetailCapture(in_chans=96, convstream_out=(8, 16, 32), fusion_out=(32, 16, 8, 8)))


def random_rel_pos(net: MattingNet) -> None:
    """Non-zero rel-pos tables so that the bias actually matters in comparisons."""
    torch.manual_seed(1)
    for blk in net.backbone.blocks:
        blk.attn.init_rel_pos(std=0.5)


def test_pad_only_sides_that_need_it():
    x = torch.zeros(1, 4, 64, 70)
    assert pad_to_multiple(x, 32).shape[-2:] == (64, 96)  # 64 stays 64 (the public code makes it 96)
    assert pad_to_multiple(torch.zeros(1, 4, 64, 64), 32).shape[-2:] == (64, 64)
    assert pad_to_multiple(torch.zeros(1, 4, 33, 1), 32).shape[-2:] == (64, 32)


@pytest.mark.parametrize("size", [(64, 64), (70, 45), (97, 130)])
def test_any_size_in_any_size_out(size):
    net = tiny_net().eval()
    img = torch.rand(2, 3, *size)
    tri = torch.randint(0, 3, (2, 1, *size)).float() / 2
    with torch.no_grad():
        out = net(img, tri)
    assert out.alpha.shape == (2, 1, *size)
    assert out.alpha.min() >= 0 and out.alpha.max() <= 1
    hp, wp = (-(-size[0] // 32) * 32, -(-size[1] // 32) * 32)
    assert out.features.shape == (2, 96, hp // 16, wp // 16)
    assert out.routing == []


def test_padding_does_not_leak_into_valid_region_shape_mismatch_raises():
    net = tiny_net().eval()
    with pytest.raises(ValueError, match="differ in size"):
        net(torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 33))


def test_attention_module_impls_agree_and_gradients_match():
    torch.manual_seed(0)
    a = Attention(48, num_heads=3, use_rel_pos=True, rel_pos_grid=8, attn_impl="sdpa")
    a.init_rel_pos(std=0.5)
    b = Attention(48, num_heads=3, use_rel_pos=True, rel_pos_grid=8, attn_impl="naive")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, 11, 48)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(a.rel_pos_h.grad, b.rel_pos_h.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.qkv.weight.grad, b.qkv.weight.grad, atol=1e-4, rtol=1e-4)


def test_whole_net_sdpa_equals_naive():
    a = tiny_net("sdpa")
    random_rel_pos(a)
    b = tiny_net("naive")
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    img, tri = torch.rand(1, 3, 100, 75), torch.randint(0, 3, (1, 1, 100, 75)).float() / 2
    with torch.no_grad():
        torch.testing.assert_close(a(img, tri).alpha, b(img, tri).alpha, atol=1e-5, rtol=1e-4)


def test_get_rel_pos_matches_definition():
    table = torch.arange(7, dtype=torch.float32)[:, None]  # (2·4−1, 1): value = index
    r = get_rel_pos(4, 4, table)[..., 0]
    # entry (i, j) is table[i − j + 3]
    expected = torch.tensor([[i - j + 3 for j in range(4)] for i in range(4)], dtype=torch.float32)
    torch.testing.assert_close(r, expected)


def test_window_partition_roundtrip_with_padding():
    x = torch.randn(2, 17, 30, 5)
    windows, padded = window_partition(x, 14)
    assert windows.shape == (2 * 2 * 3, 14, 14, 5) and padded == (28, 42)
    torch.testing.assert_close(window_unpartition(windows, 14, padded, (17, 30)), x)


def test_residual_block_starts_as_identity():
    blk = ResBottleneck(32)
    x = torch.randn(2, 32, 6, 7)
    torch.testing.assert_close(blk(x), x)


def test_abs_pos_drops_class_slot_and_resizes():
    vit = ViT(embed_dim=48, num_heads=3)
    assert vit.pos_embed.shape == (1, 197, 48)
    same = vit.abs_pos((14, 14))
    torch.testing.assert_close(same.reshape(1, 196, 48), vit.pos_embed[:, 1:])
    assert vit.abs_pos((6, 9)).shape == (1, 6, 9, 48)
    # detectron2's get_abs_pos: bicubic, no antialias
    grid = vit.pos_embed[:, 1:].reshape(1, 14, 14, 48).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(6, 9), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(vit.abs_pos((6, 9)), ref)


def test_official_key_layout_and_table_sizes():
    net = MattingNet(ViT(embed_dim=384, num_heads=6), DetailCapture(in_chans=384))
    sd = net.state_dict()
    for key in [
        "backbone.patch_embed.proj.weight",
        "backbone.pos_embed",
        "backbone.blocks.0.norm1.weight",
        "backbone.blocks.0.attn.qkv.weight",
        "backbone.blocks.0.attn.proj.bias",
        "backbone.blocks.0.mlp.fc1.weight",
        "backbone.blocks.0.mlp.fc2.weight",
        "backbone.blocks.2.residual.conv1.weight",
        "backbone.blocks.2.residual.norm3.bias",
        "decoder.convstream.convs.0.conv.weight",
        "decoder.convstream.convs.2.bn.running_mean",
        "decoder.fusion_blks.3.conv.conv.weight",
        "decoder.matting_head.matting_convs.0.weight",
        "decoder.matting_head.matting_convs.1.weight",
        "decoder.matting_head.matting_convs.3.weight",
    ]:
        assert key in sd, key
    assert sd["backbone.patch_embed.proj.weight"].shape == (384, 4, 16, 16)
    assert sd["backbone.pos_embed"].shape == (1, 197, 384)
    assert sd["backbone.blocks.0.attn.rel_pos_h"].shape == (27, 64)
    assert sd["backbone.blocks.2.attn.rel_pos_h"].shape == (63, 64)
    assert "backbone.blocks.1.residual.conv1.weight" not in sd
    assert sd["decoder.fusion_blks.0.conv.conv.weight"].shape == (256, 384 + 192, 3, 3)
    # ViTMatte-S has ~25M parameters
    assert 24e6 < sum(p.numel() for p in net.parameters()) < 27e6


def test_clamp_to_trimap():
    alpha = torch.full((1, 1, 1, 3), 0.3)
    tri = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    assert clamp_to_trimap(alpha, tri).flatten().tolist() == pytest.approx([0.0, 0.3, 1.0])


def test_param_groups_layer_decay_and_no_decay():
    net = tiny_net()
    groups = param_groups(net, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(net.named_parameters())
    depth = net.backbone.depth
    assert by_param[id(named["backbone.patch_embed.proj.weight"])]["lr"] == pytest.approx(0.5 ** (depth + 1))
    assert by_param[id(named["backbone.blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(0.5**depth)
    assert by_param[id(named["backbone.blocks.11.mlp.fc1.weight"])]["lr"] == pytest.approx(0.5)
    assert by_param[id(named["backbone.blocks.2.residual.conv1.weight"])]["lr"] == pytest.approx(1.0)
    assert by_param[id(named["decoder.fusion_blks.0.conv.conv.weight"])]["lr"] == pytest.approx(1.0)
    assert by_param[id(named["backbone.pos_embed"])]["weight_decay"] == 0.0
    assert by_param[id(named["backbone.blocks.3.norm1.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["backbone.blocks.2.residual.norm1.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["decoder.convstream.convs.0.bn.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["backbone.blocks.3.attn.qkv.weight"])]["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(named)
    # names label the logged learning rates (lr-AdamW/<name>), one per group
    assert by_param[id(named["backbone.blocks.11.mlp.fc1.weight"])]["name"] == "block11"
    assert by_param[id(named["backbone.patch_embed.proj.weight"])]["name"] == "embed"
    assert by_param[id(named["backbone.pos_embed"])]["name"] == "embed_no_decay"
    assert by_param[id(named["decoder.fusion_blks.0.conv.conv.weight"])]["name"] == "head"
    assert len({g["name"] for g in groups}) == len(groups)
    assert {g["name"] for g in param_groups(net, lr=1.0, weight_decay=0.1)} == {"all", "all_no_decay"}


def test_warmup_multistep_schedule():
    f = lambda s: warmup_multistep_factor(s, 1000, 100, 0.001, (0.9, 0.96), (1.0, 0.1, 0.05))  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(50) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(100) == 1.0 and f(899) == 1.0
    assert f(900) == pytest.approx(0.1) and f(960) == pytest.approx(0.05)


def test_bad_attention_impl_is_rejected():
    with pytest.raises(ValueError, match="attn_impl"):
        ViT(embed_dim=48, num_heads=3, attn_impl="flash3")
