"""Data-parallel training on gloo (CPU): shares, gradient averaging, N processes against one, resume across
world sizes, the multi-node launch path on loopback, and preemption by SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

import eval_nerf
import train_nerf
from nerf.batching import RayBatcher, check_epoch_remainder
from nerf.checkpoint import load_checkpoint
from nerf.config import ConfigError, TrainConfig, load_config
from nerf.datasets import load_scene
from nerf.datasets.demo import generate_demo_scene
from nerf.device import DeviceError
from nerf.occupancy import BLENDER_AABB
from nerf.distributed import World, _buckets, check_batch, world_size_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
SMALL_MODEL = {"type": "FlexibleNeRFModel", "num_layers": 3, "hidden_size": 32, "skip_connect_every": 2,
               "hidden_size_dir": 16, "num_encoding_fn_xyz": 5, "num_encoding_fn_dir": 2}


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene") / "demo"
    generate_demo_scene(str(root), size=20, num_train=12, num_val=3, num_test=2)
    return str(root)


def _config(path, scene_dir, field="paper", **experiment):
    """A tiny run without per-sample noise (perturb off, no density noise): then the rays decide everything and
    N processes must match one to float tolerance."""
    render = {"num_coarse": 8, "num_fine": 8, "white_background": True, "radiance_field_noise_std": 0.0,
              "perturb": False}
    cfg = {
        "experiment": {"id": "run", "logdir": str(path / "logs"), "randomseed": 3, "train_iters": 6,
                       "validate_every": 6, "save_every": 3, "print_every": 2, "device": "cpu", **experiment},
        "dataset": {"type": "blender", "basedir": scene_dir},
        "models": {"coarse": SMALL_MODEL, "fine": SMALL_MODEL},
        "nerf": {"train": {"num_random_rays": 64, **render},
                 "validation": {**render, "num_views": 3}},
        "optimizer": {"lr": 5e-3},
    }
    if field == "voxel":  # the fast preset's field, grown (and its box shrunk to the seen cells) at step 30
        cfg["models"] = {"coarse": {"type": "VoxelGridModel"}, "fine": None}
        for section in ("train", "validation"):
            cfg["nerf"][section]["num_fine"] = 0
        cfg["occupancy"] = {"enabled": True, "resolution": 16, "warmup_steps": 2, "update_every": 2}
        cfg["voxel_grid"] = {"num_voxels": 4096, "num_voxels_start": 512, "grow_steps": [30], "shrink_box": True,
                             "seen_weight": 0.1, "feature_dim": 4, "hidden_size": 16, "num_layers": 1,
                             "alpha_init": 0.01}
        cfg["optimizer"]["eps"] = 1e-15
        cfg["experiment"].update(train_iters=32, save_every=12, validate_every=32)
    path.mkdir(parents=True, exist_ok=True)
    config = path / "cfg.yml"
    config.write_text(yaml.safe_dump(cfg))
    return str(config)


def _environment():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun(args, *launch, nproc=2, script=WORKER):
    """torchrun (python -m torch.distributed.run) of the test worker (or `script`); returns the process."""
    launch = launch or ("--standalone",)
    command = [sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc_per_node={nproc}", script, *args]
    return subprocess.Popen(command, cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finished(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def _one_process(out_dir, args):
    out_dir.mkdir(parents=True, exist_ok=True)
    return _finished(subprocess.Popen([sys.executable, WORKER, str(out_dir), *args], cwd=ROOT, env=_environment(),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))


def _rank_states(out_dir, count):
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(count)]


def _assert_close(a: dict, b: dict, atol=2e-5, rtol=1e-4):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=rtol), \
            (key, (a[key].float() - b[key].float()).abs().max().item())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# Pieces


def test_shares_of_a_batch_are_disjoint_and_cover_it():
    for count, size in ((64, 2), (64, 4), (7, 3), (100, 8)):
        shares = [range(count)[World(rank=r, size=size).share(count)] for r in range(size)]
        assert [i for share in shares for i in share] == list(range(count))
        assert max(map(len, shares)) - min(map(len, shares)) <= (0 if count % size == 0 else 1)


def test_each_rank_draws_the_global_batch_and_keeps_its_share(tmp_path, scene_dir):
    """The ranks' rays are disjoint and together are exactly the rays of one process, in both batching modes."""
    scene = load_scene(load_config(_config(tmp_path, scene_dir)).dataset, white_background=True)
    for batching in (False, True):
        opts = TrainConfig(num_random_rays=64, use_batching=batching)
        torch.manual_seed(5)
        whole = RayBatcher(scene, opts, seed=1).batch(3)
        parts = []
        for rank in range(4):
            torch.manual_seed(5)  # every rank seeds alike
            parts.append(RayBatcher(scene, opts, seed=1, world=World(rank=rank, size=4)).batch(3))
        for k in range(3):  # origins, directions, colours
            assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])
        assert all(len(p[0]) == 16 for p in parts)


