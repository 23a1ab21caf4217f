import json

import pytest

from bench.bench_nerf import network_flops_per_point
from nerf.config import ModelConfig
from nerf.models import build_model


def test_flops_per_point_of_the_paper_model():
    model = build_model(ModelConfig())
    weights = 595_844 - (8 * 256 + 128 + 256 + 1 + 3)  # parameters minus biases = multiply-adds per point
    assert weights == 593_408
    assert network_flops_per_point(model) == 3 * 2 * 593_408  # ~3.6 MFLOP forward + backward per point


def test_bench_json_is_consistent(tmp_path, monkeypatch):

    import torch
    import yaml

    from bench import bench_nerf
    from bench.bench_nerf import main, onednn_peak_available
    from nerf.datasets.demo import generate_demo_scene

    scene = tmp_path / "scene"
    generate_demo_scene(str(scene), size=16, num_train=4, num_val=1, num_test=1)
    small = {"type": "FlexibleNeRFModel", "num_layers": 2, "hidden_size": 16, "skip_connect_every": 0,
             "hidden_size_dir": 8, "num_encoding_fn_xyz": 3, "num_encoding_fn_dir": 1}
    cfg = {"experiment": {"device": "cpu"}, "dataset": {"type": "blender", "basedir": str(scene)},
           "models": {"coarse": small, "fine": small},
           "nerf": {"train": {"num_random_rays": 32, "num_coarse": 8, "num_fine": 4, "white_background": True},
                    "validation": {"white_background": True}}}
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    # fixed peak readings (torch.matmul 100, oneDNN 200 GFLOP/s), so that the shares can be checked exactly
    monkeypatch.setattr(bench_nerf, "matmul_peak_gflops",
                        lambda device, dtype, size=2048, repeats=10, onednn=False: 200.0 if onednn else 100.0)
    out = tmp_path / "bench.json"
    result = main(["--config", str(path), "--iters", "2", "--warmup", "1", "--render-stride", "4", "--json", str(out),
                   "--no-speed-factor", "--set", "runtime.cpu_network_chunk=96"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["cpu_network_chunk"] == [{"chunk": 96, "source": "runtime.cpu_network_chunk"}] * 2
    assert result["network_points_per_step"] == 32 * (8 + 8 + 4)  # coarse, then fine on coarse + fine samples
    assert abs(sum(result["split_fraction"].values()) - 1.0) < 0.05  # the phases cover the step
    assert result["frame_resolution"] == [4, 4] and result["matmul_peak_dtype"] == "float32"
    beside = result["matmul_peak_beside_steps_gflops"]  # one reading after each timed step
    assert len(beside) == 2 and result["matmul_peak_gflops"] == sum(beside) / 2
    assert result["matmul_peak_best_gflops"] >= max(beside)
    # oneDNN's product timed beside torch.matmul's after each timed step, the same shares of it
    assert ("matmul_peak_onednn_gflops" in result) == onednn_peak_available(torch.device("cpu"), torch.float32)
    if "matmul_peak_onednn_gflops" in result:
        assert result["matmul_peak_onednn_beside_steps_gflops"] == [200.0, 200.0]
        assert result["network_fraction_of_onednn_peak"] == pytest.approx(result["network_fraction_of_peak"] / 2)
    grid = main(["--config", str(path), "--iters", "2", "--warmup", "1", "--no-render", "--set", "models.fine=null",
                 "--set", "nerf.train.num_fine=0", "--set", "nerf.validation.num_fine=0",
                 "--set", "occupancy.enabled=true", "--set", "occupancy.resolution=8",
                 "--set", "runtime.precision=bf16", "--no-speed-factor"])
    assert grid["sampler"] == "occupancy" and grid["matmul_peak_dtype"] == "bfloat16"
    assert "matmul_peak_onednn_gflops" not in grid  # bf16 products are oneDNN's already: one peak
    (chunk,) = grid["cpu_network_chunk"]  # measured for this model in bf16 (the test session's cache folder)
    assert chunk["source"] in ("measured", "cache") and chunk["chunk"] == int(min(chunk["seconds"],
                                                                                  key=chunk["seconds"].get))
    assert 0 < grid["network_points_per_step"] <= 32 * 1024


def _small_voxel_grid_config(tmp_path, occupancy=None, voxel_grid=None):
    """A config file of a tiny voxel grid (64 rays, 4096 voxels) on a generated 16x16 scene, on the CPU; the
    occupancy and voxel_grid entries given are added to its own."""
    import yaml

    from nerf.datasets.demo import generate_demo_scene

    scene = tmp_path / "scene"
    generate_demo_scene(str(scene), size=16, num_train=4, num_val=1, num_test=1)
    cfg = {"experiment": {"device": "cpu"}, "dataset": {"type": "blender", "basedir": str(scene)},
           "models": {"coarse": {"type": "VoxelGridModel"}, "fine": None},
           "nerf": {"train": {"num_random_rays": 64, "num_fine": 0, "white_background": True},
                    "validation": {"num_fine": 0, "white_background": True}},
           "occupancy": {"enabled": True, "resolution": 8, **(occupancy or {})},
           "voxel_grid": {"num_voxels": 4096, "num_voxels_start": 512, "feature_dim": 4, "hidden_size": 8,
                          "num_layers": 1, **(voxel_grid or {})}}
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bench_counts_mlp_flops_only_where_the_voxel_grid_computed_colour(tmp_path, monkeypatch):
    from bench.bench_nerf import main
    from nerf.voxel_grid import VoxelGridModel

    path = _small_voxel_grid_config(tmp_path, occupancy={"color_weight_threshold": 0.02},
                                    voxel_grid={"alpha_init": 0.05})
    rows = []
    color = VoxelGridModel.color
    monkeypatch.setattr(VoxelGridModel, "color", lambda self, p, d: rows.append(len(p)) or color(self, p, d))
    result = main(["--config", str(path), "--iters", "2", "--warmup", "0", "--no-render", "--no-speed-factor"])
    assert result["cpu_network_chunk"] == [{"chunk": 4096, "source": "fixed for a voxel grid"}]
    assert result["mlp_points_per_step"] == sum(rows) / 2  # the median of two steps is their mean
    # fog of alpha 0.05 per step: the weights fall below 0.02 along each ray, so fewer points got a colour
    assert 0 < result["mlp_points_per_step"] < result["network_points_per_step"]
    flops_per_point = network_flops_per_point(VoxelGridModel([-1.0] * 3 + [1.0] * 3, (2, 2, 2), 4, 8, 1))
    assert abs(result["network_gflop_per_step"] * 1e9 - result["mlp_points_per_step"] * flops_per_point) < 1.0


def test_the_profiled_steps_are_real_training_steps_in_two_like_windows(tmp_path, monkeypatch):
    """--profile-steps 3: one untimed step to enter the batcher's epoch, then the same three steps timed and
    profiled; the real step's products show among the host's operators; on the CPU nothing waits."""
    from bench import bench_nerf

    path = _small_voxel_grid_config(tmp_path)
    steps = []
    real_step = bench_nerf.training_step
    monkeypatch.setattr(bench_nerf, "training_step", lambda step, *args: steps.append(step) or real_step(step, *args))
    result = bench_nerf.main(["--config", str(path), "--iters", "1", "--warmup", "0", "--no-render",
                              "--no-speed-factor", "--profile-steps", "3"])
    first = bench_nerf.STEADY_STEP
    assert steps == [first - 1, first, first + 1, first + 2, first, first + 1, first + 2]
    run = result["unsynchronised"]
    assert run["steps"] == 3 and run["seconds_per_step"] > 0
    calls = {op["name"]: op["calls_per_step"] for op in run["host_operators"]}
    assert calls["Optimizer.step#Adam.step"] == 1  # one optimizer step per training step, per step
    assert run["host_waits_by_operator"] == {} and run["kernel_launches_per_step"] == 0


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_the_profiled_host_waits_are_named_on_cuda(monkeypatch):
    """A fake step with one item() and one boolean-mask indexing per step: two waits per step, named by
    their operators (the bench's own final wait left out), kernels launched, the device's busy time counted."""
    import torch

    from bench import bench_nerf

    x = torch.randn(1 << 16, device="cuda")

    def fake_step(step, batcher, scene, method, optimizer, opts, watch):
        (x * 2).sum().item()
        x[x > 0].sum()

    monkeypatch.setattr(bench_nerf, "training_step", fake_step)
    run = bench_nerf.unsynchronised_steps(4, None, None, None, None, None, torch.device("cuda"))
    assert run["host_waits_per_step"] == 2
    assert any("item" in name for name in run["host_waits_by_operator"])
    assert any("nonzero" in name or "index" in name for name in run["host_waits_by_operator"])
    assert run["kernel_launches_per_step"] >= 3
    assert 0 < run["device_busy_seconds_per_step"]


def test_the_speed_factor_comes_from_machine_speed_or_says_why_not(tmp_path, monkeypatch, capsys):
    from bench import machine

    monkeypatch.setattr(machine, "MACHINE_SPEED", str(tmp_path / "missing.py"))
    assert "not found" in machine.speed_factor()["unavailable"]
    tool = tmp_path / "machine_speed.py"
    tool.write_text("import json, sys\nassert sys.argv[1:] == ['--json']\nprint(json.dumps({'speed_factor': 1.25}))\n")
    monkeypatch.setattr(machine, "MACHINE_SPEED", str(tool))
    assert machine.speed_factor() == {"speed_factor": 1.25}
    assert machine.main([]) == {"speed_factor": 1.25}  # python bench/machine.py prints it
    assert json.loads(capsys.readouterr().out) == {"speed_factor": 1.25}


FAKE_RUN_NERF = """
import torch
from load_LINEMOD import load_LINEMOD_data  # the real one needs OpenCV; the bench puts a stand-in there
CALLS = []
img2mse = lambda x, y: torch.mean((x - y) ** 2)
def get_rays(H, W, K, c2w):
    return c2w[:3, -1].expand(H, W, 3), torch.ones(H, W, 3)
def create_nerf(args):
    CALLS.append(args)
    weight = torch.nn.Parameter(torch.zeros(3))
    return {"weight": weight}, {}, 0, [weight], torch.optim.Adam([weight], lr=args.lrate)
def render(H, W, K, chunk, rays, retraw, **kwargs):
    CALLS.append(rays.shape)
    rgb = torch.sigmoid(kwargs["weight"]).expand(rays.shape[1], 3)
    return rgb, None, None, {"rgb0": rgb}
"""


def _fake_checkout_and_scene(tmp_path, monkeypatch):
    """A checkout holding FAKE_RUN_NERF (its modules forgotten, sys.path restored after the test) and a
    demo scene in tmp_path/scene."""
    import sys

    from nerf.datasets.demo import generate_demo_scene

    checkout = tmp_path / "yenchenlin"
    checkout.mkdir()
    (checkout / "run_nerf.py").write_text(FAKE_RUN_NERF)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("run_nerf", "load_llff", "load_deepvoxels", "load_blender", "load_LINEMOD"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    generate_demo_scene(str(tmp_path / "scene"), size=16, num_train=4, num_val=1, num_test=1)
    return checkout


def test_the_yenchenlin_step_driver_runs_its_train_step(tmp_path, monkeypatch):
    import sys

    import pytest

    from bench.yenchenlin_step import import_yenchenlin, time_yenchenlin_step
    from nerf.config import load_config
    from nerf.datasets import load_scene

    with pytest.raises(SystemExit, match="no run_nerf.py there"):
        import_yenchenlin(str(tmp_path))
    checkout = _fake_checkout_and_scene(tmp_path, monkeypatch)
    config = tmp_path / "cfg.yml"
    config.write_text(f"dataset:\n  basedir: {tmp_path / 'scene'}\nnerf:\n  train:\n    num_random_rays: 32\n")
    cfg = load_config(str(config))
    scene = load_scene(cfg.dataset, white_background=True)
    result = time_yenchenlin_step(str(checkout), cfg, cfg.nerf.train, scene, iters=2, warmup=1)
    calls = sys.modules["run_nerf"].CALLS
    assert calls[0].N_samples == 64 and calls[0].N_importance == 128 and calls[0].netwidth == 256
    assert calls[1:] == [(2, 32, 3)] * 3  # one batch of N_rand rays per step, warm-up included
    assert result["seconds_per_step"] > 0 and result["implementation"] == "yenchenlin/nerf-pytorch"
    assert result["commit"] == "not a git checkout" and result["device"] == "cpu"


def test_the_bench_alternates_its_steps_with_yenchenlins(tmp_path, monkeypatch):
    import pytest

    import bench.bench_nerf as bench_nerf

    checkout = _fake_checkout_and_scene(tmp_path, monkeypatch)
    config = tmp_path / "cfg.yml"
    config.write_text(f"experiment:\n  device: cpu\ndataset:\n  basedir: {tmp_path / 'scene'}\nnerf:\n  train:\n    num_random_rays: 32\n    num_fine: 0\n"
                      "  validation:\n    num_fine: 0\nmodels:\n  coarse:\n    type: TinyNeRFModel\n  fine: null\nruntime:\n  cpu_network_chunk: 1024\n")
    with pytest.raises(SystemExit, match="no run_nerf.py there"):  # raised in its process, exits ours
        bench_nerf.main(["--config", str(config), "--no-render", "--no-speed-factor",
                         "--reference-yenchenlin", str(tmp_path)])
    order = []
    ours, theirs = bench_nerf.timed_step, bench_nerf.YenchenlinProcess.__call__
    # our steps take 1, 2, 3 s and theirs 10, 30, 30 s (fake clocks): ratios 10, 15, 10
    monkeypatch.setattr(bench_nerf, "timed_step", lambda *a: order.append("ours") or {
        **ours(*a), "times": {**dict.fromkeys(bench_nerf.PHASES, 0.0), "backward": float(len(order) + 1) / 2}})
    monkeypatch.setattr(bench_nerf.YenchenlinProcess, "__call__", lambda self: order.append("theirs") or (
        theirs(self), [10.0, 30.0, 30.0][len(order) // 2 - 1])[1])
    result = bench_nerf.main(["--config", str(config), "--iters", "3", "--warmup", "0", "--no-render",
                              "--no-speed-factor", "--reference-yenchenlin", str(checkout)])
    assert order == ["ours", "theirs"] * 3
    assert result["seconds_per_step"] == 2.0
    assert result["reference"]["speedup"] == 10.0  # median of 10, 15, 10; not 30 / 2 = 15
    assert result["reference"]["implementation"] == "yenchenlin/nerf-pytorch"  # recorded by its own process
    assert 0 < result["reference"]["seconds_per_step"] < 10.0  # its real seconds there, not the fake clock


def test_the_bench_compares_precisions_step_by_step(tmp_path, monkeypatch):
    import pytest
    import torch

    import bench.bench_nerf as bench_nerf
    from bench.bench_nerf import main, network_flops_per_point
    from nerf.datasets.demo import generate_demo_scene

    generate_demo_scene(str(tmp_path / "scene"), size=16, num_train=4, num_val=1, num_test=1)
    config = tmp_path / "cfg.yml"
    config.write_text(f"experiment:\n  device: cpu\ndataset:\n  basedir: {tmp_path / 'scene'}\nnerf:\n  train:\n    num_random_rays: 32\n    num_fine: 0\n"
                      "  validation:\n    num_fine: 0\nmodels:\n  coarse:\n    type: TinyNeRFModel\n  fine: null\n"
                      "runtime:\n  cpu_network_chunk: 1024\n  precision: bf16\n")
    with pytest.raises(SystemExit, match="--compare-precision: runtime.precision fp16 needs a CUDA device"):
        main(["--config", str(config), "--no-render", "--no-speed-factor", "--compare-precision", "fp16"])
    order, ours = [], bench_nerf.timed_step
    # (fake clocks) after a warm-up step each: bf16 steps of 1, 2, 3 s, fp32 steps of 4, 3, 9 s: ratios 4, 1.5, 3
    clocks = {"bf16": iter([50.0, 1.0, 2.0, 3.0]), "fp32": iter([70.0, 4.0, 3.0, 9.0])}

    def fake_step(k, batcher, scene, method, *rest):
        precision = "bf16" if method.runners[0].dtype == torch.bfloat16 else "fp32"
        order.append((k, precision))
        return {**ours(k, batcher, scene, method, *rest),
                "times": {**dict.fromkeys(bench_nerf.PHASES, 0.0), "backward": next(clocks[precision])}}

    monkeypatch.setattr(bench_nerf, "timed_step", fake_step)
    monkeypatch.setattr(bench_nerf, "matmul_peak_gflops",  # each dtype's peak: bf16 400, fp32 100 GFLOP/s
                        lambda device, dtype, size=2048, repeats=10, onednn=False: 400.0 if dtype == torch.bfloat16
                        else 100.0)
    result = main(["--config", str(config), "--iters", "3", "--warmup", "1", "--no-render", "--no-speed-factor",
                   "--compare-precision", "fp32"])
    # the same batch for both, and each goes first in turn
    assert order == [(0, "bf16"), (0, "fp32"), (1, "fp32"), (1, "bf16"), (2, "bf16"), (2, "fp32"), (3, "fp32"),
                     (3, "bf16")]
    other = result["compared_precision"]
    assert result["seconds_per_step"] == 2.0 and other["seconds_per_step"] == 4.0
    assert other["speedup"] == 3.0  # median of 4, 1.5, 3 (the warm-up pair left out); not 4 / 2 = 2
    assert other["cpu_network_chunk"] == [{"chunk": 1024, "source": "runtime.cpu_network_chunk"}]
    assert other["matmul_peak_dtype"] == "float32" and other["matmul_peak_beside_steps_gflops"] == [100.0] * 3
    gflop = result["network_gflop_per_step"]
    assert gflop == 32 * 64 * network_flops_per_point(build_model(ModelConfig(type="TinyNeRFModel"))) / 1e9
    assert other["network_fraction_of_peak"] == pytest.approx(gflop / 4.0 / 100.0)  # its own dtype's peak
    assert result["network_fraction_of_peak"] == pytest.approx(gflop / 2.0 / 400.0)


def test_the_unsynchronised_steps_count_operators_per_step(monkeypatch):
    """A fake training step of known operators: two products and one nonzero per step, whatever the number
    of steps; on the CPU nothing waits for a device and no kernel is launched."""
    import torch

    from bench import bench_nerf

    a = torch.randn(64, 64)

    def fake_step(step, batcher, scene, method, optimizer, opts, watch):
        torch.mm(torch.mm(a, a), a)
        torch.nonzero(a > 0)

    monkeypatch.setattr(bench_nerf, "training_step", fake_step)
    run = bench_nerf.unsynchronised_steps(3, None, None, None, None, None, torch.device("cpu"))
    assert run["steps"] == 3 and run["seconds_per_step"] > 0
    calls = {op["name"]: op["calls_per_step"] for op in run["host_operators"]}
    assert calls["aten::mm"] == 2 and calls["aten::nonzero"] == 1
    assert run["host_waits_per_step"] == 0 and run["host_waits_by_operator"] == {}
    assert run["kernel_launches_per_step"] == 0 and run["device_busy_seconds_per_step"] == 0


def test_a_host_wait_is_named_by_its_outermost_and_innermost_operators():
    from types import SimpleNamespace

    from bench.bench_nerf import _waiting_operator

    index = SimpleNamespace(name="aten::index", cpu_parent=None)
    nonzero = SimpleNamespace(name="aten::nonzero", cpu_parent=index)
    item = SimpleNamespace(name="aten::item", cpu_parent=None)
    wait = SimpleNamespace(name="cudaStreamSynchronize", cpu_parent=nonzero)
    assert _waiting_operator(wait) == "aten::index > aten::nonzero"
    assert _waiting_operator(SimpleNamespace(name="cudaStreamSynchronize", cpu_parent=item)) == "aten::item"
    assert _waiting_operator(SimpleNamespace(name="cudaDeviceSynchronize", cpu_parent=None)) == "cudaDeviceSynchronize"


def test_bad_input_is_a_one_line_error(tmp_path):
    from bench import bench_data, bench_distributed
    from bench.bench_nerf import main

    with pytest.raises(SystemExit, match="nope.yml: config file not found"):
        main(["--config", str(tmp_path / "nope.yml")])
    with pytest.raises(SystemExit):  # argparse's error: nothing to take a median of
        main(["--config", str(tmp_path / "nope.yml"), "--iters", "0"])
    with pytest.raises(SystemExit, match="nope.yml: config file not found"):
        bench_data.main(["--config", str(tmp_path / "nope.yml"), "--cachedir", str(tmp_path)])
    with pytest.raises(SystemExit, match="nope.yml: config file not found"):
        bench_distributed.main(["--bytes", str(tmp_path / "nope.yml")])
    with pytest.raises(SystemExit, match=r"^error: the 1-process run failed: .*nope.yml: config file not found$"):
        bench_distributed.main(["--config", str(tmp_path / "nope.yml"), "--nproc", "1"])
    # under torchrun the worker's line comes before the launcher's traceback, which must not hide it
    launcher = "Traceback (most recent call last):\n  ...\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError"
    assert bench_distributed.failure_reason(f"[W] warning\nerror: x.yml: bad key\n{launcher}") == "x.yml: bad key"
    assert bench_distributed.failure_reason(launcher).endswith("ChildFailedError")


def test_results_that_cannot_be_written_are_printed_and_the_error_names_the_file(tmp_path, capsys):
    from bench.bench_nerf import write_json

    write_json({"seconds_per_step": 1.5}, str(tmp_path / "out.json"))
    assert json.loads((tmp_path / "out.json").read_text()) == {"seconds_per_step": 1.5}
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"^error: .*file.*\(the results are printed above\)$"):
        write_json({"seconds_per_step": 2.5}, str(tmp_path / "file" / "out.json"))
    assert json.loads(capsys.readouterr().out) == {"seconds_per_step": 2.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out.json"]  # no temporary file left


def test_running_the_yenchenlin_module_as_a_script_says_what_to_run():
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "yenchenlin_step.py")
    done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd="/")
    assert done.returncode == 1
    assert done.stderr.strip().endswith("--reference-yenchenlin PATH (see its --help)")
    assert "Traceback" not in done.stderr
