import os

import pytest
import torch
import yaml

import eval_nerf
import train_nerf
from nerf.checkpoint import load_checkpoint
from nerf.datasets.demo import generate_demo_scene
from nerf.models import NeRFModel, count_parameters
from nerf.pruning import (consumers, layer_widths, models_to_prune, prunable_layers, prune_model, remove_neurons,
                          transfer_optimizer)


def _model():
    torch.manual_seed(0)
    model = NeRFModel(num_layers=5, hidden_size=24, skip_connect_every=2, hidden_size_dir=12,
                      num_encoding_fn_xyz=3, num_encoding_fn_dir=2)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)  # non-zero biases: their ReLU constants must be folded
    return model


def test_removing_zeroed_neurons_keeps_the_function_exactly():
    model = _model()
    doomed = {"pts_linears.0": [1, 5], "pts_linears.2": [0, 3, 23], "pts_linears.4": [7], "views_linears.0": [2, 11]}
    with torch.no_grad():
        for name, rows in doomed.items():
            model.get_submodule(name).weight[rows] = 0.0
    points, dirs = torch.randn(64, 3), torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    before = model(points, dirs)
    params_before = count_parameters(model)
    for name, rows in doomed.items():
        remove_neurons(model, name, torch.tensor(rows))
    assert torch.allclose(model(points, dirs), before, atol=1e-5)
    assert layer_widths(model) == {"pts_linears.0": 22, "pts_linears.1": 24, "pts_linears.2": 21,
                                   "pts_linears.3": 24, "pts_linears.4": 23, "views_linears.0": 10}
    assert model.pts_linears[3].in_features == 21 + model.xyz_width  # skip layer's consumer
    assert count_parameters(model) < params_before


def test_consumers_follow_the_skip_and_the_heads():
    model = _model()
    assert consumers(model, "pts_linears.2") == [("pts_linears.3", model.xyz_width)]
    assert consumers(model, "pts_linears.1") == [("pts_linears.2", 0)]
    assert consumers(model, "pts_linears.4") == [("feature_linear", 0), ("alpha_linear", 0)]
    assert consumers(model, "views_linears.0") == [("rgb_linear", 0)]


def test_prune_model_removes_the_weakest_neurons():
    model = _model()

    def weakest(layer, count):  # smallest L1 norms of incoming weights
        return set(torch.argsort(layer.weight.detach().abs().sum(1))[:count].tolist())

    cols = [c for c in range(24) if c not in weakest(model.pts_linears[0], 6)]
    # layers are pruned in order, so layer 1 is ranked on the inputs that survive layer 0's pruning
    remaining = model.pts_linears[1].weight.detach()[:, cols]
    rows = [r for r in range(24) if r not in set(torch.argsort(remaining.abs().sum(1))[:6].tolist())]
    expected = remaining[rows]
    start = layer_widths(model)
    report, _ = prune_model(model, 0.25, start, norm=1, excluded=("views_linears.0",))
    assert report["pts_linears.1"] == (24, 18) and report["pts_linears.0"] == (24, 18)
    assert "views_linears.0" not in report
    assert torch.equal(model.pts_linears[1].weight.detach(), expected)
    report2, _ = prune_model(model, 0.5, start, norm=1)
    assert report2["pts_linears.1"] == (18, 12) and report2["views_linears.0"] == (12, 6)


def test_adam_state_is_sliced_with_the_weights():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 3), torch.randn(8, 3)).sum().backward()
    optimizer.step()
    old_avg = optimizer.state[model.pts_linears[0].weight]["exp_avg"].clone()
    old_next = optimizer.state[model.pts_linears[1].weight]["exp_avg"].clone()
    changes = remove_neurons(model, "pts_linears.0", torch.tensor([2, 4]))
    optimizer = transfer_optimizer(optimizer, list(model.parameters()), changes)
    keep = [r for r in range(24) if r not in (2, 4)]
    assert torch.equal(optimizer.state[model.pts_linears[0].weight]["exp_avg"], old_avg[keep])
    assert torch.equal(optimizer.state[model.pts_linears[1].weight]["exp_avg"], old_next[:, keep])
    assert optimizer.param_groups[0]["lr"] == 1e-3
    model(torch.randn(8, 3), torch.randn(8, 3)).sum().backward()
    optimizer.step()  # shapes agree


MODEL = {"type": "FlexibleNeRFModel", "num_layers": 3, "hidden_size": 16, "skip_connect_every": 1,
         "hidden_size_dir": 8, "num_encoding_fn_xyz": 3, "num_encoding_fn_dir": 1}


