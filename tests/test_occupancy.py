import math
import re

import pytest
import torch
from torch import nn

from nerf.config import OccupancyConfig, RenderConfig
from nerf.compositing import composite
from nerf.occupancy import (OccupancyGrid, OccupancySampler, compact, early_termination, march, occupancy_samples,
                            ray_box_interval)
from nerf.rays import Rays
from nerf.rendering import render_samples

BLOBS = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, -0.3]])


def blob_density(points):
    """Two Gaussian blobs of peak density 50 and width 0.15: smooth, mostly empty space."""
    d2 = ((points[:, None, :] - BLOBS) ** 2).sum(-1)  # [P, 2]
    return 50.0 * torch.exp(-d2 / (2 * 0.15 ** 2)).sum(-1) - 1.0  # raw: ReLU gives 0 far from the blobs


class BlobField(nn.Module):
    """An analytic field: density from the blobs, colour from the position."""

    def density(self, points):
        return blob_density(points)

    def forward(self, points, viewdirs):
        return torch.cat((3.0 * points, blob_density(points)[:, None]), dim=-1)


def _rays(num, seed=0):
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(num, 3, generator=g), dim=-1) * 4.0
    targets = 0.6 * torch.randn(num, 3, generator=g)
    directions = (targets - origins) * (0.5 + torch.rand(num, 1, generator=g))  # un-normalised, as in training
    viewdirs = torch.nn.functional.normalize(directions, dim=-1)
    near = torch.full((num,), 2.0) / directions.norm(dim=-1) * 1.0
    far = torch.full((num,), 6.5) / directions.norm(dim=-1)
    return Rays(origins, directions, viewdirs, near, far)


def test_cell_index_by_hand():
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=4)
    index, inside = grid.cell_index(torch.tensor([[0.3, 0.6, 0.9], [0.0, 0.0, 0.0], [1.0, 0.5, 0.5],
                                                  [-0.1, 0.5, 0.5]]))
    assert index[0].item() == (1 * 4 + 2) * 4 + 3 and index[1].item() == 0
    assert inside.tolist() == [True, True, False, False]


def test_near_occupied_is_the_occupied_cells_dilated_by_one():
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=5)
    grid.occupied.zero_()
    grid.occupied[grid._flat_index(torch.tensor([[1, 1, 1], [4, 4, 4]]))] = True
    ijk = torch.stack(torch.meshgrid(*[torch.arange(5)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)  # [125, 3]
    centres = (ijk + 0.5) / 5
    expected = ((ijk - torch.tensor([1, 1, 1])).abs().amax(-1) <= 1) | ((ijk - 4).abs().amax(-1) <= 1)
    assert torch.equal(grid.near_occupied(centres), expected)  # 27 + 8 cells
    assert int(expected.sum()) == 35
    assert not grid.near_occupied(torch.tensor([[1.2, 0.5, 0.5]])).item()  # outside the box


def test_cell_points_round_trip():
    grid = OccupancyGrid([-1.5, -1, -2, 1.5, 1, 2], resolution=7)
    cells = torch.randint(7 ** 3, (500,))
    points = grid.cell_points(cells, torch.rand(500, 3) * 0.98 + 0.01)
    assert torch.equal(grid.cell_index(points)[0], cells)
    t = torch.rand(50, 9)
    origins, directions = torch.rand(50, 3) - 0.5, 0.1 * (torch.rand(50, 3) - 0.5)
    along = grid.cells_along(origins, directions, t)
    assert torch.equal(along, grid.cell_index(origins[:, None] + directions[:, None] * t[..., None])[0])


def test_fill_matches_brute_force_and_never_skips_dense_cells():
    res, k, step, threshold = 8, 3, 0.01, 0.01
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], res, density_threshold=threshold)
    grid.fill(blob_density, step, samples_per_axis=k)
    # brute force: the (res k)^3 lattice of sub-cell centres, grouped by cell
    n = res * k
    axis = -1 + (torch.arange(n) + 0.5) * 2 / n
    lattice = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)  # [n, n, n, 3]
    opacity = torch.relu(blob_density(lattice.reshape(-1, 3))).reshape(n, n, n) * step
    per_cell = opacity.reshape(res, k, res, k, res, k).amax(dim=(1, 3, 5)).reshape(-1)
    assert torch.allclose(grid.estimates, per_cell)
    expected = per_cell > min(threshold, per_cell.mean().item())
    assert torch.equal(grid.occupied, expected)
    assert grid.occupied[per_cell > threshold].all()  # the invariant the marching relies on
    assert 0 < grid.occupied_fraction() < 0.5


