import os

import pytest
import torch
import yaml

import train_nerf
from nerf.checkpoint import load_checkpoint
from nerf.config import load_config
from nerf.datasets import load_scene
from nerf.datasets.demo import generate_demo_scene
from nerf.methods import build_method


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene") / "demo"
    generate_demo_scene(str(root), size=20, num_train=12, num_val=2, num_test=2)
    return str(root)


SMALL_MODEL = {"type": "FlexibleNeRFModel", "num_layers": 3, "hidden_size": 32, "skip_connect_every": 2,
               "hidden_size_dir": 16, "num_encoding_fn_xyz": 5, "num_encoding_fn_dir": 2}


def _config(tmp_path, scene_dir, **experiment):
    cfg = {
        "experiment": {"id": "run", "logdir": str(tmp_path / "logs"), "randomseed": 3, "train_iters": 6,
                       "validate_every": 0, "save_every": 3, "print_every": 2, "device": "cpu", **experiment},
        "dataset": {"type": "blender", "basedir": scene_dir},
        "models": {"coarse": SMALL_MODEL, "fine": SMALL_MODEL},
        "nerf": {"train": {"num_random_rays": 64, "num_coarse": 8, "num_fine": 8, "white_background": True,
                           "radiance_field_noise_std": 0.5, "perturb": True},
                 "validation": {"num_coarse": 8, "num_fine": 8, "white_background": True, "num_views": 2}},
        "optimizer": {"lr": 5e-3},
    }
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _state(path):
    ckpt = load_checkpoint(path)
    tensors = dict(ckpt["model_coarse_state_dict"])
    tensors.update({"fine." + k: v for k, v in ckpt["model_fine_state_dict"].items()})
    for index, state in ckpt["optimizer_state_dict"]["state"].items():
        tensors.update({f"adam.{index}.{k}": v for k, v in state.items()})
    return ckpt, tensors


@pytest.mark.parametrize("batching", [False, True])
def test_resume_is_exact(tmp_path, scene_dir, batching):
    """N steps, then M resumed steps, equal N + M uninterrupted steps bit for bit (tolerance 0 on CPU)."""
    config = _config(tmp_path, scene_dir)
    sets = [f"nerf.train.use_batching={str(batching).lower()}"]
    train_nerf.main(["--config", config, "--set", "experiment.id=full"] + [a for s in sets for a in ("--set", s)])
    full_dir = tmp_path / "logs" / "full"
    assert sorted(p for p in os.listdir(full_dir) if p.endswith(".ckpt")) == ["checkpoint000003.ckpt",
                                                                             "checkpoint000006.ckpt"]
    train_nerf.main(["--config", config, "--set", "experiment.id=resumed", "--load-checkpoint",
                     str(full_dir / "checkpoint000003.ckpt")] + [a for s in sets for a in ("--set", s)])
    ckpt_a, full = _state(str(full_dir / "checkpoint000006.ckpt"))
    ckpt_b, resumed = _state(str(tmp_path / "logs" / "resumed" / "checkpoint000006.ckpt"))
    assert ckpt_a["step"] == ckpt_b["step"] == 6
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    _, halfway = _state(str(full_dir / "checkpoint000003.ckpt"))
    assert not torch.equal(halfway["pts_linears.0.weight"], full["pts_linears.0.weight"])


def test_resolved_config_saved_beside_and_inside_checkpoints(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir, train_iters=2, save_every=0)
    metrics = train_nerf.main(["--config", config, "--set", "optimizer.lr=0.001"])
    run_dir = metrics["run_dir"]
    saved = load_config(os.path.join(run_dir, "config.yml"))
    assert saved.optimizer.lr == pytest.approx(0.001)
    ckpt = load_checkpoint(os.path.join(run_dir, "checkpoint000002.ckpt"))
    assert ckpt["config"]["optimizer"]["lr"] == pytest.approx(0.001)
    assert ckpt["config"]["dataset"]["basedir"] == scene_dir
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))


