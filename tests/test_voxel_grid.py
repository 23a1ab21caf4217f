import itertools
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
import yaml

import eval_nerf
import train_nerf
from nerf.checkpoint import CheckpointError, load_checkpoint, load_model_state
from nerf.config import ConfigError, RenderConfig, VoxelGridConfig, load_config
from nerf.datasets import load_scene
from nerf.datasets.demo import generate_demo_scene
from nerf.models import build_model
from nerf.occupancy import OccupancyGrid, OccupancySampler, occupancy_samples
from nerf.optimizer import MaskedAdam
from nerf.rendering import render_samples
from nerf.config import OccupancyConfig
from nerf.rays import prepare_rays
from nerf.voxel_grid import (VoxelGridModel, density_shift, grid_shape, grow, grown_box, lattice_vertices, multilinear,
                             total_variation, trilinear, voxels_after_growth)

BOX = torch.tensor([-1.0, -2.0, -0.5, 1.0, 1.0, 2.0])


def _points(n, box=BOX, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * (box[3:] - box[:3]) + box[:3]


def _brute_force(values, box, p):
    """The trilinear formula written out per point and corner."""
    res = torch.tensor(values.shape[:3])
    u = ((p - box[:3]) / (box[3:] - box[:3]) * (res - 1)).tolist()
    out = torch.zeros(values.shape[3:], dtype=torch.float64)
    base = [min(int(u[a] // 1), int(res[a]) - 2) for a in range(3)]
    for corner in itertools.product((0, 1), repeat=3):
        w = 1.0
        for a in range(3):
            f = u[a] - base[a]
            w *= f if corner[a] else 1.0 - f
        out += w * values[base[0] + corner[0], base[1] + corner[1], base[2] + corner[2]].double()
    return out


def test_trilinear_matches_brute_force_and_grid_sample():
    values = torch.randn(5, 6, 7, 4)
    p = _points(50)
    out, inside = trilinear(values, BOX, p)
    assert inside.all()
    for k in range(0, 50, 7):
        torch.testing.assert_close(out[k].double(), _brute_force(values, BOX, p[k]), atol=1e-5, rtol=0)
    # the same lattice convention as grid_sample(align_corners=True) on [C, Z, Y, X]
    grid = ((p - BOX[:3]) / (BOX[3:] - BOX[:3]) * 2 - 1)[None, None, None]  # [1, 1, 1, P, 3] as (x, y, z)
    ref = F.grid_sample(values.permute(3, 2, 1, 0)[None], grid, align_corners=True)[0, :, 0, 0].T
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    scalar, _ = trilinear(values[..., 0], BOX, p)
    torch.testing.assert_close(scalar, out[:, 0])


def test_multilinear_on_lines_and_planes_matches_interpolation_and_grid_sample():
    line, lo, hi = torch.randn(7, 3), torch.tensor([-1.0]), torch.tensor([2.0])
    x = torch.cat((torch.rand(40, 1) * 3 - 1, torch.tensor([[-1.0], [2.0], [3.0]])))
    out, inside = multilinear(line, lo, hi, x)
    assert inside[:-1].all() and not inside[-1]
    nodes = torch.linspace(-1.0, 2.0, 7)
    for channel in range(3):  # np.interp: piecewise linear through the nodes, clamped beyond them
        expected = np.interp(x[:, 0].numpy(), nodes.numpy(), line[:, channel].numpy())
        torch.testing.assert_close(out[:, channel], torch.from_numpy(expected).float(), atol=1e-5, rtol=0)
    plane, lo, hi = torch.randn(5, 6, 2), BOX[:2], BOX[3:5]
    p = _points(30)[:, :2]
    out, _ = multilinear(plane, lo, hi, p)
    grid = ((p - lo) / (hi - lo) * 2 - 1)[None, None]  # [1, 1, P, 2] as (axis 0, axis 1) = (W, H)
    ref = F.grid_sample(plane.permute(2, 1, 0)[None], grid, align_corners=True)[0, :, 0].T
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def _multilinear_written_out(values, lo, hi, points):
    """The interpolation with every corner's index and weight spelled out ([P, Q, A] tensors)."""
    ndim = points.shape[-1]
    res = torch.tensor(values.shape[:ndim])
    corners = torch.tensor(list(itertools.product((0, 1), repeat=ndim)))  # [Q, A]
    u = (points - lo) / (hi - lo) * (res - 1)
    u = torch.minimum(u.clamp(min=0), (res - 1).to(u.dtype))
    base = torch.minimum(u.floor().long(), res - 2)
    frac = u - base
    index = base[:, None, :] + corners  # [P, Q, A]
    flat = index[..., 0]
    for axis in range(1, ndim):
        flat = flat * res[axis] + index[..., axis]
    w = torch.where(corners.bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(dim=-1)  # [P, Q]
    gathered = values.reshape(-1, *values.shape[ndim:])[flat]  # [P, Q(, C)]
    return (gathered * (w[..., None] if values.dim() > ndim else w)).sum(dim=1)


@pytest.mark.parametrize("shape", [(9,), (6, 7), (5, 6, 7), (5, 6, 7, 4)])
def test_multilinear_equals_the_written_out_formula(shape):
    """Values equal the formula with all Q corners' indices and weights built explicitly (to rounding: the
    fused kernel adds the Q products in its own order), on and off the faces; the grid gradients (added into
    .grad by the fused lookup's backward) equal the formula's bit for bit (its advanced-indexing backward
    made deterministic: on the CPU it adds in a varying order with more than one thread); the lookup without
    gradients (rendering) gives the values of the lookup in training bit for bit."""
    ndim = min(len(shape), 3)
    generator = torch.Generator().manual_seed(len(shape))
    values = nn.Parameter(torch.randn(shape, generator=generator))
    lo, hi = -torch.rand(ndim, generator=generator), torch.rand(ndim, generator=generator) + 0.5
    points = lo - 0.2 + torch.rand(2000, ndim, generator=generator) * (hi - lo + 0.4)
    points[:20], points[20:40] = lo, hi
    out, _ = multilinear(values, lo, hi, points)
    upstream = torch.randn(out.shape, generator=generator)
    (out * upstream).sum().backward()
    grad, values.grad = values.grad.clone(), None
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        reference = _multilinear_written_out(values, lo, hi, points)
        (reference * upstream).sum().backward()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(out, reference.detach(), rtol=4 * eps, atol=4 * eps)
    assert torch.equal(grad, values.grad)
    with torch.no_grad():
        assert torch.equal(multilinear(values, lo, hi, points)[0], out.detach())


def test_multilinear_gradients_of_the_points_and_of_a_computed_lattice():
    """Points that need a gradient and a lattice computed from a parameter take autograd's path: both
    gradients equal those of the written-out formula."""
    generator = torch.Generator().manual_seed(7)
    source = nn.Parameter(torch.randn(5, 6, 7, 3, generator=generator, dtype=torch.float64))
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    points = (torch.rand(300, 3, generator=generator, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    upstream = torch.randn(300, 3, generator=generator, dtype=torch.float64)
    grads = []
    for interpolate in (lambda v, p: multilinear(v, lo, hi, p)[0], lambda v, p: _multilinear_written_out(v, lo, hi, p)):
        (interpolate(2.0 * source, points) * upstream).sum().backward()
        grads.append((source.grad.clone(), points.grad.clone()))
        source.grad, points.grad = None, None
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)
    assert grads[0][1].abs().sum() > 0


def test_a_grid_parameter_at_points_that_need_a_gradient_is_flagged_for_masked_adam():
    """The autograd path for points that need a gradient still flags the rows it reaches, so masked Adam
    updates exactly the rows whose gradient is non-zero."""
    grid = nn.Parameter(torch.randn(4, 5, 6, 2, generator=torch.Generator().manual_seed(3)))
    before = grid.detach().clone()
    optimizer = MaskedAdam([{"params": [grid], "masked_rows": [120]}], lr=0.1)
    points = _points(10).requires_grad_()
    out, _ = trilinear(grid, BOX, points)
    (out * torch.tensor([1.0, -2.0])).sum().backward()
    reached = grid.grad.reshape(120, 2).abs().sum(dim=-1) > 0
    assert reached.sum() >= 8 and torch.equal(grid.gradient_rows, reached)
    assert points.grad.abs().sum() > 0
    optimizer.step()
    assert torch.equal((grid.detach() - before).reshape(120, 2).abs().sum(dim=-1) > 0, reached)


def test_trilinear_is_exact_at_vertices_and_on_linear_functions():
    res = (4, 5, 6)
    axes = [torch.linspace(float(BOX[a]), float(BOX[a + 3]), res[a]) for a in range(3)]
    vertices = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [X, Y, Z, 3]
    linear = vertices @ torch.tensor([0.5, -2.0, 3.0]) + 1.0  # trilinear reproduces affine functions
    out, _ = trilinear(linear, BOX, vertices.reshape(-1, 3))
    torch.testing.assert_close(out, linear.reshape(-1), atol=1e-5, rtol=0)
    p = _points(100)
    out, _ = trilinear(linear, BOX, p)
    torch.testing.assert_close(out, p @ torch.tensor([0.5, -2.0, 3.0]) + 1.0, atol=1e-5, rtol=0)


def test_corner_indices_stay_in_range_on_and_outside_the_box():
    values = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    corners = torch.tensor([[BOX[0], BOX[1], BOX[2]], [BOX[3], BOX[4], BOX[5]]])
    far = torch.tensor([[-9.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    out, inside = trilinear(values, BOX, torch.cat((corners, far)))
    assert inside.tolist() == [True, True, False, False]
    assert out[0] == values[0, 0, 0] and out[1] == values[-1, -1, -1]  # the max face is reached, not overrun
    assert out[3] == values[-1, -1, -1]  # clamped onto the box


def test_gradients_reach_exactly_the_eight_corner_vertices():
    values = torch.zeros(5, 6, 7, 3, requires_grad=True)
    p = torch.tensor([[0.1, -0.3, 0.7]])
    out, _ = trilinear(values, BOX, p)
    out.sum().backward()
    touched = values.grad.abs().sum(dim=-1) > 0
    assert touched.sum() == 8
    torch.testing.assert_close(values.grad[..., 0].sum(), torch.tensor(1.0))  # weights sum to 1 per point
    idx = touched.nonzero()
    assert (idx.amax(0) - idx.amin(0)).tolist() == [1, 1, 1]  # one cell


def test_model_density_colour_and_shift():
    shift = density_shift(1e-3, 0.01)
    model = VoxelGridModel(BOX, (4, 5, 6), feature_dim=5, hidden_size=8, num_layers=1, shift=shift)
    p = torch.cat((_points(10), torch.tensor([[5.0, 0.0, 0.0]])))
    sigma = model.density(p)
    alpha = 1 - torch.exp(-sigma * 0.01)
    torch.testing.assert_close(alpha[:10], torch.full((10,), 1e-3), rtol=1e-4, atol=0)  # fresh grid: alpha_init
    assert sigma[10] == 0  # outside the box: empty
    raw = model(p, F.normalize(p, dim=-1))
    assert raw.shape == (11, 4)
    torch.testing.assert_close(raw[:, 3], sigma)


def test_density_in_voxel_units():
    """DVGO's unit: sigma = softplus(D + shift) / edge of a final voxel; the fresh grid keeps alpha_init per
    step, and an opaque step (alpha 0.99) needs a raw density of about 10, not hundreds."""
    from nerf.config import ModelConfig
    v = VoxelGridConfig(num_voxels=128 ** 3, num_voxels_start=64 ** 3, grow_steps=[5], density_unit="voxel")
    model = build_model(ModelConfig(type="VoxelGridModel"), v)  # over +-1.5: final voxels of 3 / 127
    world = build_model(ModelConfig(type="VoxelGridModel"), VoxelGridConfig(num_voxels=128 ** 3,
                                                                            num_voxels_start=64 ** 3, grow_steps=[5]))
    assert model.density_scale.item() == pytest.approx(127 / 3) and world.density_scale.item() == 1.0
    p = _points(20, model.aabb)
    for m in (model, world):
        alpha = 1 - torch.exp(-m.density(p) * m.marching_step)
        torch.testing.assert_close(alpha, torch.full((20,), 1e-2), rtol=1e-4, atol=0)
    final_step = 0.5 * 3 / 127

    def raw_for_opaque_step(m):  # D with 1 - exp(-sigma * final_step) = 0.99
        sigma = -math.log(0.01) / final_step / m.density_scale.item()
        return math.log(math.expm1(sigma)) - m.shift.item()
    assert raw_for_opaque_step(model) < 15 and raw_for_opaque_step(world) > 300
    # a state dict saved before the unit existed loads with the world unit
    old = {k: t for k, t in world.state_dict().items() if k != "density_scale"}
    load_model_state(model, old, "old.ckpt", "coarse model")
    assert model.density_scale.item() == 1.0 and torch.equal(model.density(p), world.density(p))


def test_total_variation_by_hand():
    grid = torch.zeros(2, 2, 2)
    grid[1] = 1.0  # a step of 1 along x only: 4 squared differences of 1, mean 1; none along y and z
    assert total_variation(grid).item() == 1.0
    features = torch.zeros(2, 3, 2, 4)
    features[:, 1:, :, :2] = 3.0  # along y: a step of 3 in 2 of 4 channels between y = 0 and 1, none from 1 to 2
    expected = 9.0 * (2 * 1 * 2 * 2) / (2 * 2 * 2 * 4)  # squared steps over the 2 x 2 x 2 x 4 differences along y
    assert total_variation(features).item() == pytest.approx(expected)


def test_total_variation_of_a_parameter_adds_its_gradient_into_grad():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(4, 5, 3, 2, generator=g)
    plain = values.clone().requires_grad_(True)  # not a Parameter: the autograd formula
    (3.0 * total_variation(plain)).backward()
    grid = nn.Parameter(values.clone())
    earlier = torch.randn(values.shape, generator=g)
    grid.grad = earlier.clone()  # a reused .grad buffer: the TV gradient is added to what it holds
    tv = total_variation(grid)
    torch.testing.assert_close(tv.detach(), total_variation(values))
    (3.0 * tv).backward()
    torch.testing.assert_close(grid.grad, earlier + plain.grad)
    line = nn.Parameter(values[:, 0, 0, 0].clone())  # one lattice axis, as a vm line
    total_variation(line, 1).backward()
    expected = torch.zeros(4)
    steps = torch.diff(values[:, 0, 0, 0])
    expected[1:] += 2 * steps / 3
    expected[:-1] -= 2 * steps / 3
    torch.testing.assert_close(line.grad, expected)


def test_growth_schedule_and_resampling_keep_the_field():
    assert [voxels_after_growth(1000, 64000, 2, k) for k in range(3)] == [1000, 8000, 64000]
    assert voxels_after_growth(1000, 64000, 0, 0) == 64000
    model = VoxelGridModel(BOX, grid_shape(BOX, 1000), feature_dim=2, hidden_size=4, num_layers=1)
    with torch.no_grad():  # an affine density and features survive resampling exactly
        axes = [torch.linspace(float(BOX[a]), float(BOX[a + 3]), model.resolution[a]) for a in range(3)]
        v = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        model.density_grid.copy_(v @ torch.tensor([1.0, 2.0, -1.0]))
        model.feature_grid.copy_(torch.stack((v[..., 0], v[..., 2] * 2), dim=-1))
    inner = torch.tensor([-0.5, -1.0, 0.0, 0.5, 0.5, 1.5])
    p = _points(200, inner, seed=1)
    before = (trilinear(model.density_grid, model.aabb, p)[0], trilinear(model.feature_grid, model.aabb, p)[0])
    assert grow(model, [10, 20], 1000, 27000, 10, shrink_to=inner)
    assert not grow(model, [10, 20], 1000, 27000, 11)
    assert torch.equal(model.aabb, inner)
    voxels = (model.resolution[0] - 1) * (model.resolution[1] - 1) * (model.resolution[2] - 1)
    assert abs(voxels - 5196) < 0.15 * 5196  # sqrt(1000 * 27000) voxels over the new box (whole voxels per axis)
    after = (trilinear(model.density_grid, model.aabb, p)[0], trilinear(model.feature_grid, model.aabb, p)[0])
    torch.testing.assert_close(after[0], before[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(after[1], before[1], atol=1e-4, rtol=0)
    margin = torch.tensor([0.1, 0.1, 0.1])
    assert grown_box(BOX, torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 1.95]), margin).tolist() == pytest.approx(
        [-0.1, -0.1, -0.1, 0.6, 0.6, 2.0])
    assert torch.equal(grown_box(BOX, torch.zeros(6), margin), BOX)  # nothing occupied: keep the box


def test_state_dict_round_trip_of_a_grown_model():
    v = VoxelGridConfig(num_voxels=4000, num_voxels_start=500, grow_steps=[5], feature_dim=3, hidden_size=8,
                        num_layers=1)
    from nerf.config import ModelConfig
    model = build_model(ModelConfig(type="VoxelGridModel"), v, BOX)
    grow(model, v.grow_steps, v.num_voxels_start, v.num_voxels, 5, shrink_to=torch.tensor([-0.5, -1, 0, 0.5, 0, 1.0]))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_()
    fresh = build_model(ModelConfig(type="VoxelGridModel"), v)  # other shape and box until loaded
    assert fresh.resolution != model.resolution
    load_model_state(fresh, model.state_dict(), "mem.ckpt", "coarse model")
    p, d = _points(64, model.aabb), F.normalize(_points(64, seed=2), dim=-1)
    assert torch.equal(fresh(p, d), model(p, d))
    assert fresh.marching_step == model.marching_step
    broken = dict(model.state_dict(), feature_grid=torch.zeros(2, 2, 2, 7))
    with pytest.raises(CheckpointError, match="feature_grid"):
        load_model_state(build_model(ModelConfig(type="VoxelGridModel"), v), broken, "mem.ckpt", "coarse model")


def test_colour_only_above_the_weight_threshold():
    """The split renderer equals the full one with a tiny threshold, and otherwise differs by at most the
    dropped weights; it evaluates colour on fewer samples."""
    torch.manual_seed(0)
    model = VoxelGridModel(BOX, (9, 10, 11), feature_dim=4, hidden_size=8, num_layers=1, shift=-2.0)
    with torch.no_grad():
        model.density_grid.normal_(0, 3)
        model.feature_grid.normal_()
    cfg = OccupancyConfig(resolution=8, early_stop_eps=0.0)
    sampler = OccupancySampler(OccupancyGrid(BOX, 8, 0.01, 0.95, torch.device("cpu")), cfg, skipping=False)
    sampler.fixed_step = 0.05
    origins = torch.tensor([[0.0, -0.5, -3.0]]).expand(32, 3)
    directions = F.normalize(torch.randn(32, 3) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    rays = prepare_rays(origins, directions, 0.0, 8.0)
    opts = RenderConfig(perturb=False, white_background=True)
    t, valid, dt = occupancy_samples(model, rays, opts, sampler)
    full = render_samples(model, rays, t, valid, dt, opts)
    tiny = render_samples(model, rays, t, valid, dt, opts, color_weight_threshold=1e-30)
    torch.testing.assert_close(tiny["rgb"], full["rgb"], atol=1e-6, rtol=0)
    calls = []
    model.color = lambda p, d, f=model.color: calls.append(len(p)) or f(p, d)
    split = render_samples(model, rays, t, valid, dt, opts, color_weight_threshold=0.01)
    dropped = (full["weights"] * (full["weights"] < 0.01)).sum(dim=-1)  # [R]
    assert ((split["rgb"] - full["rgb"]).abs().amax(dim=-1) <= dropped + 1e-6).all()
    assert 0 < calls[0] < valid.sum()
    torch.testing.assert_close(split["acc"], full["acc"])
    # the per-sample colours the losses use composite to the pixel: sum_k w_k c_k + (1 - acc) on white
    for out in (full, split):
        composed = (out["weights"][..., None] * out["sample_rgb"]).sum(dim=1) + (1.0 - out["acc"])[:, None]
        torch.testing.assert_close(composed, out["rgb"])
        assert torch.equal(out["dt"], dt)


# --------------------------------------------------------------------------------------------------
# The scripts


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene") / "demo"
    generate_demo_scene(str(root), size=24, num_train=16, num_val=2, num_test=2)
    return str(root)


def _config(tmp_path, scene_dir, **experiment):
    cfg = {
        "experiment": {"id": "run", "logdir": str(tmp_path / "logs"), "randomseed": 3, "train_iters": 8,
                       "validate_every": 0, "save_every": 4, "print_every": 2, "device": "cpu", **experiment},
        "dataset": {"type": "blender", "basedir": scene_dir},
        "models": {"coarse": {"type": "VoxelGridModel"}, "fine": None},
        "nerf": {"train": {"num_random_rays": 256, "num_fine": 0, "white_background": True, "perturb": True},
                 "validation": {"num_fine": 0, "white_background": True, "num_views": 2}},
        "optimizer": {"lr": 1e-3, "eps": 1e-15},
        "scheduler": {"lr_decay": 20},
        "occupancy": {"enabled": True, "resolution": 16, "update_every": 4, "warmup_steps": 4, "decay": 0.8,
                      "color_weight_threshold": 1e-7},
        "voxel_grid": {"num_voxels": 32768, "num_voxels_start": 4096, "grow_steps": [6], "feature_dim": 6,
                       "hidden_size": 16, "num_layers": 1, "alpha_init": 1e-2, "grid_lr": 0.2, "tv_weight": 1e-4},
    }
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


MASKED = ["voxel_grid.masked_adam=true", "voxel_grid.tv_weight=0"]
RESTART = ["voxel_grid.restart_at_shrink=true"]


@pytest.mark.parametrize("resume_at,representation,options", [
    (4, "dense", []), (8, "dense", []), (4, "vm", []), (8, "vm", []), (8, "dense", MASKED), (4, "vm", MASKED),
    (4, "dense", RESTART)])
def test_resume_is_exact_across_the_shrink_and_the_growths(tmp_path, scene_dir, resume_at, representation, options):
    """12 steps with growths at 4 (and the box shrink) and 8, against a run resumed at 4 (the first growth,
    with the cells seen before it) or at 8 (a shrunk, grown grid): the same weights and Adam state (also with
    masked Adam, whose masks start empty, and with the restart of DVGO's fine stage)."""
    config = _config(tmp_path, scene_dir, train_iters=12)
    sets = ["voxel_grid.grow_steps=[4, 8]", "voxel_grid.seen_weight=0.01", f"voxel_grid.representation={representation}",
            *options]
    if representation == "vm":
        sets.append("voxel_grid.grid_lr=0.02")  # TensoRF's rate for its factors
    train_nerf.main(["--config", config, "--set", "experiment.id=full"] + [a for x in sets for a in ("--set", x)])
    train_nerf.main(["--config", config, "--set", "experiment.id=resumed", "--load-checkpoint",
                     str(tmp_path / "logs" / "full" / f"checkpoint{resume_at:06d}.ckpt")]
                    + [a for x in sets for a in ("--set", x)])
    a = load_checkpoint(str(tmp_path / "logs" / "full" / "checkpoint000012.ckpt"))
    b = load_checkpoint(str(tmp_path / "logs" / "resumed" / "checkpoint000012.ckpt"))
    early = load_checkpoint(str(tmp_path / "logs" / "full" / "checkpoint000004.ckpt"))
    grid = "density_grid" if representation == "dense" else "density_planes.0"
    assert early["model_coarse_state_dict"][grid].numel() < a["model_coarse_state_dict"][grid].numel()
    box_before, box_after = early["model_coarse_state_dict"]["aabb"], a["model_coarse_state_dict"]["aabb"]
    assert (box_after[3:] - box_after[:3]).prod() < (box_before[3:] - box_before[:3]).prod()  # it shrank
    for key, value in a["model_coarse_state_dict"].items():
        assert torch.equal(value, b["model_coarse_state_dict"][key]), key
    for index, state in a["optimizer_state_dict"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, b["optimizer_state_dict"]["state"][index][k]), (index, k)
    assert torch.equal(a["occupancy_grid"]["estimates"], b["occupancy_grid"]["estimates"])


@pytest.mark.parametrize("representation", ["dense", "vm"])
def test_training_loss_falls(tmp_path, scene_dir, representation):
    """The dense grids, and TensoRF's factors (nerf/tensor_vm.py) through the same method and scripts."""
    config = _config(tmp_path, scene_dir, train_iters=120, validate_every=120, save_every=0)
    if representation == "vm":
        with open(config) as f:
            cfg = yaml.safe_load(f)
        cfg["voxel_grid"].update(representation="vm", density_components=4, appearance_components=8, grid_lr=0.02)
        with open(config, "w") as f:
            yaml.safe_dump(cfg, f)
    cfg = load_config(config)
    scene = load_scene(cfg.dataset, white_background=True)
    torch.manual_seed(cfg.experiment.randomseed)
    from nerf.methods import build_method
    method = build_method(cfg, False, torch.device("cpu"))
    method.sampler.skipping = False
    before = train_nerf.validate(cfg, scene, method)["psnr"]
    metrics = train_nerf.main(["--config", config])
    assert metrics["val_psnr"] > before + 5.0, (before, metrics["val_psnr"])
    # eval renders the test views with the stored grid and writes metrics
    out = eval_nerf.main(["--config", config, "--checkpoint", os.path.join(metrics["run_dir"], "checkpoint000120.ckpt"),
                          "--savedir", str(tmp_path / "eval"), "--split", "test"])
    assert out["mean"]["psnr"] > before + 5.0


def test_prune_is_refused_and_bad_configs_are_rejected(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir, train_iters=4)
    train_nerf.main(["--config", config])
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "experiment.train_iters=8", "--load-checkpoint",
                         str(tmp_path / "logs" / "run" / "checkpoint000004.ckpt"), "--prune", "coarse"])
    assert "VoxelGridModel" in str(err.value) and "voxel_grid.num_voxels" in str(err.value)
    with pytest.raises(ConfigError, match="occupancy.enabled"):
        load_config(config, ["occupancy.enabled=false"])
    with pytest.raises(ConfigError, match="voxel_grid.grow_steps"):
        load_config(config, ["voxel_grid.grow_steps=[6,3]"])
    with pytest.raises(ConfigError, match="voxel_grid.num_voxels_start"):
        load_config(config, ["voxel_grid.num_voxels_start=100000"])
    with pytest.raises(ConfigError, match="voxel_grid.distortion_weight"):
        load_config(config, ["voxel_grid.distortion_weight=-0.01"])
    with pytest.raises(ConfigError, match="voxel_grid.sample_rgb_weight"):
        load_config(config, ["voxel_grid.sample_rgb_weight=-0.01"])


def test_mlp_keys_are_refused_for_the_voxel_grid_model(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir)
    with pytest.raises(ConfigError, match="models.coarse.hidden_size.*voxel_grid"):
        load_config(config, ["models.coarse.hidden_size=32"])
    with pytest.raises(ConfigError, match="models.fine.type"):
        load_config(config, ["models.fine={type: VoxelGridModel}", "nerf.train.num_fine=8",
                             "nerf.validation.num_fine=8"])


def test_distortion_and_sample_colour_losses_reach_the_parameters_they_regularise(tmp_path, scene_dir):
    """After one step, the distortion loss (a function of the weights) has moved the density grid and not
    the feature grid; the per-sample colour loss (detached weights) the feature grid and not the density."""
    config = _config(tmp_path, scene_dir, train_iters=1, save_every=1)
    grids = {}
    for name, extra in (("plain", []), ("distortion", ["voxel_grid.distortion_weight=10"]),
                        ("sample_rgb", ["voxel_grid.sample_rgb_weight=10"])):
        sets = [a for x in extra for a in ("--set", x)]
        train_nerf.main(["--config", config, "--set", f"experiment.id={name}"] + sets)
        state = load_checkpoint(str(tmp_path / "logs" / name / "checkpoint000001.ckpt"))["model_coarse_state_dict"]
        grids[name] = state["density_grid"], state["feature_grid"]
    assert not torch.equal(grids["distortion"][0], grids["plain"][0])
    assert torch.equal(grids["distortion"][1], grids["plain"][1])
    assert torch.equal(grids["sample_rgb"][0], grids["plain"][0])
    assert not torch.equal(grids["sample_rgb"][1], grids["plain"][1])


def test_restart_at_shrink_starts_fog_in_the_content_and_empty_space_elsewhere(tmp_path, scene_dir):
    """DVGO's two stages: at the first growth the grids are not resampled but fresh: raw density 0 (fog of
    alpha_init per step) at the vertices in or next to occupied cells, -100 elsewhere, zero features, a
    re-initialised colour MLP; the box shrinks as without the restart."""
    config = _config(tmp_path, scene_dir)
    cfg = load_config(config, ["voxel_grid.restart_at_shrink=true", "voxel_grid.grow_steps=[4]"])
    from nerf.methods import build_method
    method = build_method(cfg, False, torch.device("cpu"))
    method.start(0, None)
    grid = method.sampler.grid
    grid.occupied.zero_()
    grid.occupied[grid._flat_index(torch.tensor([8, 8, 8]))] = True  # one occupied cell of 16^3 (the middle)
    method.seen.zero_()
    method.seen[grid._flat_index(torch.tensor([8, 8, 8]))] = 10  # the content the rays saw there
    with torch.no_grad():
        method.coarse.feature_grid.fill_(0.3)
        method.coarse.density_grid.fill_(0.7)
    mlp_before = [p.detach().clone() for p in method.coarse.color_net.parameters()]
    assert method.before_step(4)
    model = method.coarse
    cell = 2.0 * 1.5 / 16  # occupancy cells of the config's [-1.5, 1.5]^3 box
    vertices = lattice_vertices(model.resolution, model.aabb, (0, 1, 2))  # [N, 3]
    lo = -1.5 + (8 - 1) * cell  # the occupied cell and its neighbours
    near = ((vertices >= lo) & (vertices < lo + 3 * cell)).all(dim=-1).reshape(model.resolution)
    assert near.any() and not near.all()
    assert torch.equal(model.density_grid.detach(), torch.where(near, 0.0, -100.0))
    assert torch.count_nonzero(model.feature_grid) == 0
    assert all(not torch.equal(p, q) for p, q in zip(model.color_net.parameters(), mlp_before))
    box = model.aabb
    assert (box[3:] - box[:3]).max() < 3.0  # shrunk to the seen cell (plus one)
