import math

import pytest
import torch

from nerf.compositing import volume_render


def _raw(rgb_raw, sigma):
    return torch.cat([rgb_raw, sigma[..., None]], -1)


def test_zero_density_gives_background():
    z = torch.linspace(2, 6, 8).expand(3, 8)
    raw = _raw(torch.randn(3, 8, 3), torch.full((3, 8), -5.0))  # ReLU clips to sigma = 0
    d = torch.tensor([[0.0, 0.0, -1.0]]).expand(3, 3)
    black = volume_render(raw, z, d)
    assert torch.equal(black["acc"], torch.zeros(3))
    assert torch.equal(black["rgb"], torch.zeros(3, 3))
    assert torch.equal(black["disp"], torch.zeros(3))
    white = volume_render(raw, z, d, white_background=True)
    assert torch.equal(white["rgb"], torch.ones(3, 3))


def test_one_opaque_bin_gives_one_hot_weights():
    z = torch.linspace(2, 6, 8)[None]
    sigma = torch.zeros(1, 8)
    sigma[0, 3] = 1e4
    rgb_raw = torch.zeros(1, 8, 3)
    rgb_raw[0, 3] = torch.tensor([10.0, -10.0, 0.0])
    out = volume_render(_raw(rgb_raw, sigma), z, torch.tensor([[0.0, 0.0, -1.0]]), white_background=True)
    expected_w = torch.zeros(1, 8)
    expected_w[0, 3] = 1.0
    assert torch.allclose(out["weights"], expected_w, atol=1e-6)
    assert torch.allclose(out["depth"], z[:, 3], atol=1e-5)
    assert torch.allclose(out["disp"], 1 / z[:, 3], atol=1e-6)
    assert torch.allclose(out["rgb"], torch.sigmoid(torch.tensor([[10.0, -10.0, 0.0]])), atol=1e-6)


def test_constant_density_matches_closed_form():
    sigma, delta, num = 0.3, 0.25, 12
    z = (2.0 + delta * torch.arange(num, dtype=torch.float64))[None]
    raw = _raw(torch.zeros(1, num, 3, dtype=torch.float64), torch.full((1, num), sigma, dtype=torch.float64))
    d = torch.tensor([[0.0, 0.0, -2.0]], dtype=torch.float64)  # |d| = 2 scales every delta
    w = volume_render(raw, z, d)["weights"][0]
    step = sigma * delta * 2.0
    for k in range(num - 1):
        assert w[k].item() == pytest.approx((1 - math.exp(-step)) * math.exp(-step * k), rel=1e-8)
    # the last sample has delta = 1e10 and absorbs the remaining transmittance
    assert w[-1].item() == pytest.approx(math.exp(-step * (num - 1)), rel=1e-8)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-8)


def test_invariants_on_random_fields():
    torch.manual_seed(0)
    z, _ = torch.sort(torch.rand(50, 32) * 4 + 2, dim=-1)
    raw = torch.randn(50, 32, 4) * 3
    out = volume_render(raw, z, torch.randn(50, 3), noise_std=1.0)
    w = out["weights"]
    assert (w >= 0).all()
    assert (w.sum(-1) <= 1 + 1e-6).all()
    assert torch.allclose(out["acc"], w.sum(-1))
    transmittance = 1 - torch.cumsum(w, -1)
    assert (transmittance[:, 1:] <= transmittance[:, :-1] + 1e-6).all()
    assert (out["rgb"] >= 0).all() and (out["rgb"] <= 1 + 1e-6).all()


def test_density_noise_only_when_requested():
    z = torch.linspace(2, 6, 16).expand(4, 16)
    raw = torch.randn(4, 16, 4)
    d = torch.randn(4, 3)
    a = volume_render(raw, z, d)["rgb"]
    assert torch.equal(a, volume_render(raw, z, d)["rgb"])
    noisy = volume_render(raw, z, d, noise_std=1.0, generator=torch.Generator().manual_seed(0))["rgb"]
    assert not torch.allclose(a, noisy)
