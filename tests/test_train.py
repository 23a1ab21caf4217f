import os
import re

import pytest
import torch
import yaml

import train_nerf
from nerf.checkpoint import load_checkpoint
from nerf.config import load_config
from nerf.datasets import load_scene
from nerf.datasets.demo import generate_demo_scene
from nerf.methods import build_method
from nerf.models import NeRFModel


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
    run_dir = tmp_path / "logs" / "run"
    (run_dir / "checkpoint000005.ckpt").write_bytes(first)  # as if the earlier run had gone further
    train_nerf.main(["--config", config, "--overwrite", "--set", "experiment.train_iters=2", "experiment.save_every=1"])
    # --overwrite replaced the earlier run: its checkpoints and TensorBoard events are gone, so that
    # --load-checkpoint auto and plot_psnr.py see this run alone
    assert sorted(name for name in os.listdir(run_dir) if name.endswith(".ckpt")) == [
        "checkpoint000001.ckpt", "checkpoint000002.ckpt"]
    assert (run_dir / "checkpoint000001.ckpt").read_bytes() != first
    assert len([name for name in os.listdir(run_dir) if name.startswith("events.out.tfevents")]) == 1
    # a resumed run with --overwrite deletes only the checkpoints after its start, and keeps the events
    (run_dir / "lego_800_start.ckpt").write_bytes(first)  # a .ckpt copied in by hand is not the run's
    train_nerf.main(["--config", config, "--overwrite", "--set", "experiment.train_iters=2", "experiment.save_every=1",
                     "--load-checkpoint", str(run_dir / "checkpoint000001.ckpt")])
    assert sorted(name for name in os.listdir(run_dir) if name.endswith(".ckpt")) == [
        "checkpoint000001.ckpt", "checkpoint000002.ckpt", "lego_800_start.ckpt"]
    assert len([name for name in os.listdir(run_dir) if name.startswith("events.out.tfevents")]) == 2
    # resuming from step 1 into the same folder would overwrite checkpoint000002: refused too
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "experiment.train_iters=2", "--load-checkpoint",
                         str(tmp_path / "logs" / "run" / "checkpoint000001.ckpt")])
    assert "checkpoint000002.ckpt" in str(err.value)
    train_nerf.main(["--config", config, "--set", "experiment.train_iters=3", "--load-checkpoint",
                     str(tmp_path / "logs" / "run" / "checkpoint000002.ckpt")])  # continuing from the last is fine


def test_a_resume_names_the_settings_it_changes_and_a_finished_run_trains_nothing(tmp_path, scene_dir, capsys):
    config = _config(tmp_path, scene_dir, train_iters=3)
    train_nerf.main(["--config", config])
    checkpoint = str(tmp_path / "logs" / "run" / "checkpoint000003.ckpt")
    capsys.readouterr()
    train_nerf.main(["--config", config, "--load-checkpoint", checkpoint, "--set", "experiment.train_iters=4",
                     "optimizer.lr=0.001", "nerf.train.num_random_rays=32", "nerf.train.chunksize=999",
                     "nerf.validation.num_views=1", "pruning.lr_scale=0.5"])
    out = capsys.readouterr().out
    assert (f"warning: {checkpoint} was trained with other settings, which this run changes: "
            "nerf.train.num_random_rays: 32 (checkpoint: 64); optimizer.lr: 0.001 (checkpoint: 0.005)\n") in out
    # running longer is what resuming is for; memory knobs, validation and pruning settings change no model
    assert "experiment.train_iters" not in out and "chunksize" not in out and "pruning" not in out
    files = sorted(os.listdir(tmp_path / "logs" / "run"))
    result = train_nerf.main(["--config", config, "--load-checkpoint", "auto", "--set", "experiment.train_iters=4"])
    assert result == {"step": 4, "run_dir": None}
    assert "Nothing to train: " in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "logs" / "run")) == files  # not even config.yml rewritten


