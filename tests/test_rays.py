import torch

from nerf.rays import get_rays, ndc_rays, pixel_directions, prepare_rays


def test_identity_pose_no_half_pixel_offset():
    rays_o, rays_d = get_rays(2, 4, 2.0, torch.eye(4))
    assert rays_o.shape == rays_d.shape == (2, 4, 3)
    # pixel (row j=0, column i=0): ((0 - 2)/2, -(0 - 1)/2, -1)
    assert torch.allclose(rays_d[0, 0], torch.tensor([-1.0, 0.5, -1.0]))
    assert torch.allclose(rays_d[1, 3], torch.tensor([0.5, 0.0, -1.0]))
    assert torch.equal(rays_o, torch.zeros(2, 4, 3))


def test_pixel_centres_shift_every_ray_by_half_a_pixel():
    _, corners = get_rays(2, 4, 2.0, torch.eye(4))
    _, centres = get_rays(2, 4, 2.0, torch.eye(4), offset=0.5)
    # pixel (row j=0, column i=0) through its centre (0.5, 0.5): ((0.5 - 2)/2, -(0.5 - 1)/2, -1)
    assert torch.allclose(centres[0, 0], torch.tensor([-0.75, 0.25, -1.0]))
    torch.testing.assert_close(centres - corners, torch.tensor([0.25, -0.25, 0.0]).expand(2, 4, 3))
    # an even-sized image: the centre of the middle four pixels is the principal point
    middle = centres[0:2, 1:3].mean(dim=(0, 1))
    torch.testing.assert_close(middle, torch.tensor([0.0, 0.0, -1.0]))


def test_rotation_and_translation_applied_and_not_normalised():
    angle = torch.tensor(0.3)
    c, s = torch.cos(angle), torch.sin(angle)
    c2w = torch.tensor([[c, -s, 0.0, 1.0], [s, c, 0.0, 2.0], [0.0, 0.0, 1.0, 3.0]])
    rays_o, rays_d = get_rays(3, 5, 4.0, c2w)
    j, i = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    dirs = pixel_directions(i, j, 3, 5, 4.0)
    assert torch.allclose(rays_d, dirs @ c2w[:3, :3].T, atol=1e-6)
    assert torch.allclose(rays_d[..., 2], -torch.ones(3, 5))  # z-depth parametrisation kept
    assert torch.allclose(rays_o, c2w[:3, 3].expand(3, 5, 3))


def test_ndc_hand_computed():
    o = torch.tensor([[0.5, 0.25, 0.0]])
    d = torch.tensor([[0.1, 0.2, -1.0]])
    o_ndc, d_ndc = ndc_rays(2, 2, 1.0, 1.0, o, d)
    assert torch.allclose(o_ndc, torch.tensor([[0.6, 0.45, -1.0]]))
    assert torch.allclose(d_ndc, torch.tensor([[-0.5, -0.25, 2.0]]))


def test_ndc_rays_pass_through_projected_points():
    torch.manual_seed(1)
    height, width, focal, near = 30, 40, 35.0, 1.0
    o = torch.randn(16, 3) * 0.2
    d = torch.cat([torch.randn(16, 2) * 0.3, -torch.ones(16, 1)], -1)
    o_ndc, d_ndc = ndc_rays(height, width, focal, near, o, d)
    for depth in (1.5, 3.0, 40.0):
        s = (depth + o[:, 2]) / -d[:, 2]
        p = o + s[:, None] * d  # world point at z = -depth
        projected = torch.stack([-(2 * focal / width) * p[:, 0] / p[:, 2], -(2 * focal / height) * p[:, 1] / p[:, 2],
                                 1 + 2 * near / p[:, 2]], -1)
        t = 1 + near / p[:, 2]  # NDC parameter of that point
        assert torch.allclose(o_ndc + t[:, None] * d_ndc, projected, atol=1e-5)
        assert ((t >= 0) & (t <= 1)).all()


def test_prepare_rays_ndc_keeps_world_viewdirs():
    o = torch.zeros(3, 3)
    d = torch.tensor([[0.1, 0.0, -1.0], [0.0, 0.2, -1.0], [0.0, 0.0, -2.0]])
    rays = prepare_rays(o, d, 0.0, 1.0, ndc=(10, 10, 10.0))
    assert torch.allclose(rays.viewdirs, d / d.norm(dim=-1, keepdim=True))
    assert torch.allclose(rays.origins[:, 2], torch.full((3,), -1.0))
    assert torch.equal(rays.near, torch.zeros(3)) and torch.equal(rays.far, torch.ones(3))
