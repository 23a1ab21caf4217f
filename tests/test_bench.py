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


def test_bench_counts_mlp_flops_only_where_the_voxel_grid_computed_colour(tmp_path, monkeypatch):
    import yaml

    from bench.bench_nerf import main
    from nerf.datasets.demo import generate_demo_scene
    from nerf.voxel_grid import VoxelGridModel

    scene = tmp_path / "scene"
    generate_demo_scene(str(scene), size=16, num_train=4, num_val=1, num_test=1)
    cfg = {"experiment": {"device": "cpu"}, "dataset": {"type": "blender", "basedir": str(scene)},
           "models": {"coarse": {"type": "VoxelGridModel"}, "fine": None},
           "nerf": {"train": {"num_random_rays": 64, "num_fine": 0, "white_background": True},
                    "validation": {"num_fine": 0, "white_background": True}},
           "occupancy": {"enabled": True, "resolution": 8, "color_weight_threshold": 0.02},
           "voxel_grid": {"num_voxels": 4096, "num_voxels_start": 512, "feature_dim": 4, "hidden_size": 8,
                          "num_layers": 1, "alpha_init": 0.05}}
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    rows = []
    color = VoxelGridModel.color
    monkeypatch.setattr(VoxelGridModel, "color", lambda self, p, d: rows.append(len(p)) or color(self, p, d))
    result = main(["--config", str(path), "--iters", "2", "--warmup", "0", "--no-render"])
    assert result["mlp_points_per_step"] == sum(rows) / 2  # the median of two steps is their mean
    # fog of alpha 0.05 per step: the weights fall below 0.02 along each ray, so fewer points got a colour
    assert 0 < result["mlp_points_per_step"] < result["network_points_per_step"]
    flops_per_point = network_flops_per_point(VoxelGridModel([-1.0] * 3 + [1.0] * 3, (2, 2, 2), 4, 8, 1))
    assert abs(result["network_gflop_per_step"] * 1e9 - result["mlp_points_per_step"] * flops_per_point) < 1.0
