import os

import pytest
import torch
import torch.nn.functional as F

from nerf.checkpoint import load_model_state
from nerf.config import ConfigError, ModelConfig, VoxelGridConfig, load_config
from nerf.models import build_model
from nerf.tensor_vm import MODES, TensorVMModel
from nerf.voxel_grid import grow, lattice_vertices, multilinear

BOX = torch.tensor([-1.0, -2.0, -0.5, 1.0, 1.0, 2.0])


def _points(n, box=BOX, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * (box[3:] - box[:3]) + box[:3]


def _model(resolution=(3, 4, 5), density=2, appearance=3, features=4):
    return TensorVMModel(BOX, resolution, density, appearance, feature_dim=features, hidden_size=8, num_layers=1)


def test_lookups_at_vertices_are_the_sums_of_plane_times_line_products():
    model = _model()
    res = model.resolution
    assert res == (3, 4, 5)
    vertices = lattice_vertices(res, BOX, (0, 1, 2))  # [X Y Z, 3], row-major
    ijk = torch.stack(torch.meshgrid(*[torch.arange(n) for n in res], indexing="ij"), dim=-1).reshape(-1, 3)

    def products(planes, lines):  # [N, 3 T] written out from the definition
        return torch.cat([planes[k][ijk[:, a], ijk[:, b]] * lines[k][ijk[:, c]] for k, (a, b, c) in enumerate(MODES)], -1)

    with torch.no_grad():
        density, inside = model.raw_density(vertices)
        features = model.features(vertices)
        expected_density = products(model.density_planes, model.density_lines).sum(dim=-1)
        expected_features = products(model.appearance_planes, model.appearance_lines) @ model.basis.weight.T
    assert inside.all()
    torch.testing.assert_close(density, expected_density, atol=1e-6, rtol=0)
    torch.testing.assert_close(features, expected_features, atol=1e-6, rtol=0)


def _set_separable(model):
    """Density factors of one component: M_xy = x + 2 y, v_z = z + 1; the other modes zero. D = (x + 2y)(z + 1)
    everywhere in the box (bilinear and linear interpolation reproduce these affine factors)."""
    with torch.no_grad():
        for factors in (model.density_planes, model.density_lines):
            for f in factors:
                f.zero_()
        x, y, z = (lattice_vertices((n,), model.aabb, (a,))[:, 0] for a, n in enumerate(model.resolution))
        model.density_planes[0][..., 0] = x[:, None] + 2 * y[None, :]
        model.density_lines[0][:, 0] = z + 1


def test_a_separable_density_is_exact_between_vertices_and_survives_resampling():
    model = _model(density=1)
    _set_separable(model)
    p = torch.cat((_points(100), torch.tensor([[5.0, 0.0, 0.0]])))
    expected = (p[:, 0] + 2 * p[:, 1]) * (p[:, 2] + 1)
    d, inside = model.raw_density(p)
    assert inside[:-1].all() and not inside[-1]
    torch.testing.assert_close(d[:-1], expected[:-1], atol=1e-5, rtol=0)
    sigma = model.density(p)
    assert sigma[-1] == 0 and (sigma[:-1] > 0).all()
    # finer factors over a smaller box: the same function where the new box is
    small = torch.tensor([-0.5, -1.0, 0.0, 0.5, 0.5, 1.5])
    model.resample((7, 9, 11), small)
    assert model.resolution == (7, 9, 11) and torch.equal(model.aabb, small)
    assert model.density_planes[1].shape == (7, 11, 1) and model.appearance_lines[2].shape == (7, 3)
    q = _points(100, small, seed=1)
    torch.testing.assert_close(model.raw_density(q)[0], (q[:, 0] + 2 * q[:, 1]) * (q[:, 2] + 1), atol=1e-5, rtol=0)


def test_resampling_keeps_every_mode_at_the_new_vertices():
    """A new factor vertex holds the old factor at that point, so at the new lattice's vertices every product,
    and so the density and the features, are the old field's, for any factors (a swapped axis would not be)."""
    model = _model(resolution=(4, 5, 6), density=2, appearance=3)
    small = torch.tensor([-0.7, -1.5, -0.2, 0.9, 0.8, 1.9])
    new_res = (6, 7, 5)
    vertices = lattice_vertices(new_res, small, (0, 1, 2))  # [N, 3]
    with torch.no_grad():
        before = model.raw_density(vertices)[0], model.features(vertices)
        model.resample(new_res, small)
        after = model.raw_density(vertices)[0], model.features(vertices)
    assert model.resolution == new_res
    for old, new in zip(before, after):
        torch.testing.assert_close(new, old, atol=1e-6, rtol=1e-5)


def test_gradients_reach_four_plane_and_two_line_vertices_per_mode():
    model = _model(resolution=(5, 6, 7))
    p = torch.tensor([[0.1, -0.3, 0.7]])
    d, _ = model.raw_density(p)
    d.sum().backward()
    for k, (a, b, c) in enumerate(MODES):
        plane, line = model.density_planes[k].grad, model.density_lines[k].grad
        assert (plane.abs().sum(dim=-1) > 0).sum() == 4 and (line.abs().sum(dim=-1) > 0).sum() == 2
    assert model.appearance_planes[0].grad is None  # the density does not read the appearance
    # the same gradients as autograd through a plain (functional) gather of plain tensors
    planes = [f.detach().clone().requires_grad_() for f in model.density_planes]
    lines = [f.detach().clone().requires_grad_() for f in model.density_lines]
    lo, hi = BOX[:3], BOX[3:]
    reference = sum((multilinear(planes[k], lo[[a, b]], hi[[a, b]], p[:, [a, b]])[0]
                     * multilinear(lines[k], lo[c:c + 1], hi[c:c + 1], p[:, c:c + 1])[0]).sum(dim=-1)
                    for k, (a, b, c) in enumerate(MODES))
    torch.testing.assert_close(reference, d)
    reference.sum().backward()
    for mine, theirs in zip((*model.density_planes, *model.density_lines), (*planes, *lines)):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_built_from_the_config_grown_and_reloaded():
    v = VoxelGridConfig(representation="vm", num_voxels=4000, num_voxels_start=500, grow_steps=[5], feature_dim=5,
                        density_components=3, appearance_components=4, hidden_size=8, num_layers=1,
                        density_unit="voxel")
    model = build_model(ModelConfig(type="VoxelGridModel"), v, BOX)
    assert isinstance(model, TensorVMModel) and model.basis.weight.shape == (5, 12)
    # the fresh field is the fog of alpha_init per marching step, up to the factors' small random start
    sigma = model.density(_points(200))
    alpha = 1 - torch.exp(-sigma * model.marching_step)
    assert alpha.mean().item() == pytest.approx(v.alpha_init, rel=0.5)
    grow(model, v.grow_steps, v.num_voxels_start, v.num_voxels, 5, shrink_to=torch.tensor([-0.5, -1, 0, 0.5, 0, 1.0]))
    fresh = build_model(ModelConfig(type="VoxelGridModel"), v)  # other shapes and box until loaded
    assert fresh.resolution != model.resolution
    load_model_state(fresh, model.state_dict(), "mem.ckpt", "coarse model")
    p, d = _points(64, model.aabb), F.normalize(_points(64, seed=2), dim=-1)
    assert torch.equal(fresh(p, d), model(p, d))
    # 3 modes x (plane + line) x (density + appearance) trained at grid_lr; basis + colour MLP at optimizer.lr
    assert len(model.grid_parameters()) == 12 and len(model.network_parameters()) == 1 + 4
    assert len(model.grid_parameters()) + len(model.network_parameters()) == len(list(model.parameters()))


def test_total_variation_of_the_density_factors():
    model = _model(density=1)
    _set_separable(model)
    # M_xy = x + 2y: steps of dx = 1 along x (3 vertices over 2) and 2 dy = 2 along y (4 over 3); v_z = z + 1:
    # steps of dz = 0.625 (5 over 2.5); the other factors are zero
    expected = 1.0 ** 2 + 2.0 ** 2 + 0.625 ** 2
    assert model.total_variation().item() == pytest.approx(expected, rel=1e-5)
    assert model.feature_total_variation().item() != pytest.approx(expected)  # the appearance factors are others
    with torch.no_grad():
        for mine, density in zip((*model.appearance_planes, *model.appearance_lines),
                                 (*model.density_planes, *model.density_lines)):
            mine.zero_()
            mine[..., :1] = density  # the density's factors in the first component, zeros elsewhere
    components = model.appearance_planes[0].shape[-1]
    assert model.feature_total_variation().item() == pytest.approx(expected / components, rel=1e-5)


def test_config_keys():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "lego_fast.yml")
    assert load_config(path, ["voxel_grid.representation=vm"]).voxel_grid.representation == "vm"
    with pytest.raises(ConfigError, match="voxel_grid.representation"):
        load_config(path, ["voxel_grid.representation=hash"])
    with pytest.raises(ConfigError, match="voxel_grid.density_components"):
        load_config(path, ["voxel_grid.density_components=8"])  # ignored by a dense grid
    with pytest.raises(ConfigError, match="voxel_grid.appearance_components"):
        load_config(path, ["voxel_grid.representation=vm", "voxel_grid.appearance_components=0"])
