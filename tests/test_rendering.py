import math

import pytest
import torch

from nerf.config import RenderConfig
from nerf.models import NeRFModel
from nerf.rendering import (Rays, distortion_loss, prepare_rays, ray_distortion_loss, render_image, render_rays,
                            run_network, sample_color_loss, volume_render)


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


def _small_models():
    torch.manual_seed(0)
    return (NeRFModel(num_layers=3, hidden_size=32, skip_connect_every=1, hidden_size_dir=16),
            NeRFModel(num_layers=3, hidden_size=32, skip_connect_every=1, hidden_size_dir=16))


def test_run_network_chunking_does_not_change_results():
    coarse, _ = _small_models()
    points, dirs = torch.randn(10, 7, 3), torch.randn(10, 3)
    assert torch.allclose(run_network(coarse, points, dirs, 5), run_network(coarse, points, dirs, 10_000),
                          atol=1e-6)


def test_render_rays_outputs_and_eval_determinism():
    coarse, fine = _small_models()
    rays = prepare_rays(torch.zeros(6, 3) + torch.tensor([0.0, 0.0, 4.0]), torch.randn(6, 3) * 0.1
                        + torch.tensor([0.0, 0.0, -1.0]), 2.0, 6.0)
    opts = RenderConfig(perturb=False, num_coarse=16, num_fine=8, radiance_field_noise_std=0.0)
    out = render_rays(coarse, fine, rays, opts)
    assert out["rgb"].shape == (6, 3) and out["rgb0"].shape == (6, 3)
    assert out["weights"].shape == (6, 24)
    assert out["z_std"].shape == (6,)
    assert torch.equal(out["rgb"], render_rays(coarse, fine, rays, opts)["rgb"])
    assert torch.allclose(rays.viewdirs.norm(dim=-1), torch.ones(6))
    coarse_only = render_rays(coarse, None, rays, RenderConfig(perturb=False, num_coarse=16, num_fine=0))
    assert torch.equal(coarse_only["rgb"], out["rgb0"])


def test_render_image_chunk_size_is_only_a_memory_knob():
    coarse, fine = _small_models()
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]])
    small = render_image(coarse, fine, c2w, 6, 5, 5.0, 2.0, 6.0, False,
                         RenderConfig(perturb=False, num_coarse=8, num_fine=8, chunksize=7))
    large = render_image(coarse, fine, c2w, 6, 5, 5.0, 2.0, 6.0, False,
                         RenderConfig(perturb=False, num_coarse=8, num_fine=8, chunksize=1000))
    assert small["rgb"].shape == (6, 5, 3) and small["depth"].shape == (6, 5)
    for key in ("rgb", "depth", "disp", "acc"):
        assert torch.allclose(small[key], large[key], atol=1e-6)


def test_prepare_rays_ndc_keeps_world_viewdirs():
    o = torch.zeros(3, 3)
    d = torch.tensor([[0.1, 0.0, -1.0], [0.0, 0.2, -1.0], [0.0, 0.0, -2.0]])
    rays = prepare_rays(o, d, 0.0, 1.0, ndc=(10, 10, 10.0))
    assert torch.allclose(rays.viewdirs, d / d.norm(dim=-1, keepdim=True))
    assert torch.allclose(rays.origins[:, 2], torch.full((3,), -1.0))
    assert torch.equal(rays.near, torch.zeros(3)) and torch.equal(rays.far, torch.ones(3))


def test_distortion_loss_matches_the_double_sum():
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(6, 9, generator=generator)
    weights[:, -2:] = 0.0  # padding carries no weight, and its positions are arbitrary (as after compact)
    s = torch.sort(torch.rand(6, 9, generator=generator), dim=-1).values
    s[:, -2:] = torch.rand(6, 2, generator=generator)
    ds = torch.full((6, 1), 0.05)
    brute = torch.stack([
        sum(weights[r, i] * weights[r, j] * abs(s[r, i] - s[r, j]) for i in range(9) for j in range(9))
        + (weights[r].square() * 0.05).sum() / 3.0 for r in range(6)])
    assert torch.allclose(distortion_loss(weights, s, ds), brute, atol=1e-6)


def test_distortion_loss_by_hand_and_prefers_one_concentrated_interval():
    # two samples of weight 1/2, 0.5 apart, intervals 0.1: 2 * 1/4 * 0.5 + 1/3 * 2 * 1/4 * 0.1
    two = distortion_loss(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.2, 0.7]]), torch.tensor([[0.1]]))
    assert torch.allclose(two, torch.tensor([0.25 + 0.05 / 3.0]))
    one = distortion_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.2, 0.7]]), torch.tensor([[0.1]]))
    assert torch.allclose(one, torch.tensor([0.1 / 3.0]))  # the same total weight in one interval costs less


def test_sample_color_loss_by_hand_and_only_trains_colours():
    weights = torch.tensor([[0.25, 0.75]], requires_grad=True)
    sample_rgb = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 0.0]])
    loss = sample_color_loss(weights, sample_rgb, target)
    assert torch.allclose(loss, torch.tensor([0.25]))  # 0.25 * 1 + 0.75 * 0
    loss.sum().backward()
    assert weights.grad is None  # the weights are detached: only the colours move
    assert torch.allclose(sample_rgb.grad, torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]]))


def test_ray_distortion_loss_normalises_the_ray_distance_to_near_far():
    generator = torch.Generator().manual_seed(1)
    weights = torch.rand(4, 6, generator=generator)
    t = torch.sort(torch.rand(4, 6, generator=generator), dim=-1).values
    dt = torch.full((4,), 0.02)
    ones = torch.ones(4, 3)

    def rays(near, far):
        return Rays(ones, ones, ones, torch.full((4,), near), torch.full((4,), far))

    ndc = ray_distortion_loss(weights, t, dt, rays(0.0, 1.0))  # NDC: s = t
    torch.testing.assert_close(ndc, distortion_loss(weights, t, dt[:, None]))
    # the same samples on rays from 2 to 6 (t = 2 + 4 s, dt x 4): the same loss
    torch.testing.assert_close(ray_distortion_loss(weights, 2.0 + 4.0 * t, 4.0 * dt, rays(2.0, 6.0)), ndc)