def test_bad_inputs_exit_with_one_line_errors(tmp_path, scene_dir, capsys):
    config = _config(tmp_path, scene_dir)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "dataset.basedir=" + str(tmp_path / "nowhere")])
    assert "nowhere: dataset folder not found" in str(err.value)
    with pytest.raises(SystemExit) as err:  # the 20x20 views at every 7th pixel: 3x3
        train_nerf.main(["--config", config, "--set", "experiment.validate_every=2", "nerf.validation.downsample=7"])
    assert str(err.value) == (f"error: {config}: nerf.validation.downsample 7: the 20x20 views would render at 3x3; "
                              "at most 6 here (4 pixels or more a side)")
    assert not os.path.exists(tmp_path / "logs" / "run")
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
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", f"experiment.logdir={a_file}"])
    assert f"experiment.logdir {a_file}: cannot create the run folder" in str(err.value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:  # a refused resume prints nothing before its error
        train_nerf.main(["--config", config, "--set", "experiment.id=small", "--load-checkpoint",
                         str(tmp_path / "logs" / "small" / "checkpoint000001.ckpt"), "--prune", "coarse"])
    assert "pruning" in str(err.value)
    assert "Resumed from" not in capsys.readouterr().out
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


# --------------------------------------------------------------------------------------------------
# Faults during training


def _checkpoints(run_dir):
    return sorted(name for name in os.listdir(run_dir) if name.endswith(".ckpt"))


def _all_finite(path):
    ckpt = load_checkpoint(path)
    return all(bool(torch.isfinite(t).all()) for state in (ckpt["model_coarse_state_dict"], ckpt["model_fine_state_dict"])
               for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("every_step", [True, False], ids=["cpu_checks_each_step", "deferred_check_as_on_gpu"])
def test_a_nan_from_step_k_stops_training_and_is_never_saved(tmp_path, scene_dir, monkeypatch, every_step):
    """The fine field returns NaN from the 6th step on (5 completed): training stops with a non-zero exit and
    a one-line error naming that step, on the CPU at once, with the GPU's deferred check at the next logging
    or saving step; the newest checkpoint is the one of step 4, finite."""
    import nerf.methods.base as base
    from nerf.losses import NonFiniteWatch

    original_before_step, original_forward = base.Method.before_step, NeRFModel.forward
    current = {"step": 0}

    def before_step(self, step):
        current["step"] = step
        return original_before_step(self, step)

    def forward(self, points, viewdirs):
        raw = original_forward(self, points, viewdirs)
        return raw * float("nan") if current["step"] >= 5 else raw

    monkeypatch.setattr(base.Method, "before_step", before_step)
    monkeypatch.setattr(NeRFModel, "forward", forward)
    original_init = NonFiniteWatch.__init__

    def init(self, device):
        original_init(self, device)
        self.check_every_step = every_step

    monkeypatch.setattr(NonFiniteWatch, "__init__", init)
    config = _config(tmp_path, scene_dir, train_iters=12, save_every=4, print_every=4)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config])
    message = str(err.value)
    assert err.value.code != 0 and "\n" not in message
    assert "the training loss became nan in step 6 (after 5 completed steps)" in message and "optimizer.lr" in message
    assert current["step"] == (5 if every_step else 7)  # deferred: found at the logging/saving step 8
    run_dir = str(tmp_path / "logs" / "run")
    assert _checkpoints(run_dir) == ["checkpoint000004.ckpt"]
    assert message.endswith("and resume from that checkpoint") and "checkpoint000004.ckpt" in message
    assert _all_finite(os.path.join(run_dir, "checkpoint000004.ckpt"))


def test_a_huge_learning_rate_stops_with_a_hint_and_leaves_finite_checkpoints(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir, train_iters=30, save_every=1)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "optimizer.lr=1e6"])
    message = str(err.value)  # the loss, or before a save the weights (an update that overflowed)
    assert re.search(r"(training loss became \w+ in|weight tensor\(s\) were NaN or infinite after) step \d+", message)
    assert "optimizer.lr (now 1e+06)" in message and "\n" not in message
    run_dir = str(tmp_path / "logs" / "run")
    saved = _checkpoints(run_dir)
    assert len(saved) < 30
    assert all(_all_finite(os.path.join(run_dir, name)) for name in saved)


def test_a_full_disk_during_training_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path, scene_dir, monkeypatch):
    import nerf.checkpoint as checkpoint

    real_save, calls = torch.save, []

    def save_until_full(obj, f):
        calls.append(1)
        if len(calls) > 1:
            f.write(b"part")
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    config = _config(tmp_path, scene_dir, train_iters=6, save_every=2)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config])
    run_dir = tmp_path / "logs" / "run"
    message = str(err.value)
    assert "\n" not in message and "checkpoint000004.ckpt: could not be written (No space left on device)" in message
    assert f"newest checkpoint: {run_dir / 'checkpoint000002.ckpt'}" in message
    monkeypatch.undo()
    assert _checkpoints(str(run_dir)) == ["checkpoint000002.ckpt"]
    assert load_checkpoint(str(run_dir / "checkpoint000002.ckpt"))["step"] == 2
    assert not [name for name in os.listdir(run_dir) if name.endswith(".tmp")]


def test_a_batch_larger_than_the_precrop_is_refused_before_any_output(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir)  # 20x20 images: the precrop (frac 0.5) has 10x10 pixels
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config, "--set", "nerf.train.precrop_iters=5", "nerf.train.num_random_rays=128"])
    assert "nerf.train.num_random_rays (128) exceeds the 10x10 precrop region of the 20x20 images" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "logs").exists()


def test_stale_temporary_files_are_removed_when_a_run_starts(tmp_path, scene_dir, capsys):
    run_dir = tmp_path / "logs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / ".ckpt-killed1.tmp").write_bytes(b"x" * 100)
    (run_dir / "my_notes.tmp").write_text("keep")
    train_nerf.main(["--config", _config(tmp_path, scene_dir, train_iters=1)])
    assert "removed 1 temporary file(s) of interrupted saves (.ckpt-killed1.tmp)" in capsys.readouterr().out
    assert sorted(p for p in os.listdir(run_dir) if p.endswith(".tmp")) == ["my_notes.tmp"]


def test_a_resume_keeps_the_cpu_chunk_of_its_checkpoint(tmp_path, scene_dir, monkeypatch, capsys):
    """The chunk sets the summation order of the weight gradients: a resumed run uses the stored one, even
    where this machine's cache is gone or would measure another."""
    from nerf import runtime

    config = _config(tmp_path, scene_dir)
    train_nerf.main(["--config", config, "--set", "experiment.id=first"])
    stored = load_checkpoint(str(tmp_path / "logs" / "first" / "checkpoint000003.ckpt"))["cpu_network_chunks"]
    assert len(stored) == 2 and all(c in runtime.CPU_CHUNK_CANDIDATES for c in stored)
    monkeypatch.setattr(runtime, "tuned_cpu_chunk", lambda runner: pytest.fail("measured on resume"))
    capsys.readouterr()
    train_nerf.main(["--config", config, "--set", "experiment.id=second", "--load-checkpoint",
                     str(tmp_path / "logs" / "first" / "checkpoint000003.ckpt")])
    assert f"CPU network chunk: coarse {stored[0]} points (as in " in capsys.readouterr().out