def test_short_training_run_learns(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir, train_iters=150, validate_every=150, save_every=0)
    cfg = load_config(config)
    scene = load_scene(cfg.dataset, white_background=True)
    torch.manual_seed(cfg.experiment.randomseed)
    before = train_nerf.validate(cfg, scene, build_method(cfg, False, torch.device("cpu")))["psnr"]
    metrics = train_nerf.main(["--config", config, "--set", "nerf.train.radiance_field_noise_std=0"])
    assert metrics["val_psnr"] > before + 4.0, (before, metrics["val_psnr"])
    assert metrics["train_psnr"] > 15.0


def test_a_fresh_run_never_overwrites_earlier_checkpoints(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir, train_iters=1)
    train_nerf.main(["--config", config])
    first = (tmp_path / "logs" / "run" / "checkpoint000001.ckpt").read_bytes()
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config])
    assert "already holds checkpoints of another run" in str(err.value)
    assert (tmp_path / "logs" / "run" / "checkpoint000001.ckpt").read_bytes() == first
    train_nerf.main(["--config", config, "--overwrite", "--set", "experiment.train_iters=2"])
    # resuming from step 1 into the same folder would overwrite checkpoint000002: refused too
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "experiment.train_iters=2", "--load-checkpoint",
                         str(tmp_path / "logs" / "run" / "checkpoint000001.ckpt")])
    assert "checkpoint000002.ckpt" in str(err.value)
    train_nerf.main(["--config", config, "--set", "experiment.train_iters=3", "--load-checkpoint",
                     str(tmp_path / "logs" / "run" / "checkpoint000002.ckpt")])  # continuing from the last is fine


def test_bad_inputs_exit_with_one_line_errors(tmp_path, scene_dir, capsys):
    config = _config(tmp_path, scene_dir)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "dataset.basedir=" + str(tmp_path / "nowhere")])
    assert "nowhere: dataset folder not found" in str(err.value)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "models.coarse.bogus=1"])
    assert "unknown key 'models.coarse.bogus'" in str(err.value)
    other = tmp_path / "other.ckpt"
    train_nerf.main(["--config", config, "--set", "experiment.train_iters=1", "--set", "experiment.id=small"])
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "models.coarse.hidden_size=48", "--load-checkpoint",
                         str(tmp_path / "logs" / "small" / "checkpoint000001.ckpt")])
    assert "do not fit the configured model" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--load-checkpoint", str(other)])
    assert "checkpoint file not found" in str(err.value)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as err:
            train_nerf.main(["--config", config, "--set", "experiment.device=cuda:0"])
        assert "CUDA is not available" in str(err.value)


def test_yenchenlin_checkpoint_continues_its_schedule_and_adam_state(tmp_path, scene_dir, capsys):
    from nerf.models import NeRFModel

    torch.manual_seed(0)
    coarse = NeRFModel(num_layers=3, hidden_size=16, skip_connect_every=1, hidden_size_dir=8,
                       num_encoding_fn_xyz=5, num_encoding_fn_dir=2)
    fine = NeRFModel(num_layers=3, hidden_size=16, skip_connect_every=1, hidden_size_dir=8,
                     num_encoding_fn_xyz=5, num_encoding_fn_dir=2)
    adam = torch.optim.Adam(list(coarse.parameters()) + list(fine.parameters()), lr=1e-3, eps=1e-8)
    (coarse(torch.randn(4, 3), torch.randn(4, 3)).sum() + fine(torch.randn(4, 3), torch.randn(4, 3)).sum()).backward()
    adam.step()
    tar = tmp_path / "000005.tar"
    torch.save({"global_step": 4, "network_fn_state_dict": coarse.state_dict(),
                "network_fine_state_dict": fine.state_dict(), "optimizer_state_dict": adam.state_dict()}, tar)
    config = _config(tmp_path, scene_dir, train_iters=7, save_every=0)
    train_nerf.main(["--config", config, "--load-checkpoint", str(tar), "--set", "experiment.id=imported"])
    assert "continuing at step 5 with its Adam state" in capsys.readouterr().out
    ckpt = load_checkpoint(str(tmp_path / "logs" / "imported" / "checkpoint000007.ckpt"))
    assert ckpt["step"] == 7
    assert ckpt["config"]["models"]["coarse"]["hidden_size"] == 16
    state = ckpt["optimizer_state_dict"]
    assert float(state["state"][0]["step"]) == 3  # 1 imported update + 2 here
    assert state["param_groups"][0]["eps"] == pytest.approx(1e-7)  # our epsilon, not theirs
    # a coarse-only config cannot silently carry the imported fine model into an unloadable run
    with pytest.raises(SystemExit, match="defines a fine model but nerf.train.num_fine is 0"):
        train_nerf.main(["--config", config, "--load-checkpoint", str(tar), "--set", "experiment.id=coarse_only",
                         "--set", "models.fine=null", "--set", "nerf.train.num_fine=0",
                         "--set", "nerf.validation.num_fine=0"])


