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


def test_a_resume_takes_the_configured_adam_hyperparameters():
    model = small_grid_model()
    stored = build_optimizer(grid_config(), model, None, CPU)
    resumed = build_optimizer(grid_config(), model, None, CPU)
    resumed.load_state_dict(stored.state_dict())  # the stored groups: eps 1e-15, betas (0.9, 0.999)
    changed = dataclasses.replace(grid_config(), optimizer=OptimizerConfig(lr=1e-3, eps=1e-8, beta1=0.5, beta2=0.9))
    keep_configured_groups(resumed, build_optimizer(changed, model, None, CPU))
    assert all(group["eps"] == 1e-8 and group["betas"] == (0.5, 0.9) for group in resumed.param_groups)


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


def masked_grid_config(**voxel) -> Config:
    cfg = grid_config()
    return dataclasses.replace(cfg, voxel_grid=dataclasses.replace(cfg.voxel_grid, masked_adam=True, **voxel))


def lookup_loss(model: VoxelGridModel, points: torch.Tensor) -> torch.Tensor:
    """A loss that reaches the grids through their lookups only (as training's)."""
    density, _ = model.raw_density(points)
    return (density - 1.0).pow(2).sum() + (model.features(points) - 0.5).pow(2).sum()


def reference_masked_adam(value, grad, m, v, rows, t, lr, beta1=0.9, beta2=0.999, eps=1e-15):
    """DVGO's masked Adam written out per row r in `rows` (a list), in float64: Adam's formula with the
    parameter's step count t; the other rows unchanged."""
    value, m, v = value.double().clone(), m.double().clone(), v.double().clone()
    for r in rows:
        g = grad[r].double()
        m[r] = beta1 * m[r] + (1 - beta1) * g
        v[r] = beta2 * v[r] + (1 - beta2) * g * g
        value[r] -= lr / (1 - beta1 ** t) * m[r] / ((v[r] / (1 - beta2 ** t)).sqrt() + eps)
    return value, m, v


def test_masked_adam_moves_only_the_vertices_a_lookup_reached():
    torch.manual_seed(0)
    model = small_grid_model()
    with torch.no_grad():
        model.density_grid.normal_()
        model.feature_grid.normal_()
    optimizer = build_optimizer(masked_grid_config(), model, None, CPU)
    assert type(optimizer).__name__ == "MaskedAdam"
    lr = 0.2
    set_learning_rate(optimizer, 1e-3)  # the grids: 1e-3 * grid_lr / optimizer.lr = 0.2
    history = {name: (getattr(model, name).detach().clone(), torch.zeros_like(getattr(model, name)),
                      torch.zeros_like(getattr(model, name))) for name in ("density_grid", "feature_grid")}
    # two steps, each with points in one corner of the box: the vertices near the other corners never move
    for t, corner in enumerate((-0.6, 0.3), start=1):
        points = corner + 0.3 * torch.rand(20, 3)
        zero_gradients(optimizer, keep_buffers=True)
        lookup_loss(model, points).backward()
        grads = {name: getattr(model, name).grad.clone() for name in history}
        reached = model.density_grid.gradient_rows.clone()
        assert reached.any() and not reached.all()
        optimizer.step()
        for name, (value, m, v) in history.items():
            count = model.density_grid.numel()
            rows = reached.nonzero().squeeze(1).tolist()
            expected = reference_masked_adam(value.view(count, -1), grads[name].view(count, -1),
                                             m.view(count, -1), v.view(count, -1), rows, t, lr)
            got = getattr(model, name).detach().view(count, -1)
            torch.testing.assert_close(got.double(), expected[0], rtol=1e-5, atol=1e-6)
            untouched = ~reached
            assert torch.equal(got[untouched], value.view(count, -1)[untouched])  # bit for bit
            state = optimizer.state[getattr(model, name)]
            assert float(state["step"]) == t
            torch.testing.assert_close(state["exp_avg"].view(count, -1).double(), expected[1])
            torch.testing.assert_close(state["exp_avg_sq"].view(count, -1).double(), expected[2])
            history[name] = (got.clone().view_as(value), state["exp_avg"].clone(), state["exp_avg_sq"].clone())


