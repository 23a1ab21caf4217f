import math
import torch

from nerf.losses import distortion_loss, ray_distortion_loss, sample_color_loss
from nerf.rays import Rays


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
    dt = torch.full((4, 6), 0.02)
    ones = torch.ones(4, 3)

    def rays(near, far):
        return Rays(ones, ones, ones, torch.full((4,), near), torch.full((4,), far))

    ndc = ray_distortion_loss(weights, t, dt, rays(0.0, 1.0))  # NDC: s = t
    torch.testing.assert_close(ndc, distortion_loss(weights, t, dt))
    # the same samples on rays from 2 to 6 (t = 2 + 4 s, dt x 4): the same loss
    torch.testing.assert_close(ray_distortion_loss(weights, 2.0 + 4.0 * t, 4.0 * dt, rays(2.0, 6.0)), ndc)


def test_background_entropy_by_hand():
    from nerf.losses import background_entropy

    acc = torch.tensor([1.0, 0.0, 0.5, 0.9])
    expected = torch.tensor([0.0, 0.0, math.log(2.0), -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))])
    torch.testing.assert_close(background_entropy(acc), expected, atol=2e-5, rtol=1e-5)  # clamped ends: ~1.5e-5
