import dataclasses

import pytest
import torch

from nerf.config import Config, ModelConfig, ModelsConfig, OccupancyConfig, OptimizerConfig, VoxelGridConfig
from nerf.methods import build_method
from nerf.models import build_model
from nerf.optimizer import build_optimizer as build_adam
from nerf.optimizer import keep_configured_groups, set_learning_rate, zero_gradients
from nerf.voxel_grid import VoxelGridModel

CPU = torch.device("cpu")
BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def grid_config(grid_lr=0.2, lr=1e-3) -> Config:
    return dataclasses.replace(Config(), optimizer=OptimizerConfig(lr=lr, eps=1e-15),
                               voxel_grid=VoxelGridConfig(grid_lr=grid_lr),
                               models=ModelsConfig(coarse=ModelConfig(type="VoxelGridModel"), fine=None),
                               occupancy=OccupancyConfig(enabled=True))


def build_optimizer(cfg: Config, coarse, fine, device):
    """Adam over the parameter groups of the method that trains these networks."""
    method = build_method(cfg, False, device, (coarse, fine))
    return build_adam(method.parameter_groups(), cfg.optimizer, device, method.fused_optimizer)


def small_grid_model() -> VoxelGridModel:
    return VoxelGridModel(BOX, (5, 6, 7), feature_dim=3, hidden_size=8, num_layers=1)


def test_voxel_grid_groups_scale_the_schedule_lr():
    model = small_grid_model()
    optimizer = build_optimizer(grid_config(grid_lr=0.2, lr=1e-3), model, None, CPU)
    grids, network = optimizer.param_groups
    assert [p is q for p, q in zip(grids["params"], model.grid_parameters())] == [True, True]
    assert {id(p) for p in network["params"]} == {id(p) for p in model.color_net.parameters()}
    set_learning_rate(optimizer, 5e-4)  # the schedule's lr: grids get lr * grid_lr / optimizer.lr
    assert grids["lr"] == pytest.approx(5e-4 * 200.0)
    assert network["lr"] == pytest.approx(5e-4)
    assert optimizer.defaults["eps"] == 1e-15


def test_mlp_models_share_one_group_at_the_schedule_lr():
    coarse, fine = build_model(ModelConfig(num_layers=2, hidden_size=8)), build_model(ModelConfig(num_layers=2, hidden_size=8))
    optimizer = build_optimizer(Config(), coarse, fine, CPU)
    assert len(optimizer.param_groups) == 1
    assert len(optimizer.param_groups[0]["params"]) == len(list(coarse.parameters())) + len(list(fine.parameters()))
    set_learning_rate(optimizer, 3e-4)
    assert optimizer.param_groups[0]["lr"] == 3e-4


def test_loaded_state_keeps_the_configured_lr_scale():
    model = small_grid_model()
    stored = build_optimizer(grid_config(grid_lr=0.1), model, None, CPU)
    resumed = build_optimizer(grid_config(grid_lr=0.1), model, None, CPU)
    resumed.load_state_dict(stored.state_dict())
    keep_configured_groups(resumed, build_optimizer(grid_config(grid_lr=0.3), model, None, CPU))
    set_learning_rate(resumed, 1e-3)
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.3)


def test_zero_gradients_reuses_grid_buffers_and_frees_mlp_gradients():
    model = small_grid_model()
    optimizer = build_optimizer(grid_config(), model, None, CPU)
    points = torch.rand(64, 3) * 1.8 - 0.9
    model(points, torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)).square().sum().backward()
    buffers = [p.grad for p in model.grid_parameters()]
    assert all(b is not None and b.abs().sum() > 0 for b in buffers)
    zero_gradients(optimizer, build_method(grid_config(), False, CPU, (model, None)).keeps_gradient_buffers)
    assert all(p.grad is b for p, b in zip(model.grid_parameters(), buffers))  # the same storage, zeroed
    assert all(float(b.abs().sum()) == 0.0 for b in buffers)

    mlp = build_model(ModelConfig(num_layers=2, hidden_size=8))
    optimizer = build_optimizer(Config(), mlp, None, CPU)
    mlp(torch.randn(16, 3), torch.nn.functional.normalize(torch.randn(16, 3), dim=-1)).sum().backward()
    assert all(p.grad is not None for p in mlp.parameters())
    zero_gradients(optimizer, build_method(Config(), False, CPU, (mlp, None)).keeps_gradient_buffers)
    assert all(p.grad is None for p in mlp.parameters())