def test_masked_adam_zero_grad_clears_the_reached_rows_and_the_mask():
    torch.manual_seed(1)
    model = small_grid_model()
    optimizer = build_optimizer(masked_grid_config(), model, None, CPU)
    zero_gradients(optimizer, keep_buffers=True)
    lookup_loss(model, torch.rand(30, 3) * 2 - 1).backward()
    buffer = model.feature_grid.grad
    assert buffer.abs().sum() > 0 and model.feature_grid.gradient_rows.any()
    optimizer.step()
    zero_gradients(optimizer, keep_buffers=True)
    assert model.feature_grid.grad is buffer  # kept, not freed
    assert torch.count_nonzero(buffer) == 0 and torch.count_nonzero(model.density_grid.grad) == 0
    assert not model.feature_grid.gradient_rows.any() and not model.density_grid.gradient_rows.any()
    assert all(p.grad is None for p in model.color_net.parameters())  # the MLP's freed as before
    lookup_loss(model, torch.rand(30, 3) * 2 - 1).backward()
    optimizer.zero_grad(set_to_none=True)  # frees every gradient, the grids' too, and clears the masks
    assert all(p.grad is None for p in model.parameters())
    assert not model.feature_grid.gradient_rows.any() and not model.density_grid.gradient_rows.any()


def test_masked_adam_with_every_row_reached_is_adam():
    """All rows reached at every step: the same values as torch's Adam (the MLP group: Adam's own step)."""
    torch.manual_seed(2)
    models = [small_grid_model() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    masked = build_optimizer(masked_grid_config(), models[0], None, CPU)
    plain = build_optimizer(grid_config(), models[1], None, CPU)
    for optimizer in (masked, plain):
        set_learning_rate(optimizer, 1e-3)
    vertices = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in (5, 6, 7)], indexing="ij"),
                           dim=-1).reshape(-1, 3)
    for _ in range(3):
        points = vertices + 0.01 * torch.randn_like(vertices).clamp(-1, 1)  # near every vertex
        for model, optimizer in zip(models, (masked, plain)):
            zero_gradients(optimizer, keep_buffers=True)
            loss = lookup_loss(model, points.clamp(-1, 1)) + model.color(points, points).pow(2).sum()
            loss.backward()
            optimizer.step()
    assert models[0].density_grid.gradient_rows.numel() == 5 * 6 * 7
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_masked_adam_state_loads_into_adam_and_back():
    model = small_grid_model()
    optimizer = build_optimizer(masked_grid_config(), model, None, CPU)
    zero_gradients(optimizer, keep_buffers=True)
    lookup_loss(model, torch.rand(10, 3)).backward()
    optimizer.step()
    plain = build_optimizer(grid_config(), small_grid_model(), None, CPU)
    saved = optimizer.state_dict()
    plain.load_state_dict(saved)
    keep_configured_groups(plain, build_optimizer(grid_config(), small_grid_model(), None, CPU))
    assert "masked_rows" not in plain.param_groups[0]
    fresh = build_optimizer(masked_grid_config(), small_grid_model(), None, CPU)
    fresh.load_state_dict(plain.state_dict())
    keep_configured_groups(fresh, build_optimizer(masked_grid_config(), small_grid_model(), None, CPU))
    assert fresh.param_groups[0]["masked_rows"] == [5 * 6 * 7] * 2
    assert float(fresh.state_dict()["state"][0]["step"]) == 1


def test_masked_adam_rows_of_the_vm_factors():
    from nerf.tensor_vm import TensorVMModel
    model = TensorVMModel(BOX, (5, 6, 7), density_components=2, appearance_components=3, feature_dim=4,
                          hidden_size=8, num_layers=1)
    assert model.grid_rows() == [30, 35, 42, 7, 6, 5, 30, 35, 42, 7, 6, 5]
    optimizer = build_adam([{"params": model.grid_parameters(), "masked_rows": model.grid_rows()}],
                           OptimizerConfig(lr=0.1, eps=1e-15), CPU)
    before = [p.detach().clone() for p in model.grid_parameters()]
    optimizer.zero_grad(set_to_none=False)
    point = torch.tensor([[-0.99, -0.99, -0.99]])  # next to the first vertex of every factor
    (model.raw_density(point)[0].sum() + model.features(point).sum()).backward()
    optimizer.step()
    for p, old in zip(model.grid_parameters(), before):
        moved = (p.detach() != old).reshape(p.gradient_rows.numel(), -1).any(dim=1)
        assert torch.equal(moved, p.gradient_rows) and moved[0] and moved.sum() <= 4  # its cell's corners


def test_masked_adam_is_refused_with_gradients_that_bypass_the_lookups():
    import os

    from nerf.config import ConfigError, load_config
    from tests.conftest import ROOT
    preset = os.path.join(ROOT, "config", "lego_fast.yml")
    assert load_config(preset, ["voxel_grid.masked_adam=true"]).voxel_grid.masked_adam
    with pytest.raises(ConfigError, match="voxel_grid.tv_weight"):
        load_config(preset, ["voxel_grid.masked_adam=true", "voxel_grid.tv_weight=1e-5"])
    with pytest.raises(ConfigError, match="runtime.compile"):
        load_config(preset, ["voxel_grid.masked_adam=true", "runtime.compile=true"])
