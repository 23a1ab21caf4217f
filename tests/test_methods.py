import dataclasses

import pytest
import torch

from nerf.config import (Config, ModelConfig, ModelsConfig, OccupancyConfig, OptimizerConfig, RenderConfig,
                         VoxelGridConfig)
from nerf.losses import photometric_loss
from nerf.methods import (ONE_NETWORK_ERROR, CoarseFineMethod, GridSampledMethod, VoxelGridMethod, build_method)
from nerf.rays import prepare_rays

CPU = torch.device("cpu")
SMALL = ModelConfig(type="FlexibleNeRFModel", num_layers=2, hidden_size=8, skip_connect_every=0, hidden_size_dir=4,
                    num_encoding_fn_xyz=2, num_encoding_fn_dir=1)


def voxel_config(**voxel) -> Config:
    v = dict(num_voxels=4096, num_voxels_start=512, grow_steps=[4, 8], feature_dim=3, hidden_size=8, num_layers=1,
             grid_lr=0.2)
    v.update(voxel)
    return dataclasses.replace(Config(), models=ModelsConfig(coarse=ModelConfig(type="VoxelGridModel"), fine=None),
                               occupancy=OccupancyConfig(enabled=True, resolution=8, update_every=2, warmup_steps=2),
                               optimizer=OptimizerConfig(lr=1e-3, eps=1e-15), voxel_grid=VoxelGridConfig(**v))