def test_render_noise_differs_between_ranks_and_steps_and_is_none_for_one_process():
    cpu = torch.device("cpu")
    assert World().render_generator(1, 5, cpu) is None
    draws = [torch.rand(4, generator=World(rank=r, size=2).render_generator(1, s, cpu)) for r in (0, 1) for s in (5, 6)]
    assert all(not torch.equal(draws[i], draws[j]) for i in range(4) for j in range(i))
    again = torch.rand(4, generator=World(rank=0, size=2).render_generator(1, 5, cpu))
    assert torch.equal(again, draws[0])


def test_bad_world_sizes_are_one_line_errors_before_any_work(tmp_path, scene_dir, monkeypatch):
    with pytest.raises(ConfigError, match=r"num_random_rays \(64\) .* world size \(3\).*e\.g\. 63"):
        check_batch(64, 3)
    check_batch(64, 4)
    with pytest.raises(ConfigError, match="last batch of each epoch .* has 1, fewer than the world size"):
        check_epoch_remainder(129, 64, 2)
    check_epoch_remainder(130, 64, 2)
    assert world_size_from({}) == 1
    with pytest.raises(ConfigError, match="RANK 2 and LOCAL_RANK 0 do not fit WORLD_SIZE 2"):
        world_size_from({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    # train_nerf refuses the batch before the rendezvous (which would wait for the other ranks)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    config = _config(tmp_path, scene_dir)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config])
    assert str(err.value).startswith("error: nerf.train.num_random_rays (64) is the global batch")
    assert "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "logs")
    monkeypatch.setenv("RANK", "2")  # the same error on every rank of a machine: its LOCAL_RANK 0 alone prints it
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", config])
    assert err.value.code == 1
    monkeypatch.setenv("LOCAL_RANK", "0")  # the first rank of a second machine, which may read other files
    with pytest.raises(SystemExit, match="^error: nerf.train.num_random_rays"):
        train_nerf.main(["--config", config])
    # a rank's own problem is said by that rank, whichever it is
    monkeypatch.setattr(train_nerf, "process_device", lambda configured: (_ for _ in ()).throw(
        DeviceError("torchrun: LOCAL_RANK 1 has no GPU of its own")))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit, match="^error: torchrun: LOCAL_RANK 1 has no GPU of its own$"):
        train_nerf.main(["--config", config])


def test_gradient_buckets_keep_order_and_split_by_size_and_dtype():
    tensors = [torch.zeros(10), torch.zeros(10), torch.zeros(100), torch.zeros(5, dtype=torch.float64), torch.zeros(3)]
    buckets = _buckets(tensors, bucket_bytes=200)
    assert [[t.numel() for t in b] for b in buckets] == [[10, 10], [100], [5], [3]]
    assert [t for b in buckets for t in b] == tensors


# --------------------------------------------------------------------------------------------------
# Two processes against one


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory, scene_dir):
    """The paper MLP pair trained 6 steps by 2 processes (torchrun) and by 1, same global batch and rays."""
    root = tmp_path_factory.mktemp("paper")
    config = _config(root, scene_dir)
    two, one = root / "two", root / "one"
    two.mkdir()
    _finished(_torchrun([str(two), "--config", config, "--set", "experiment.id=two"]))
    _one_process(one, ["--config", config, "--set", "experiment.id=one"])
    return root, config