def test_update_marks_every_cell_where_it_saw_density():
    seen = []

    def recording_density(points):
        seen.append(points)
        return blob_density(points)

    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 16, density_threshold=0.01)
    grid.update(recording_density, 0.01, all_cells=True)
    for _ in range(3):
        grid.update(recording_density, 0.01, all_cells=False)
    points = torch.cat(seen)
    hot = torch.relu(blob_density(points)) * 0.01 > 0.01
    cells, _ = grid.cell_index(points[hot])
    assert len(cells) > 0 and grid.occupied[cells].all()
    assert grid.occupied_fraction() < 0.2


def test_update_decays_cells_it_revisits():
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], 4, density_threshold=0.01, decay=0.5)
    grid.estimates = torch.full((64,), 0.8)
    grid.update(lambda p: torch.zeros(len(p)), 1.0, all_cells=True)
    assert torch.allclose(grid.estimates, torch.full((64,), 0.4))
    grid.update(lambda p: torch.full((len(p),), 0.6), 1.0, all_cells=True)
    assert torch.allclose(grid.estimates, torch.full((64,), 0.6))  # max(0.2, 0.6)


def test_update_looks_up_in_cell_order_each_cell_at_its_drawn_point():
    """The random update evaluates its points sorted by cell (for the cache), each chosen cell at the offset
    drawn for it: the estimates are those of the same draws evaluated unsorted."""
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 16, density_threshold=0.01, decay=0.7)
    grid.estimates = torch.rand(16 ** 3, generator=torch.Generator().manual_seed(2)) * 0.02
    before = grid.estimates.clone()
    seen = []
    grid.update(lambda p: seen.append(p) or blob_density(p), 0.01, all_cells=False,
                generator=torch.Generator().manual_seed(3))
    points = torch.cat(seen)
    cells, _ = grid.cell_index(points)
    assert (torch.diff(cells) >= 0).all()
    # the same draws (every cell occupied before: C/4 uniform cells, C/4 of the occupied ones), unsorted
    generator = torch.Generator().manual_seed(3)
    chosen = torch.randint(16 ** 3, (1024,), generator=generator)
    chosen = torch.cat((chosen, torch.arange(16 ** 3)[torch.randint(16 ** 3, (1024,), generator=generator)]))
    drawn = grid.cell_points(chosen, torch.rand((2048, 3), generator=generator))
    assert torch.equal(torch.sort(points[:, 0]).values, torch.sort(drawn[:, 0]).values)
    expected = before.clone()
    expected[chosen] = before[chosen] * 0.7
    expected = expected.scatter_reduce(0, chosen, torch.relu(blob_density(drawn)) * 0.01, reduce="amax")
    torch.testing.assert_close(grid.estimates, expected, rtol=1e-6, atol=0)


def test_grid_state_round_trip_and_mismatch():
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 8)
    grid.fill(blob_density, 0.01, 1)
    other = OccupancyGrid([-1, -1, -1, 1, 1, 1], 8)
    other.load_state_dict(grid.state_dict())
    assert torch.equal(other.occupied, grid.occupied) and torch.equal(other.estimates, grid.estimates)
    with pytest.raises(ValueError, match="does not match"):
        OccupancyGrid([-1, -1, -1, 1, 1, 1], 16).load_state_dict(grid.state_dict())


