import math

import torch

from nerf.config import RenderConfig
from nerf.models import NeRFModel
from nerf.rays import get_rays, prepare_rays
from nerf.rendering import render_image, render_rays, stride_too_coarse


def _small_models():
    torch.manual_seed(0)
    return (NeRFModel(num_layers=3, hidden_size=32, skip_connect_every=1, hidden_size_dir=16),
            NeRFModel(num_layers=3, hidden_size=32, skip_connect_every=1, hidden_size_dir=16))


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


def test_render_image_through_pixel_centres_renders_the_centre_rays():
    coarse, fine = _small_models()
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]])
    opts = RenderConfig(perturb=False, num_coarse=8, num_fine=8)
    image = render_image(coarse, fine, c2w, 6, 5, 5.0, 2.0, 6.0, False, opts, pixel_offset=0.5)
    rays_o, rays_d = get_rays(6, 5, 5.0, c2w, offset=0.5)
    expected = render_rays(coarse, fine, prepare_rays(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), 2.0, 6.0), opts)
    torch.testing.assert_close(image["rgb"], expected["rgb"].reshape(6, 5, 3))
    corners = render_image(coarse, fine, c2w, 6, 5, 5.0, 2.0, 6.0, False, opts)
    assert not torch.allclose(image["rgb"], corners["rgb"])


def test_a_stride_is_refused_below_4_pixels_a_side_and_the_hint_is_the_largest_that_works():
    for width, height in [(20, 20), (400, 400), (504, 378), (5, 9), (3, 8)]:
        for stride in range(1, 150):
            reason = stride_too_coarse(width, height, stride)
            assert (reason is None) == (min(math.ceil(width / stride), math.ceil(height / stride)) >= 4)
            if reason is not None and "at most" in reason:
                largest = int(reason.split("at most ")[1].split()[0])
                assert stride_too_coarse(width, height, largest) is None
                assert stride_too_coarse(width, height, largest + 1) is not None
    assert "the views themselves are smaller" in stride_too_coarse(3, 8, 1)