OCCUPANCY_SETS = ["models.fine=null", "nerf.train.num_fine=0", "nerf.validation.num_fine=0", "occupancy.enabled=true",
                  "occupancy.resolution=16", "occupancy.warmup_steps=2", "occupancy.update_every=2",
                  "occupancy.num_steps=64", "nerf.train.num_coarse=8"]


def _sets(values):
    return [a for s in values for a in ("--set", s)]


def test_occupancy_training_resumes_exactly_with_its_grid(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir)
    train_nerf.main(["--config", config, "--set", "experiment.id=full"] + _sets(OCCUPANCY_SETS))
    full_dir = tmp_path / "logs" / "full"
    train_nerf.main(["--config", config, "--set", "experiment.id=resumed", "--load-checkpoint",
                     str(full_dir / "checkpoint000003.ckpt")] + _sets(OCCUPANCY_SETS))
    a = load_checkpoint(str(full_dir / "checkpoint000006.ckpt"))
    b = load_checkpoint(str(tmp_path / "logs" / "resumed" / "checkpoint000006.ckpt"))
    assert a["model_fine_state_dict"] is None
    for key, value in a["model_coarse_state_dict"].items():
        assert torch.equal(value, b["model_coarse_state_dict"][key]), key
    assert torch.equal(a["occupancy_grid"]["estimates"], b["occupancy_grid"]["estimates"])
    assert torch.equal(a["occupancy_grid"]["occupied"], b["occupancy_grid"]["occupied"])
    assert a["occupancy_grid"]["estimates"].abs().sum() > 0  # the grid was updated


def test_occupancy_needs_a_single_network(tmp_path, scene_dir, capsys):
    config = _config(tmp_path, scene_dir)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "occupancy.enabled=true"])
    assert "trains one network" in str(err.value)


@pytest.mark.parametrize("sets", [["runtime.precision=bf16"], OCCUPANCY_SETS + ["occupancy.warmup_steps=20"]],
                         ids=["bf16", "occupancy"])
def test_fast_options_learn(tmp_path, scene_dir, sets):
    config = _config(tmp_path, scene_dir, train_iters=150, validate_every=150, save_every=0)
    cfg = load_config(config, sets)
    scene = load_scene(cfg.dataset, white_background=True)
    torch.manual_seed(cfg.experiment.randomseed)
    method = build_method(cfg, False, torch.device("cpu"))
    if method.sampler is not None:
        method.sampler.skipping = False
    before = train_nerf.validate(cfg, scene, method)["psnr"]
    metrics = train_nerf.main(["--config", config, "--set", "nerf.train.radiance_field_noise_std=0"] + _sets(sets))
    assert metrics["val_psnr"] > before + 4.0, (before, metrics["val_psnr"])
