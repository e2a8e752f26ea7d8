"""Tests of the ViTMatte training losses on small tensors with hand-computed values."""
from __future__ import annotations

import pytest
import torch

import mematte.losses as losses_module
from mematte.losses import (
    MattingLoss,
    gradient_penalty_loss,
    known_l1_loss,
    laplacian_loss,
    laplacian_pyramid,
    unknown_l1_loss,
)

TERMS = ("unknown_l1", "known_l1", "laplacian", "gradient")


def _random_case(batch: int = 2, height: int = 32, width: int = 40, seed: int = 0):
    """pred, target in [0, 1] and a trimap in {0, 0.5, 1}, float (B, 1, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(batch, 1, height, width, generator=generator)
    target = torch.rand(batch, 1, height, width, generator=generator)
    trimap = torch.randint(0, 3, (batch, 1, height, width), generator=generator).float() / 2
    return pred, target, trimap


def _vertical_edge(height: int, width: int, edge_col: int) -> torch.Tensor:
    """float (1, 1, H, W): 0 left of ``edge_col``, 1 from it on."""
    image = torch.zeros(1, 1, height, width)
    image[..., edge_col:] = 1.0
    return image


def test_perfect_prediction_gives_zero_everywhere() -> None:
    _, target, trimap = _random_case()
    # Keep |∇target| = 0 on U so the gradient penalty part vanishes too.
    target = torch.full_like(target, 0.3)
    output = MattingLoss()(target.clone(), target, trimap)
    assert set(output) == {*TERMS, "loss"}
    for name, value in output.items():
        assert value.item() == 0.0, name


def test_matching_terms_vanish_for_identical_maps() -> None:
    _, target, trimap = _random_case(seed=1)
    assert unknown_l1_loss(target, target, trimap).item() == 0.0
    assert known_l1_loss(target, target, trimap).item() == 0.0
    assert laplacian_loss(target, target).item() == 0.0


def test_region_l1_hand_values() -> None:
    # Image 0: U = {(0,0), (0,1)} errors .5, 0; K errors 1, .25.
    # Image 1: U = all four, errors .1 .2 .3 .4; K empty.
    pred = torch.tensor([[[[0.5, 0.0], [1.0, 0.25]]], [[[0.1, 0.2], [0.3, 0.4]]]])
    target = torch.zeros_like(pred)
    trimap = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    # Masked means pool over the batch: (0.5 + 0 + 0.1 + 0.2 + 0.3 + 0.4) / 6.
    assert unknown_l1_loss(pred, target, trimap).item() == pytest.approx(1.5 / 6)
    assert known_l1_loss(pred, target, trimap).item() == pytest.approx(1.25 / 2)
    # Only image 1: everything unknown.
    assert unknown_l1_loss(pred[1:], target[1:], trimap[1:]).item() == pytest.approx(0.25)
    assert known_l1_loss(pred[1:], target[1:], trimap[1:]).item() == 0.0
    # And no unknown pixel at all.
    known_only = torch.ones_like(trimap)
    assert unknown_l1_loss(pred, target, known_only).item() == 0.0
    assert gradient_penalty_loss(pred, target, known_only).item() == 0.0


def test_masked_mean_matches_vitmatte_formula_at_512() -> None:
    pred, target, trimap = _random_case(batch=2, height=512, width=512, seed=2)
    unknown = (trimap == 0.5).float()
    vitmatte = torch.nn.functional.l1_loss(pred * unknown, target * unknown) * 2 * 512**2 / unknown.sum()
    assert unknown_l1_loss(pred, target, trimap).item() == pytest.approx(vitmatte.item(), rel=1e-5)


def test_laplacian_loss_detects_shifted_edge() -> None:
    target = _vertical_edge(32, 32, 16)
    assert laplacian_loss(target, target.clone()).item() == 0.0
    assert laplacian_loss(_vertical_edge(32, 32, 18), target).item() > 0.0
    # Only band-pass levels count (as in ViTMatte): a constant offset lies in the low-pass
    # residual, so it costs nothing here.
    assert laplacian_loss(target + 0.1, target).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("levels", [1, 3, 5])
def test_laplacian_pyramid_any_size(levels: int) -> None:
    image = torch.rand(2, 1, 67, 45)
    pyramid = laplacian_pyramid(image, levels)
    expected_sizes = [(-(-67 // 2**i), -(-45 // 2**i)) for i in range(levels)]
    assert [tuple(band.shape[-2:]) for band in pyramid] == expected_sizes
    loss = laplacian_loss(image, torch.rand(2, 1, 67, 45), levels)
    assert torch.isfinite(loss) and loss.item() > 0.0


def test_laplacian_bands_of_a_constant_image_are_zero() -> None:
    for band in laplacian_pyramid(torch.full((1, 1, 21, 16), 0.7), 5):
        assert band.abs().max().item() < 1e-6


def test_gradient_loss_hand_values_on_ramp() -> None:
    # target = slope * column; unnormalised Sobel d/dx = (1 + 2 + 1) * 2 * slope = 8 * slope
    # away from the left/right border, d/dy = 0. U = interior columns.
    slope = 2.0**-6  # dyadic values keep every sum exact in float32
    height, width = 8, 12
    target = (torch.arange(width, dtype=torch.float32) * slope).expand(1, 1, height, width).clone()
    trimap = torch.zeros(1, 1, height, width)
    trimap[..., 2:10] = 0.5

    # pred = target + c: gradients match (first two parts 0), penalty = 0.01 * 8 * slope.
    for offset in (0.0, 0.25):
        value = gradient_penalty_loss(target + offset, target, trimap).item()
        assert value == pytest.approx(0.01 * 8 * slope, rel=1e-5)
    # pred = 0: |∂x p − ∂x g| = 8 * slope, no penalty.
    assert gradient_penalty_loss(torch.zeros_like(target), target, trimap).item() == pytest.approx(
        8 * slope, rel=1e-5
    )
    # pred = ramp, target = 0: matching part 8 * slope plus penalty 0.01 * 8 * slope.
    assert gradient_penalty_loss(target, torch.zeros_like(target), trimap).item() == pytest.approx(
        1.01 * 8 * slope, rel=1e-5
    )


def test_matting_loss_is_weighted_sum() -> None:
    pred, target, trimap = _random_case(seed=3)
    weights = {"unknown_l1": 1.0, "known_l1": 0.5, "laplacian": 2.0, "gradient": 0.3}
    output = MattingLoss(**weights, laplacian_levels=4)(pred, target, trimap)
    expected_terms = {
        "unknown_l1": unknown_l1_loss(pred, target, trimap),
        "known_l1": known_l1_loss(pred, target, trimap),
        "laplacian": laplacian_loss(pred, target, 4),
        "gradient": gradient_penalty_loss(pred, target, trimap),
    }
    for name, value in expected_terms.items():
        assert output[name].item() == pytest.approx(value.item(), rel=1e-6)
    expected_total = sum(weights[name] * value for name, value in expected_terms.items())
    assert output["loss"].item() == pytest.approx(expected_total.item(), rel=1e-6)


def test_zero_weight_terms_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("a term with weight 0 was computed")

    monkeypatch.setattr(losses_module, "laplacian_loss", must_not_run)
    monkeypatch.setattr(losses_module, "known_l1_loss", must_not_run)
    pred, target, trimap = _random_case(seed=4)
    output = MattingLoss(known_l1=0.0, laplacian=0.0)(pred, target, trimap)
    assert set(output) == {"unknown_l1", "gradient", "loss"}
    assert output["loss"].item() == pytest.approx((output["unknown_l1"] + output["gradient"]).item())


def test_backward_reaches_pred() -> None:
    pred, target, trimap = _random_case(seed=5, height=35, width=29)
    pred.requires_grad_(True)
    output = MattingLoss()(pred, target, trimap)
    output["loss"].backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_runs_in_float32_under_autocast() -> None:
    pred, target, trimap = _random_case(seed=6)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        output = MattingLoss()(pred.bfloat16(), target, trimap)
    for value in output.values():
        assert value.dtype == torch.float32
    reference = MattingLoss()(pred.bfloat16().float(), target, trimap)
    assert output["loss"].item() == pytest.approx(reference["loss"].item(), rel=1e-6)
