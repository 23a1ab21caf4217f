from bench.bench_nerf import network_flops_per_point
from nerf.config import ModelConfig
from nerf.models import build_model


def test_flops_per_point_of_the_paper_model():
    model = build_model(ModelConfig())
    weights = 595_844 - (8 * 256 + 128 + 256 + 1 + 3)  # parameters minus biases = multiply-adds per point
    assert weights == 593_408
    assert network_flops_per_point(model) == 3 * 2 * 593_408  # ~3.6 MFLOP forward + backward per point


def test_bench_json_is_consistent(tmp_path):
    import json

    import yaml

    from bench.bench_nerf import main
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
    out = tmp_path / "bench.json"
    result = main(["--config", str(path), "--iters", "2", "--warmup", "1", "--render-stride", "4", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["network_points_per_step"] == 32 * (8 + 8 + 4)  # coarse, then fine on coarse + fine samples
    assert abs(sum(result["split_fraction"].values()) - 1.0) < 0.05  # the phases cover the step
    assert result["frame_resolution"] == [4, 4] and result["matmul_peak_dtype"] == "float32"
    grid = main(["--config", str(path), "--iters", "2", "--warmup", "1", "--no-render", "--set", "models.fine=null",
                 "--set", "nerf.train.num_fine=0", "--set", "nerf.validation.num_fine=0",
                 "--set", "occupancy.enabled=true", "--set", "occupancy.resolution=8",
                 "--set", "runtime.precision=bf16"])
    assert grid["sampler"] == "occupancy" and grid["matmul_peak_dtype"] == "bfloat16"
    assert 0 < grid["network_points_per_step"] <= 32 * 1024