def test_two_processes_train_the_paper_model_as_one(paper_runs):
    root, _ = paper_runs
    ranks = _rank_states(root / "two", 2)
    one = _rank_states(root / "one", 1)[0]
    for key, value in ranks[0]["weights"].items():  # every rank holds the same model
        assert torch.equal(value, ranks[1]["weights"][key]), key
    _assert_close(ranks[0]["weights"], one["weights"])
    start = load_checkpoint(str(root / "logs" / "two" / "checkpoint000003.ckpt"))["model_coarse_state_dict"]
    assert not torch.allclose(start["pts_linears.0.weight"], one["weights"]["pts_linears.0.weight"], atol=1e-4)
    # validation split over the ranks gives the single process's figure
    assert ranks[0]["metrics"]["val_psnr"] == pytest.approx(one["metrics"]["val_psnr"], abs=1e-3)
    # rank 0 alone wrote the run folder
    def kinds(folder):
        return sorted("events" if name.startswith("events.") else name for name in os.listdir(folder))

    assert kinds(root / "logs" / "two") == kinds(root / "logs" / "one") == \
        ["checkpoint000003.ckpt", "checkpoint000006.ckpt", "config.yml", "events"]


def test_a_checkpoint_of_two_processes_resumes_in_one_and_the_reverse(paper_runs):
    root, config = paper_runs
    one_full = _rank_states(root / "one", 1)[0]["weights"]
    # 2 -> 1: continue the 2-process run's step-3 checkpoint in one process
    two_to_one = train_nerf.main(["--config", config, "--set", "experiment.id=two_to_one", "--load-checkpoint",
                                  str(root / "logs" / "two" / "checkpoint000003.ckpt")])
    state = load_checkpoint(os.path.join(two_to_one["run_dir"], "checkpoint000006.ckpt"))
    _assert_close(state["model_coarse_state_dict"], one_full)
    # 1 -> 2
    out = root / "one_to_two"
    out.mkdir()
    _finished(_torchrun([str(out), "--config", config, "--set", "experiment.id=one_to_two", "--load-checkpoint",
                         str(root / "logs" / "one" / "checkpoint000003.ckpt")]))
    _assert_close(_rank_states(out, 2)[1]["weights"], one_full)


def test_rendering_split_over_two_processes_writes_what_one_process_writes(paper_runs, scene_dir):
    root, config = paper_runs
    checkpoint = str(root / "logs" / "two" / "checkpoint000006.ckpt")
    args = ["--config", config, "--checkpoint", checkpoint, "--split", "test", "--save-depth",
            "--save-disparity-image"]
    eval_nerf.main(args + ["--savedir", str(root / "eval_one")])
    _finished(_torchrun(args + ["--savedir", str(root / "eval_two")], script=os.path.join(ROOT, "eval_nerf.py")))

    def files(folder):
        return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names)

    assert files(root / "eval_one") == files(root / "eval_two")
    assert len(files(root / "eval_one")) > 5
    for name in files(root / "eval_one"):
        if name.endswith((".png", ".npy")):
            assert (root / "eval_one" / name).read_bytes() == (root / "eval_two" / name).read_bytes(), name
    one, two = (json.loads((root / folder / "metrics.json").read_text()) for folder in ("eval_one", "eval_two"))
    for summary in (one, two):
        summary.pop("seconds_per_frame")
    assert one == two