def test_ray_box_interval_by_hand():
    o, d = torch.tensor([[-3.0, 0.2, 0.1]]), torch.tensor([[2.0, 0.0, 0.0]])
    t0, t1 = ray_box_interval(o, d, torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    assert t0.item() == pytest.approx(1.0) and t1.item() == pytest.approx(2.0)
    t0, t1 = ray_box_interval(torch.tensor([[-3.0, 2.0, 0.0]]), d, torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    assert t1.item() <= t0.item()  # a miss


def test_compact_keeps_order():
    t = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    valid = torch.tensor([[False, True, False, True], [False, False, True, False]])
    t2, v2, dt2 = compact(t, valid, 10 * t)
    assert torch.equal(t2, torch.tensor([[0.2, 0.4], [0.7, 0.0]]))  # padding: t = dt = 0
    assert v2.tolist() == [[True, True], [True, False]]
    assert torch.equal(dt2, 10 * t2)  # the intervals travel with their samples


def test_compact_of_random_masks_equals_a_stable_sort():
    """Against the obvious implementation: a stable sort that puts each ray's valid samples first."""
    generator = torch.Generator().manual_seed(0)
    t = torch.rand(64, 40, generator=generator).cumsum(dim=1)
    dt = torch.rand(64, 40, generator=generator)
    valid = torch.rand(64, 40, generator=generator) < 0.3
    valid[5] = False  # a ray without samples
    t2, v2, dt2 = compact(t, valid, dt)
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :t2.shape[1]]
    assert t2.shape[1] == int(valid.sum(dim=1).max())
    assert torch.equal(v2, torch.gather(valid, 1, order))
    assert torch.equal(t2[v2], torch.gather(t, 1, order)[v2]) and torch.equal(dt2[v2], torch.gather(dt, 1, order)[v2])
    assert not t2[~v2].any() and not dt2[~v2].any()
    empty = compact(t[:, :0], valid[:, :0], dt[:, :0])
    assert [x.shape for x in empty] == [torch.Size([64, 0])] * 3


def _sampler(grid, **cfg):
    return OccupancySampler(grid, OccupancyConfig(enabled=True, resolution=grid.resolution, **cfg))


@pytest.mark.parametrize("resolution", [24, 257])  # cell numbers below 2^24 (float32 path) and above
def test_cells_along_numbers_the_cells_of_the_points(resolution):
    """cells_along: the cell of o + t d, as (o - lo) / size * res + t d / size * res floored per axis and
    numbered row-major: the same numbers on either path, and those of cell_index but for rounding at faces."""
    grid = OccupancyGrid([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], resolution)
    rays = _rays(64)
    t_in, t_out = ray_box_interval(rays.origins, rays.directions, grid.aabb)
    hit = t_out > t_in
    origins, directions, t_in, t_out = rays.origins[hit], rays.directions[hit], t_in[hit], t_out[hit]
    t = t_in[:, None] + torch.rand(len(t_in), 50, generator=torch.Generator().manual_seed(0)) * (t_out - t_in)[:, None]
    cells = grid.cells_along(origins, directions, t)  # [R, N]
    lo, size = grid.aabb[:3], grid.aabb[3:] - grid.aabb[:3]
    ijk = torch.addcmul(((origins - lo) / size * resolution)[:, None, :], t[..., None],
                        (directions / size * resolution)[:, None, :]).floor().clamp(0, resolution - 1).long()
    assert torch.equal(cells, (ijk[..., 0] * resolution + ijk[..., 1]) * resolution + ijk[..., 2])
    points = origins[:, None, :] + directions[:, None, :] * t[..., None]  # [R, N, 3] inside the box
    assert (cells == grid.cell_index(points)[0]).float().mean() > 0.999


def test_march_equals_brute_force_filtering():
    """The marched samples are exactly the uniform lattice samples inside [near, far] and the box whose cell
    is occupied: skipping never drops an occupied sample and never adds one."""
    grid = OccupancyGrid([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], 24)
    grid.fill(blob_density, 0.01, 2)
    sampler = _sampler(grid, num_steps=256)
    rays = _rays(200)
    t, valid, dt = march(sampler, rays, perturb=False)
    step = sampler.step_size / torch.linalg.norm(rays.directions, dim=-1)  # [R]: one step per ray in a world box
    assert torch.equal(dt[valid], step[:, None].expand_as(dt)[valid])
    t_in, t_out = ray_box_interval(rays.origins, rays.directions, grid.aabb)
    t_in, t_out = torch.maximum(t_in, rays.near), torch.minimum(t_out, rays.far)
    k = torch.arange(400, dtype=torch.float32)
    lattice = t_in[:, None] + (k + 0.5) * step[:, None]  # [R, 400] brute force over the whole box
    inside = lattice < t_out[:, None]
    points = rays.origins[:, None] + rays.directions[:, None] * lattice[..., None]
    keep = inside & grid.is_occupied(points)
    assert keep.sum() > 100
    for r in range(len(rays)):
        assert torch.allclose(t[r][valid[r]], lattice[r][keep[r]], atol=1e-5), r
    # with every cell occupied, skipping changes nothing
    full = _sampler(OccupancyGrid(grid.aabb.tolist(), 24), num_steps=256)
    t_all, valid_all, _ = march(full, rays, perturb=False)
    full.skipping = False
    t_off, valid_off, _ = march(full, rays, perturb=False)
    assert torch.allclose(t_all[valid_all], t_off[valid_off], atol=1e-5)


def test_valid_samples_increase_along_each_ray_after_early_termination():
    """The order the O(S) distortion loss relies on: jittered, skipped and compacted samples stay sorted."""
    grid = OccupancyGrid([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], 24)
    grid.fill(blob_density, 0.01, 2)
    sampler = _sampler(grid, num_steps=256)
    rays = _rays(200)
    torch.manual_seed(0)
    t, valid, _ = occupancy_samples(BlobField(), rays, RenderConfig(perturb=True), sampler)
    assert valid.sum() > 100
    for r in range(len(rays)):
        assert (torch.diff(t[r][valid[r]]) > 0).all(), r


def test_render_without_skipping_is_the_uniform_quadrature():
    """eps = 0, no skipping: the renderer composites every uniform step, delta = step size."""
    grid = OccupancyGrid([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], 8)
    sampler = _sampler(grid, num_steps=300, early_stop_eps=0.0)
    sampler.skipping = False
    rays, opts = _rays(30, seed=1), RenderConfig(perturb=False, white_background=True)
    field = BlobField()
    t, valid, dt = occupancy_samples(field, rays, opts, sampler)
    out = render_samples(field, rays, t, valid, dt, opts)
    for r in range(len(rays)):
        tr = t[r][valid[r]]
        points = rays.origins[r] + rays.directions[r] * tr[:, None]
        raw = field(points, None)
        ref = composite(torch.sigmoid(raw[None, :, :3]), torch.relu(raw[None, :, 3]),
                        torch.full((1, len(tr)), sampler.step_size), tr[None], white_background=True)
        assert torch.allclose(out["rgb"][r], ref["rgb"][0], atol=1e-5)


@pytest.mark.parametrize("eps", [1e-2, 1e-3])
def test_early_termination_changes_colour_by_less_than_eps(eps):
    grid = OccupancyGrid([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], 32)
    grid.fill(blob_density, 0.005, 2)
    rays, opts, field = _rays(300, seed=2), RenderConfig(perturb=False, white_background=True), BlobField()
    exact = _sampler(grid, num_steps=600, early_stop_eps=0.0)
    stopped = _sampler(grid, num_steps=600, early_stop_eps=eps)
    out_exact = render_samples(field, rays, *occupancy_samples(field, rays, opts, exact), opts)
    t, valid, dt = occupancy_samples(field, rays, opts, stopped)
    out = render_samples(field, rays, t, valid, dt, opts)
    assert valid.sum() < 0.95 * out_exact["num_samples"].sum()  # it did stop rays early
    assert (out["rgb"] - out_exact["rgb"]).abs().max() < eps


def test_early_termination_keeps_exactly_the_samples_before_the_cutoff():
    rays = _rays(20, seed=3)
    aim = BLOBS[torch.arange(20) % 2] + 0.1 * torch.randn(20, 3)  # rays through the blobs
    rays = Rays(rays.origins, aim - rays.origins, rays.viewdirs, rays.near, rays.far)
    t = torch.linspace(0.5, 1.5, 50).expand(20, 50).contiguous()
    valid = torch.rand(20, 50, generator=torch.Generator().manual_seed(0)) > 0.3
    dt = torch.full((20, 50), 0.02)
    eps = 1e-2
    keep = early_termination(blob_density, rays, t, valid, dt, eps, 0.0, netchunk=1000)
    # independent reference: optical depth before each sample, summed in a Python loop
    for r in range(20):
        step = (dt[r, 0] * rays.directions[r].norm()).item()
        depth = 0.0
        for k in range(50):
            if not valid[r, k]:
                assert not keep[r, k]
                continue
            assert bool(keep[r, k]) == (math.exp(-depth) >= eps), (r, k)
            point = rays.origins[r] + rays.directions[r] * t[r, k]
            depth += torch.relu(blob_density(point[None]))[0].item() * step
    assert (valid & ~keep).any()  # some rays were cut


def test_march_in_ndc_space_stays_in_the_unit_box():
    from nerf.occupancy import NDC_AABB
    from nerf.rays import get_rays
    from nerf.rays import prepare_rays

    height = width = 16
    c2w = torch.eye(4)[:3]
    rays_o, rays_d = get_rays(height, width, 14.0, c2w)
    rays = prepare_rays(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), 0.0, 1.0, (height, width, 14.0))
    grid = OccupancyGrid(NDC_AABB, 16)
    sampler = _sampler(grid, num_steps=128)
    t, valid, dt = march(sampler, rays, perturb=True)
    tv = t[valid]
    assert tv.min() >= 0 and tv.max() <= 1
    # every ray crosses NDC depth -1..1: its samples cover [0, 1] in steps of dt
    assert torch.allclose(valid.sum(1).float(), (1.0 / dt[:, 0]).floor(), atol=1.0)