def _rays(num=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    origins = torch.tensor([0.0, 0.0, 4.0]).expand(num, 3)
    directions = torch.nn.functional.normalize(torch.randn(num, 3, generator=g) * 0.15 + torch.tensor([0, 0, -1.0]),
                                               dim=-1)
    return prepare_rays(origins, directions, 2.0, 6.0)


def test_the_config_chooses_the_method():
    assert type(build_method(Config(), False, CPU)) is CoarseFineMethod
    grid = dataclasses.replace(Config(), models=ModelsConfig(coarse=SMALL, fine=None),
                               occupancy=OccupancyConfig(enabled=True))
    assert type(build_method(grid, False, CPU)) is GridSampledMethod
    assert type(build_method(voxel_config(), False, CPU)) is VoxelGridMethod
    with pytest.raises(ValueError, match="trains one network"):
        build_method(dataclasses.replace(grid, models=ModelsConfig(coarse=SMALL, fine=SMALL)), False, CPU)
    assert ONE_NETWORK_ERROR.startswith("occupancy.enabled")
    # rendering a coarse/fine model through a grid uses its fine network
    method = build_method(dataclasses.replace(grid, models=ModelsConfig(coarse=SMALL, fine=SMALL)), False, CPU,
                          training=False)
    assert method.field is method.runners[1]
    with pytest.raises(ValueError, match="occupancy.enabled: true"):
        build_method(dataclasses.replace(voxel_config(), occupancy=OccupancyConfig(enabled=False)), False, CPU)


def test_parameter_groups_hold_every_parameter_once_with_their_lr_scale():
    mlp = build_method(dataclasses.replace(Config(), models=ModelsConfig(coarse=SMALL, fine=SMALL)), False, CPU)
    (group,) = mlp.parameter_groups()
    assert [id(p) for p in group["params"]] == [id(p) for p in list(mlp.coarse.parameters()) +
                                                list(mlp.fine.parameters())]
    assert "lr_scale" not in group and not mlp.fused_optimizer and not mlp.keeps_gradient_buffers
    voxel = build_method(voxel_config(grid_lr=0.3), False, CPU)
    grids, network = voxel.parameter_groups()
    assert grids["lr_scale"] == pytest.approx(300.0) and network["lr_scale"] == 1.0
    ids = [id(p) for g in (grids, network) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in voxel.coarse.parameters())
    assert voxel.fused_optimizer and voxel.keeps_gradient_buffers


def test_voxel_hooks_grow_at_the_grow_steps_only_and_follow_the_voxel_size():
    method = build_method(voxel_config(), False, CPU)
    method.start(0, None)
    start_shape = method.coarse.resolution
    assert method.sampler.step_size == pytest.approx(method.coarse.marching_step)
    assert [method.before_step(step) for step in range(9)] == [s in (4, 8) for s in range(9)]
    assert torch.tensor(method.coarse.resolution).prod() > torch.tensor(start_shape).prod()
    assert method.sampler.step_size == pytest.approx(method.coarse.marching_step)
    assert method.sampler.skipping  # past occupancy.warmup_steps


@pytest.mark.parametrize("full_until, expected", [
    (0, [(0, True), (2, False), (4, False), (6, False), (8, False)]),  # every cell during the warm-up only
    (5, [(0, True), (1, True), (2, True), (3, True), (4, True), (6, False), (8, False)])])
def test_occupancy_updates_follow_warmup_and_full_updates_until(full_until, expected):
    """update_every 2, warmup_steps 2: updates every 2nd step from every cell during the warm-up, then from a
    random subset; before full_updates_until every step updates from every cell, skipping on after warm-up."""
    occupancy = OccupancyConfig(enabled=True, resolution=8, update_every=2, warmup_steps=2,
                                full_updates_until=full_until)
    method = build_method(dataclasses.replace(Config(), models=ModelsConfig(coarse=SMALL, fine=None),
                                              occupancy=occupancy), False, CPU)
    calls = []
    method.sampler.grid.update = lambda density, step_size, all_cells: calls.append((step, all_cells))
    skipping = []
    for step in range(9):
        method.before_step(step)
        skipping.append(method.sampler.skipping)
    assert calls == expected
    assert skipping == [False, False] + [True] * 7


def test_voxel_seen_cells_and_loss_terms():
    cfg = voxel_config(seen_weight=0.0095, tv_weight=0.5)  # a fresh grid is a fog of alpha 1e-2 per step
    method = build_method(cfg, False, CPU)
    method.start(0, None)
    rays, opts = _rays(), RenderConfig(perturb=False, num_fine=0, white_background=True)
    method.before_step(0)
    out = method.render_rays(rays, opts)
    method.after_render(1, rays, out)  # before grow_steps[0] // 2: nothing recorded
    assert not method.seen.any()
    method.after_render(2, rays, out)
    method.after_render(3, rays, out)  # the same rays again: every count doubles
    cells = method.sampler.grid.cells_along(rays.origins, rays.directions, out["t"])
    expected = 2 * torch.bincount(cells[out["weights"] >= 0.0095], minlength=method.seen.numel())
    assert torch.equal(method.seen, expected.to(method.seen.dtype))
    marched = out["weights"][out["t"] > 0]  # the samples (the padding holds t = 0)
    assert expected.max() > 2 and (marched < 0.0095).any() and (marched >= 0.0095).any()  # the threshold sorts them
    target = torch.rand(len(rays), 3, generator=torch.Generator().manual_seed(1))
    loss, mse = method.loss(out, target, rays, step=2)
    plain, plain_mse = photometric_loss(out, target)
    torch.testing.assert_close(loss, plain + 0.5 * method.coarse.total_variation())
    torch.testing.assert_close(mse, plain_mse)
    with torch.no_grad():
        method.coarse.feature_grid.normal_(generator=torch.Generator().manual_seed(2))  # fresh features are all 0
    out = method.render_rays(rays, opts)
    plain, _ = photometric_loss(out, target)
    tv = 0.5 * method.coarse.total_variation()
    method.cfg.voxel_grid.feature_tv_weight = 0.25
    loss, _ = method.loss(out, target, rays, step=2)
    assert method.coarse.feature_total_variation() > 1  # about 2 x 3 axes for unit normal features
    torch.testing.assert_close(loss, plain + tv + 0.25 * method.coarse.feature_total_variation())
    method.cfg.voxel_grid.tv_every = 2  # both terms on even steps only, weighted twice
    torch.testing.assert_close(method.loss(out, target, rays, step=2)[0],
                               plain + 2 * (tv + 0.25 * method.coarse.feature_total_variation()))
    torch.testing.assert_close(method.loss(out, target, rays, step=3)[0], plain)
    method.cfg.voxel_grid.tv_every = 1
    method.cfg.voxel_grid.tv_until = 2  # both TV terms stop at tv_until
    torch.testing.assert_close(method.loss(out, target, rays, step=2)[0], plain)


def test_voxel_background_entropy_term():
    from nerf.losses import background_entropy

    method = build_method(voxel_config(background_entropy_weight=0.25), False, CPU)
    method.start(0, None)
    rays, opts = _rays(), RenderConfig(perturb=False, num_fine=0, white_background=True)
    method.before_step(0)
    out = method.render_rays(rays, opts)
    target = torch.rand(len(rays), 3, generator=torch.Generator().manual_seed(1))
    loss, _ = method.loss(out, target, rays, step=2)
    torch.testing.assert_close(loss, photometric_loss(out, target)[0] + 0.25 * background_entropy(out["acc"]).mean())


@pytest.mark.parametrize("seen_count", [1, 2])
def test_a_floater_seen_once_does_not_stretch_the_box(seen_count):
    method = build_method(voxel_config(seen_count=seen_count), False, CPU)
    method.start(0, None)
    grid = method.sampler.grid  # 8^3 cells of 0.375 over +-1.5
    content = torch.tensor([grid._flat_index(torch.tensor([i, j, k])) for i in (3, 4) for j in (3, 4) for k in (3, 4)])
    floater = grid._flat_index(torch.tensor([7, 3, 3]))
    method.seen[content] = 5
    method.seen[floater] = 1  # one sample of one ray, once
    assert method.before_step(4)  # the first growth moves the grids onto the seen box (plus one cell)
    box = method.coarse.aabb.tolist()
    assert box[:3] == pytest.approx([-0.75, -0.75, -0.75]) and box[4:] == pytest.approx([0.75, 0.75])
    assert box[3] == pytest.approx(0.75 if seen_count == 2 else 1.5)


def test_voxel_state_round_trips_through_a_checkpoint():
    method = build_method(voxel_config(), False, CPU)
    method.start(0, None)
    for step in range(3):
        method.before_step(step)
    method.seen[::7] = True
    state = {"model_coarse_state_dict": method.coarse.state_dict(), **method.checkpoint_state()}
    resumed = build_method(voxel_config(), False, CPU)
    resumed.coarse.load_state_dict(state["model_coarse_state_dict"])
    resumed.start(3, state, "mem.ckpt")
    assert torch.equal(resumed.seen, method.seen)
    assert torch.equal(resumed.sampler.grid.estimates, method.sampler.grid.estimates)
    resumed.start(5, state, "mem.ckpt")  # past the first growth there is no box left to find
    assert resumed.seen is None


def test_a_grid_sampled_run_refuses_a_fine_network_for_every_field():
    cfg = voxel_config()
    with pytest.raises(ValueError, match="trains one network"):
        build_method(dataclasses.replace(cfg, models=ModelsConfig(coarse=cfg.models.coarse, fine=SMALL)), False, CPU)


def test_a_resume_may_change_only_the_growths_still_to_come():
    from nerf.methods.voxel import check_growth_schedule

    stored = {"num_voxels_start": 512, "num_voxels": 4096, "grow_steps": [4, 8], "aspect": [1.0, 1.0, 1.0]}
    same = VoxelGridConfig(num_voxels_start=512, num_voxels=4096, grow_steps=[4, 8])
    check_growth_schedule(stored, same, 6, "c.ckpt")  # unchanged: anywhere
    finer = VoxelGridConfig(num_voxels_start=512, num_voxels=32768, grow_steps=[4, 8])
    check_growth_schedule(stored, finer, 4, "c.ckpt")  # nothing grown yet (step 4 grows at its start)
    with pytest.raises(ValueError, match=r"^c.ckpt: voxel_grid.num_voxels: 32768 \(checkpoint: 4096\): a run resumed "
                                         r"at step 5 cannot change the grid's growths at steps \[4\]"):
        check_growth_schedule(stored, finer, 5, "c.ckpt")
    earlier = VoxelGridConfig(num_voxels_start=512, num_voxels=4096, grow_steps=[2, 8])  # step 2 would never come
    with pytest.raises(ValueError, match=r"growths at steps \[2\]"):
        check_growth_schedule(stored, earlier, 3, "c.ckpt")
    check_growth_schedule(stored, VoxelGridConfig(num_voxels_start=512, num_voxels=4096, grow_steps=[5, 9]), 3, "c")
    check_growth_schedule(None, finer, 100, "old.ckpt")  # a checkpoint without a stored section: nothing to compare