def test_two_nodes_on_loopback_train_together(paper_runs):
    """The multi-node launch path: two torchrun launches (--nnodes=2, --node_rank=0/1) meeting at 127.0.0.1."""
    root, config = paper_runs
    out = root / "nodes"
    out.mkdir()
    port = _free_port()
    launches = [_torchrun([str(out), "--config", config, "--set", "experiment.id=nodes"], "--nnodes=2",
                          f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", nproc=1)
                for node in (0, 1)]
    for process in launches:
        _finished(process)
    nodes = _rank_states(out, 2)
    same_machine = _rank_states(root / "two", 2)
    for key, value in same_machine[0]["weights"].items():  # the same world of 2: the same computation
        assert torch.equal(nodes[0]["weights"][key], value), key
        assert torch.equal(nodes[1]["weights"][key], value), key


@pytest.mark.parametrize("options", [[], ["--set", "voxel_grid.masked_adam=true"]])
def test_two_processes_train_the_voxel_grid_as_one_with_identical_state_on_every_rank(tmp_path, scene_dir, options):
    """The voxel grid's gradient goes straight into .grad (no autograd hook sees it); the occupancy grid, the
    seen cells and the box of the growth at step 30 must come out the same on every rank and as in one process.
    With masked Adam, the rows it updates are those any rank's lookups reached (the ranks' masks differ)."""
    config = _config(tmp_path, scene_dir, field="voxel")
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    _finished(_torchrun([str(two), "--config", config, "--set", "experiment.id=two", *options]))
    _one_process(one, ["--config", config, "--set", "experiment.id=one", *options])
    ranks, single = _rank_states(two, 2), _rank_states(one, 1)[0]
    for name in ("weights", "occupancy"):
        for key, value in ranks[0][name].items():
            other = ranks[1][name][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (name, key)
    assert torch.equal(ranks[0]["aabb"], ranks[1]["aabb"])
    assert torch.equal(ranks[0]["aabb"], single["aabb"])  # the same box from the union of the ranks' cells
    assert not torch.allclose(single["aabb"].cpu(), torch.tensor(BLENDER_AABB))  # the box did shrink at the growth
    _assert_close(ranks[0]["weights"], single["weights"], atol=1e-4, rtol=1e-3)
    assert torch.equal(ranks[0]["occupancy"]["occupied"], single["occupancy"]["occupied"])
    # the cells seen before the growth (saved at step 24): every rank's rays together, as in one process
    seen_two = load_checkpoint(str(tmp_path / "logs" / "two" / "checkpoint000024.ckpt"))["voxel_grid_seen"]
    seen_one = load_checkpoint(str(tmp_path / "logs" / "one" / "checkpoint000024.ckpt"))["voxel_grid_seen"]
    assert 0 < int(seen_one.sum()) < seen_one.numel()
    assert torch.equal(seen_two, seen_one)


# --------------------------------------------------------------------------------------------------
# Preemption


def _wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, (process.communicate()[0] or "(output in a file)")[-3000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_saves_at_the_next_step_and_auto_resumes_exactly(tmp_path, scene_dir):
    config = _config(tmp_path, scene_dir, train_iters=400, save_every=100, validate_every=0, print_every=50)
    sets = ["--set", "nerf.train.perturb=true", "nerf.train.radiance_field_noise_std=0.5"]  # a random run
    command = [sys.executable, "train_nerf.py", "--config", config, "--set", "experiment.id=preempted",
               "--load-checkpoint", "auto", *sets]
    process = subprocess.Popen(command, cwd=ROOT, env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "logs" / "preempted"
    _wait_for(run_dir / "checkpoint000100.ckpt", process)
    process.send_signal(signal.SIGTERM)
    output = _finished(process)
    saved = [name for name in os.listdir(run_dir) if name.endswith(".ckpt")]
    stopped_at = max(train_nerf.checkpoint_step(name) for name in saved)
    assert 100 < stopped_at < 400, (saved, output[-2000:])
    assert f"SIGTERM: saved {run_dir / f'checkpoint{stopped_at:06d}.ckpt'}" in output
    # the same command line continues from it
    resumed = train_nerf.main(["--config", config, "--set", "experiment.id=preempted", "--load-checkpoint", "auto",
                               *sets])
    assert resumed["step"] == 400
    straight = train_nerf.main(["--config", config, "--set", "experiment.id=straight", *sets])
    a = load_checkpoint(os.path.join(resumed["run_dir"], "checkpoint000400.ckpt"))
    b = load_checkpoint(os.path.join(straight["run_dir"], "checkpoint000400.ckpt"))
    for part in ("model_coarse_state_dict", "model_fine_state_dict"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key


def test_ctrl_c_saves_at_the_next_step_and_a_second_one_stops_without_saving(tmp_path, scene_dir, monkeypatch,
                                                                              capsys):
    config = _config(tmp_path, scene_dir, train_iters=100000, save_every=100, validate_every=0, print_every=50)
    run_dir, log = tmp_path / "logs" / "interrupted", tmp_path / "output.txt"
    command = [sys.executable, "train_nerf.py", "--config", config, "--set", "experiment.id=interrupted"]
    with open(log, "w") as output:  # a file, not a pipe that a fast run could fill before it is read
        # Python's Ctrl-C handling in the child, also where this process inherited an ignored SIGINT
        process = subprocess.Popen(command, cwd=ROOT, env=_environment(), stdout=output, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            _wait_for(run_dir / "checkpoint000100.ckpt", process)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
        finally:
            process.kill()
    text = log.read_text()
    saved = max(train_nerf.checkpoint_step(name) for name in os.listdir(run_dir) if name.endswith(".ckpt"))
    assert process.returncode == 0 and saved > 100, text[-2000:]
    assert "Ctrl-C: saving a checkpoint at the end of this step" in text
    assert f"SIGINT: saved {run_dir / f'checkpoint{saved:06d}.ckpt'}" in text
    # the second press raises KeyboardInterrupt (tests/test_preemption.py): one line and exit status 130
    monkeypatch.setattr(train_nerf, "train", lambda args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as stopped:
        train_nerf.main(["--config", config])
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted: stopped without saving; the checkpoints written before are kept"


def test_auto_starts_fresh_without_a_checkpoint(tmp_path, scene_dir, capsys):
    config = _config(tmp_path, scene_dir, train_iters=2, save_every=0, validate_every=0)
    metrics = train_nerf.main(["--config", config, "--load-checkpoint", "auto"])
    assert metrics["step"] == 2
    assert "no readable checkpoint in" in capsys.readouterr().out


def test_auto_sets_an_unreadable_newest_checkpoint_aside_and_takes_the_one_before(tmp_path, scene_dir, capsys):
    config = _config(tmp_path, scene_dir, train_iters=4, save_every=2, validate_every=0)
    train_nerf.main(["--config", config])
    run_dir = tmp_path / "logs" / "run"
    newest = run_dir / "checkpoint000004.ckpt"
    damaged = newest.read_bytes()[:1000]  # a disk fault, say
    newest.write_bytes(damaged)
    capsys.readouterr()
    metrics = train_nerf.main(["--config", config, "--load-checkpoint", "auto"])
    out = capsys.readouterr().out
    assert "checkpoint000004.ckpt: not a readable checkpoint" in out and "renamed it checkpoint000004.ckpt.unreadable" in out
    assert f"continuing from {run_dir / 'checkpoint000002.ckpt'}" in out and metrics["step"] == 4
    assert (run_dir / "checkpoint000004.ckpt.unreadable").read_bytes() == damaged  # kept, out of the way
    load_checkpoint(str(newest))  # the step-4 checkpoint written again by the resumed run


def test_sigterm_to_torchrun_reaches_every_rank_and_they_save_together(tmp_path, scene_dir):
    """The SLURM path: the launcher is signalled, torchrun passes SIGTERM to its workers, which agree on the step,
    save once (rank 0) and exit."""
    config = _config(tmp_path, scene_dir, train_iters=2000, save_every=100, validate_every=0, print_every=50)
    out = tmp_path / "out"
    out.mkdir()
    process = _torchrun([str(out), "--config", config])
    run_dir = tmp_path / "logs" / "run"
    _wait_for(run_dir / "checkpoint000100.ckpt", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output[-3000:]  # torchrun re-raises the signal it handled; the workers saved
    ranks = _rank_states(out, 2)  # both workers returned normally, at the same step
    # torchrun signals both workers; one may learn of it from the other first ("another rank") when its own
    # signal arrives after the step's agreement: a race, not a fault
    reasons = {ranks[0]["metrics"]["preempted"], ranks[1]["metrics"]["preempted"]}
    assert "SIGTERM" in reasons and reasons <= {"SIGTERM", "another rank"}, reasons
    assert ranks[0]["metrics"]["step"] == ranks[1]["metrics"]["step"] > 100
    step = ranks[0]["metrics"]["step"]
    saved = load_checkpoint(str(run_dir / f"checkpoint{step:06d}.ckpt"))
    for key, value in saved["model_coarse_state_dict"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