def test_box_warning_for_ndc_views_leaving_the_box():
    import types

    from nerf.occupancy import NDC_AABB, box_warning

    def yaw(degrees):
        a = math.radians(degrees)
        return torch.tensor([[math.cos(a), 0, math.sin(a), 0.0], [0, 1, 0, 0], [-math.sin(a), 0, math.cos(a), 0]])

    def scene(poses):
        return types.SimpleNamespace(use_ndc=True, poses=torch.stack(poses), height=16, width=16, focal=14.0,
                                     pixel_offset=0.0, near=0.0, far=1.0)

    sampler = _sampler(OccupancyGrid(NDC_AABB, 8))
    assert box_warning(sampler, scene([yaw(0), yaw(3)]), stride=2) is None
    warning = box_warning(sampler, scene([yaw(0), yaw(20)]), stride=2)
    assert warning is not None and "widen occupancy.aabb" in warning
    # the box it proposes holds the default box and every ray: with it, no warning
    proposed = [float(v) for v in re.search(r"--set 'occupancy.aabb=\[(.*)\]'", warning).group(1).split(",")]
    assert all(a <= b for a, b in zip(proposed[:3], NDC_AABB[:3])) and all(
        a >= b for a, b in zip(proposed[3:], NDC_AABB[3:]))
    assert proposed != list(NDC_AABB)
    assert box_warning(_sampler(OccupancyGrid(proposed, 8)), scene([yaw(0), yaw(20)]), stride=2) is None