def test_prune_run_shrinks_checkpoint_and_resumes(tmp_path):
    scene = tmp_path / "scene"
    generate_demo_scene(str(scene), size=12, num_train=4, num_val=1, num_test=1)
    cfg = {"experiment": {"id": "base", "logdir": str(tmp_path / "logs"), "train_iters": 2, "validate_every": 0,
                          "save_every": 0, "device": "cpu"},
           "dataset": {"type": "blender", "basedir": str(scene)},
           "models": {"coarse": MODEL, "fine": MODEL},
           "nerf": {"train": {"num_random_rays": 32, "num_coarse": 4, "num_fine": 4, "white_background": True},
                    "validation": {"num_coarse": 4, "num_fine": 4, "white_background": True}},
           "pruning": {"amount": 0.5, "increment": 0.25, "every": 2}}
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump(cfg))
    train_nerf.main(["--config", str(config)])
    base = tmp_path / "logs" / "base" / "checkpoint000002.ckpt"
    train_nerf.main(["--config", str(config), "--load-checkpoint", str(base), "--prune", "both",
                     "--set", "experiment.id=pruned", "--set", "experiment.train_iters=7"])
    pruned = tmp_path / "logs" / "pruned" / "checkpoint000007.ckpt"
    ckpt = load_checkpoint(str(pruned))
    assert ckpt["config"]["models"]["coarse"]["layer_widths"] == [8, 8, 8]  # 16 -> 12 (step 4) -> 8 (step 6)
    assert ckpt["config"]["models"]["fine"]["hidden_size_dir"] == 4
    assert ckpt["model_coarse_state_dict"]["pts_linears.2.weight"].shape == (8, 8 + 21)  # after the skip
    assert os.path.getsize(pruned) < os.path.getsize(base)
    # resumes (and evaluates) with no special flag
    train_nerf.main(["--config", str(config), "--load-checkpoint", str(pruned), "--set", "experiment.id=pruned",
                     "--set", "experiment.train_iters=9"])
    assert load_checkpoint(str(tmp_path / "logs" / "pruned" / "checkpoint000009.ckpt"))["step"] == 9
    summary = eval_nerf.main(["--config", str(config), "--checkpoint", str(pruned), "--savedir",
                              str(tmp_path / "eval"), "--split", "test"])
    assert summary["num_views"] == 1
    # and can be pruned further
    train_nerf.main(["--config", str(config), "--load-checkpoint", str(pruned), "--prune", "coarse",
                     "--set", "experiment.id=again", "--set", "experiment.train_iters=11"])
    again = load_checkpoint(str(tmp_path / "logs" / "again" / "checkpoint000011.ckpt"))
    assert again["config"]["models"]["coarse"]["layer_widths"] == [4, 4, 4]  # 8 - floor(0.5 * 8)
    assert again["config"]["models"]["fine"]["layer_widths"] == [8, 8, 8]
    with pytest.raises(SystemExit, match="pruning schedule needs steps up to 11"):
        train_nerf.main(["--config", str(config), "--load-checkpoint", str(pruned), "--prune", "coarse",
                         "--set", "experiment.id=short", "--set", "experiment.train_iters=10"])

    # an interrupted pruning run resumes (without --prune) to the same weights as an uninterrupted one
    train_nerf.main(["--config", str(config), "--load-checkpoint", str(base), "--prune", "both",
                     "--set", "experiment.id=part", "--set", "experiment.train_iters=7",
                     "--set", "experiment.save_every=5"])
    part = tmp_path / "logs" / "part" / "checkpoint000005.ckpt"
    stored = load_checkpoint(str(part))["pruning"]
    assert stored["events_done"] == 1 and stored["lr_scale"] == 0.1 and stored["end_step"] == 7
    train_nerf.main(["--config", str(config), "--load-checkpoint", str(part), "--set", "experiment.id=resumed",
                     "--set", "experiment.train_iters=7", "--set", "pruning.lr_scale=0.5"])  # the stored 0.1 wins
    resumed = load_checkpoint(str(tmp_path / "logs" / "resumed" / "checkpoint000007.ckpt"))
    assert resumed["pruning"]["events_done"] == 2
    for name in ("model_coarse_state_dict", "model_fine_state_dict"):
        for key, value in ckpt[name].items():
            assert torch.equal(resumed[name][key], value), key


def test_prune_refusals(tmp_path):
    with pytest.raises(ValueError, match="--load-checkpoint"):
        models_to_prune("both", _model(), _model(), None, [])
    with pytest.raises(ValueError, match="no fine network"):
        models_to_prune("fine", _model(), None, "x.ckpt", [])
    every = prunable_layers(_model())
    models_to_prune("coarse", _model(), None, "x.ckpt", every[1:])  # one layer left to prune
    with pytest.raises(ValueError, match="excludes every prunable layer of the coarse model .*: nothing to prune"):
        models_to_prune("coarse", _model(), None, "x.ckpt", every)
    with pytest.raises(ValueError, match="not prunable"):
        models_to_prune("coarse", _model(), None, "x.ckpt", ["rgb_linear"])