def test_llff_without_ndc_needs_an_explicit_box():
    from nerf.config import ConfigError, config_from_dict

    data = {"dataset": {"type": "llff", "basedir": "x", "no_ndc": True}, "occupancy": {"enabled": True}}
    with pytest.raises(ConfigError, match="occupancy.aabb"):
        config_from_dict(data)
    data["occupancy"]["aabb"] = [-5, -5, -5, 5, 5, 5]
    assert config_from_dict(data).occupancy.aabb == [-5.0, -5.0, -5.0, 5.0, 5.0, 5.0]


def test_box_of_cells_by_hand():
    grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), 4, 0.01, 0.95, torch.device("cpu"))
    mask = torch.zeros(64, dtype=torch.bool)
    assert torch.equal(grid.box_of(mask), torch.tensor([-1.0, -1.0, -1.0, -1.0, -1.0, -1.0]))  # none: empty box
    mask[(1 * 4 + 2) * 4 + 3] = True  # cell (1, 2, 3): x in [-0.5, 0], y in [0, 0.5], z in [0.5, 1]
    mask[(2 * 4 + 2) * 4 + 0] = True  # cell (2, 2, 0): x in [0, 0.5], y in [0, 0.5], z in [-1, -0.5]
    assert grid.box_of(mask).tolist() == [-0.5, 0.0, -1.0, 0.5, 0.5, 1.0]
    grid.occupied = mask
    assert torch.equal(grid.occupied_box(), grid.box_of(mask))


class BackdropField(nn.Module):
    """A blob at the centre and, beyond radius 10, a thin background (sigma 0.05) out to infinity: opaque
    over its world length, but 0.05 x a contracted step is below any occupancy threshold."""

    def density(self, points):
        return torch.where(points.norm(dim=-1) > 10, torch.full_like(points[:, 0], 0.05), blob_density(points).relu())

    def forward(self, points, viewdirs):
        return torch.cat((torch.sigmoid(points), self.density(points)[:, None]), dim=-1)


def _contracted_sampler(kind, resolution=24, step=0.05, **cfg):
    from nerf.contraction import CONTRACTED_AABB

    grid = OccupancyGrid(CONTRACTED_AABB, resolution, contraction=kind)
    return OccupancySampler(grid, OccupancyConfig(enabled=True, resolution=resolution, contraction=kind, **cfg),
                            fixed_step=step)


@pytest.mark.parametrize("kind", ["l2", "inf"])
def test_contracted_march_takes_fixed_steps_in_the_contracted_space(kind):
    from nerf.contraction import FAR_GAP, contract

    sampler = _contracted_sampler(kind, early_stop_eps=0.0)
    sampler.skipping = False
    rays = _rays(50, seed=4)
    t, valid, dt = march(sampler, rays, perturb=False)
    for r in range(len(rays)):
        tr, dtr = t[r][valid[r]], dt[r][valid[r]]
        y = contract(rays.origins[r] + rays.directions[r] * tr[:, None], kind)  # [n, 3]
        start = contract(rays.origins[r] + rays.directions[r] * rays.near[r], kind)
        chords = torch.linalg.norm(torch.diff(y, dim=0), dim=-1)
        # chords of 0.05 arcs: as long, but shorter where the path bends (the inf norm's contraction has
        # corners where the largest coordinate changes; near them the node list interpolates s(t) less well)
        assert ((chords > 0.7 * 0.05) & (chords < 1.1 * 0.05)).all(), r
        assert ((chords - 0.05).abs() < 0.03 * 0.05).float().mean() > 0.95, r
        assert torch.linalg.norm(y[0] - start).item() == pytest.approx(0.025, rel=0.03)  # u = 1/2
        assert (torch.diff(tr) > 0).all() and (dtr > 0).all()
        # each sample's interval lies half-way to its neighbours (where t is nearly linear in s) ...
        near = (tr[2:] * rays.directions[r].norm() < 6)
        torch.testing.assert_close(dtr[1:-1][near], ((tr[2:] - tr[:-2]) / 2)[near], rtol=0.05, atol=0)
        # ... and the intervals tile the ray from near to "infinity"
        assert (rays.near[r] + dtr.sum()) * rays.directions[r].norm() == pytest.approx(1 / FAR_GAP, rel=1e-3)


@pytest.mark.parametrize("kind", ["l2", "inf"])
def test_contracted_march_skips_exactly_the_unoccupied_samples(kind):
    sampler = _contracted_sampler(kind)
    sampler.grid.fill(BackdropField().density, sampler.step_size, 2)
    rays = _rays(100, seed=5)
    t, valid, dt = march(sampler, rays, perturb=False)
    sampler.skipping = False
    t_all, valid_all, dt_all = march(sampler, rays, perturb=False)
    keep = valid_all & sampler.grid.is_occupied(rays.origins[:, None] + rays.directions[:, None] * t_all[..., None])
    assert 0 < keep.sum() < 0.8 * valid_all.sum()
    for r in range(len(rays)):
        torch.testing.assert_close(t[r][valid[r]], t_all[r][keep[r]])
        torch.testing.assert_close(dt[r][valid[r]], dt_all[r][keep[r]])


def test_contracted_grid_keeps_the_thin_far_background_and_renders_it():
    """Beyond radius 10 the field is a thin fog (0.05 x a contracted step = 0.0025 < threshold 0.01) that is
    opaque over its world length: the world-stretched estimate marks those cells occupied, and every ray
    ends there (acc ~ 1, depth past radius 10). A world box misses it (acc ~ 0)."""
    from nerf.contraction import contract

    field = BackdropField()
    sampler = _contracted_sampler("inf", resolution=32, early_stop_eps=1e-4)
    sampler.grid.fill(field.density, sampler.step_size, 2)
    grid = sampler.grid
    centres = contract(grid.cell_points(torch.arange(32 ** 3), torch.full((32 ** 3, 3), 0.5)), "inf")
    norm = centres.abs().amax(dim=-1)
    assert grid.occupied[norm > 1.95].all()  # far beyond radius 10 (contracted 1.9): background
    assert not grid.occupied[(norm > 1.2) & (norm < 1.8)].any()  # between the blobs and the background
    rays, opts = _rays(40, seed=6), RenderConfig(perturb=False)
    out = render_samples(field, rays, *occupancy_samples(field, rays, opts, sampler), opts)
    through_blob = out["acc"] < 0  # no ray is excluded: blob or background, every ray is opaque
    assert (out["acc"] > 0.99).all() and not through_blob.any()
    boxed = _sampler(OccupancyGrid([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], 24), num_steps=256)
    boxed.grid.fill(field.density, boxed.step_size, 2)
    misses = rays.origins.new_tensor([float((rays.origins[r] + rays.directions[r] * s).norm(dim=-1).min()) > 0.9
                                      for r in range(len(rays)) for s in [torch.linspace(0, 10, 2000)[:, None]]])
    out_box = render_samples(field, rays, *occupancy_samples(field, rays, opts, boxed), opts)
    assert misses.sum() >= 5 and (out_box["acc"][misses.bool()] < 0.01).all()  # the rays past the blobs


def test_a_stored_grid_must_match_the_contraction():
    from nerf.contraction import CONTRACTED_AABB

    contracted = OccupancyGrid(CONTRACTED_AABB, 8, contraction="inf")
    with pytest.raises(ValueError, match="contraction inf\\) does not match the config .* contraction None"):
        OccupancyGrid(CONTRACTED_AABB, 8).load_state_dict(contracted.state_dict())
    older = OccupancyGrid(CONTRACTED_AABB, 8).state_dict()
    del older["contraction"]  # saved before contraction existed: a world box
    OccupancyGrid(CONTRACTED_AABB, 8).load_state_dict(older)
    with pytest.raises(ValueError, match="contraction None\\) does not match"):
        contracted.load_state_dict(older)
