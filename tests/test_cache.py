import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

import cache_dataset
import train_nerf
from nerf.batching import RayBatcher
from nerf.cache import CachedRayBatcher, RayCache
from nerf.config import ConfigError, TrainConfig, config_from_dict
from nerf.datasets import load_scene
from nerf.config import DatasetConfig
from nerf.datasets.demo import generate_demo_scene
from nerf.rays import prepare_rays
from tests.test_datasets import _write_llff


@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache") / "scene"
    generate_demo_scene(str(root), size=16, num_train=5, num_val=2, num_test=1)
    return str(root)


def _check_against_uncached(cache_dir, scene, ndc=None):
    cache = RayCache(cache_dir)
    reference = RayBatcher(scene, TrainConfig(num_random_rays=1), seed=0)
    assert len(cache.rays) == cache.manifest["num_variations"]
    for rays, pixels in zip(cache.rays, cache.pixels):
        for k, image_id in enumerate(scene.i_train):
            rows, cols = torch.from_numpy(pixels[k][:, 0].astype(np.int64)), torch.from_numpy(pixels[k][:, 1].astype(np.int64))
            o, d, rgb = reference.rays_at(torch.tensor(k).expand(len(rows)), rows, cols)
            cached = torch.from_numpy(np.array(rays[k]))
            assert torch.equal(cached[:, 0:3], o) and torch.equal(cached[:, 3:6], d)
            assert torch.equal(cached[:, 6:9], rgb)
            if ndc is not None:
                a = prepare_rays(cached[:, 0:3], cached[:, 3:6], 0.0, 1.0, ndc)
                b = prepare_rays(o, d, 0.0, 1.0, ndc)
                assert torch.equal(a.origins, b.origins) and torch.equal(a.viewdirs, b.viewdirs)
    return cache


def test_blender_cache_matches_uncached_rays_and_white_targets(tmp_path, blender_dir):
    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--halfres", "False", "--savedir", str(out),
                        "--num-random-rays", "20", "--num-variations", "3"])
    scene = load_scene(DatasetConfig(type="blender", basedir=blender_dir), white_background=True)
    cache = _check_against_uncached(str(out), scene)
    assert cache.manifest["dataset"]["white_background"] is True
    assert sorted(os.listdir(out / "train")) == [f"{kind}_{v:04d}.npy" for kind in ("pixels", "rays") for v in range(3)]
    first, second = (np.asarray(p[0]) for p in cache.pixels[:2])
    assert not np.array_equal(first, second)  # every variation is stored, none overwritten
    assert len({tuple(p) for p in first}) == 20  # without replacement within an image
    val = cache.validation_scene()
    assert torch.equal(val.images, scene.images[scene.i_val])
    assert torch.allclose(val.poses, scene.poses[scene.i_val])


def test_llff_cache_with_ndc_matches(tmp_path):
    _write_llff(tmp_path / "llff")
    config = {"dataset": {"type": "llff", "basedir": str(tmp_path / "llff"), "downsample_factor": 8},
              "nerf": {"train": {"num_random_rays": 16}}}
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(config))
    cache_dataset.main(["--config", str(path), "--savedir", str(tmp_path / "cache"), "--sample-all"])
    scene = load_scene(DatasetConfig(type="llff", basedir=str(tmp_path / "llff"), downsample_factor=8), False)
    cache = _check_against_uncached(str(tmp_path / "cache"), scene, ndc=(scene.height, scene.width, scene.focal))
    assert cache.manifest["sample_all"] and cache.manifest["rays_per_image"] == 48
    cache.check(config_from_dict(config))


def test_manifest_mismatch_is_refused(tmp_path, blender_dir):
    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--savedir", str(out), "--num-random-rays", "64"])
    cfg = {"experiment": {"logdir": str(tmp_path / "logs"), "train_iters": 1, "validate_every": 0, "device": "cpu"},
           "dataset": {"type": "blender", "basedir": blender_dir, "cachedir": str(out), "half_res": True},
           "nerf": {"train": {"num_random_rays": 32, "white_background": True},
                    "validation": {"white_background": True}}}
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", str(config)])
    assert "built with other settings: dataset.half_res: cache False, config True" in str(err.value)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", str(config), "--set", "dataset.half_res=false",
                         "--set", "nerf.train.white_background=false", "--set", "nerf.validation.white_background=false"])
    assert "nerf.train.white_background: cache True, config False" in str(err.value)
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", str(config), "--set", "dataset.half_res=false",
                         "--set", "nerf.train.num_random_rays=100"])
    assert "exceeds the 64 cached rays" in str(err.value)
    with pytest.raises(SystemExit) as err:  # the cache's rays pass through the pixels' corners
        train_nerf.main(["--config", str(config), "--set", "dataset.half_res=false", "dataset.pixel_center=true"])
    assert "dataset.pixel_center: cache False, config True" in str(err.value)
    with pytest.raises(SystemExit) as err:  # the cache's images were not downscaled
        train_nerf.main(["--config", str(config), "--set", "dataset.half_res=false", "dataset.downscale=2"])
    assert "dataset.downscale: cache 1, config 2" in str(err.value)
    os.remove(out / "train" / "rays_0000.npy")
    with pytest.raises(SystemExit) as err:
        train_nerf.main(["--config", str(config), "--set", "dataset.half_res=false"])
    assert "rays_0000.npy: missing or unreadable cache file" in str(err.value)


@pytest.mark.parametrize("damage, message", [
    ("empty_file", r"rays_0000.npy: missing or unreadable cache file \(EOFError\)"),
    ("wrong_shape", r"rays_0001.npy: shape \[10, 5, 9\], expected \[\d+, 16, 9\] from manifest.json"),
    ("val_shape", r"rays.npy: shape \[3, 9\], expected \[\d+, \d+, 9\] from manifest.json"),
    ("no_key", "manifest.json: key 'num_variations' is None, expected int"),
    ("a_list", "manifest.json: expected a mapping, got list"),
])
def test_a_damaged_cache_is_a_one_line_error_before_training(tmp_path, blender_dir, damage, message):
    from nerf.cache import RayCache

    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--savedir", str(out), "--num-random-rays", "16",
                        "--num-variations", "2"])
    manifest = json.loads((out / "manifest.json").read_text())
    if damage == "empty_file":
        (out / "train" / "rays_0000.npy").write_bytes(b"")
    elif damage == "wrong_shape":  # a readable array of another shape: it used to load and fail steps later
        np.save(out / "train" / "rays_0001.npy", np.zeros((10, 5, 9), np.float32))
    elif damage == "val_shape":
        np.save(out / "val" / "rays.npy", np.zeros((3, 9), np.float32))
    elif damage == "no_key":
        del manifest["num_variations"]
        (out / "manifest.json").write_text(json.dumps(manifest))
    else:
        (out / "manifest.json").write_text("[]")
    with pytest.raises(ConfigError, match=message) as err:
        RayCache(str(out)).validation_scene()
    assert "\n" not in str(err.value)


def test_training_from_a_cache(tmp_path, blender_dir):
    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--savedir", str(out), "--num-random-rays", "200",
                        "--num-variations", "2"])
    model = {"type": "FlexibleNeRFModel", "num_layers": 2, "hidden_size": 16, "skip_connect_every": 0,
             "hidden_size_dir": 8, "num_encoding_fn_xyz": 3, "num_encoding_fn_dir": 1}
    cfg = {"experiment": {"logdir": str(tmp_path / "logs"), "train_iters": 4, "validate_every": 4, "device": "cpu"},
           "dataset": {"type": "blender", "basedir": blender_dir, "cachedir": str(out)},
           "models": {"coarse": model, "fine": model},
           "nerf": {"train": {"num_random_rays": 32, "num_coarse": 4, "num_fine": 4, "white_background": True,
                              "precrop_iters": 2, "precrop_frac": 0.5},
                    "validation": {"num_coarse": 4, "num_fine": 4, "white_background": True}}}
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump(cfg))
    metrics = train_nerf.main(["--config", str(config)])
    assert np.isfinite(metrics["val_psnr"]) and metrics["step"] == 4


def test_cached_batching_visits_every_ray_once_per_epoch(tmp_path, blender_dir):
    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--savedir", str(out), "--num-random-rays", "6",
                        "--num-variations", "2"])
    cache = RayCache(str(out))
    batcher = CachedRayBatcher(cache, TrainConfig(num_random_rays=7, use_batching=True), 0, torch.device("cpu"))
    seen = torch.cat([torch.cat(batcher.batch(step), -1) for step in range(batcher.batches_per_epoch)])
    everything = torch.cat([torch.from_numpy(np.array(r)).reshape(-1, 9) for r in cache.rays])
    assert seen.shape == everything.shape == (60, 9)
    assert torch.equal(torch.sort(seen, dim=0).values, torch.sort(everything, dim=0).values)


def test_halfres_false_means_false_and_flags_are_checked(tmp_path):
    args = cache_dataset.parse_args(["--datapath", "x", "--halfres", "False", "--savedir", "y",
                                     "--num-random-rays", "8192", "--num-variations", "50"])
    assert args.halfres is False and args.num_random_rays == 8192 and args.num_variations == 50
    assert cache_dataset.parse_args(["--datapath", "x", "--blender-half-res", "true", "--savedir", "y"]).halfres
    for word in ("maybe", "yes", "1", "on"):  # as the config: true or false only
        with pytest.raises(SystemExit):
            cache_dataset.parse_args(["--datapath", "x", "--halfres", word, "--savedir", "y"])
    with pytest.raises(SystemExit):
        cache_dataset.parse_args(["--savedir", "y"])  # neither --config nor --datapath
    with pytest.raises(SystemExit):
        cache_dataset.parse_args(["--datapath", "x", "--downscale", "0", "--savedir", "y"])
    _write_llff(tmp_path / "llff")
    with pytest.raises(SystemExit, match=r"error: --downscale: not for a llff scene"):
        cache_dataset.main(["--datapath", str(tmp_path / "llff"), "--downscale", "2", "--savedir", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match=r"error: --halfres, --blender-stride: not for a llff scene"):
        cache_dataset.main(["--datapath", str(tmp_path / "llff"), "--halfres", "true", "--blender-stride", "2",
                            "--savedir", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("argv, message", [
    (["--config", "c.yml", "--halfres", "true", "--white-background", "false"],
     "--halfres, --white-background: with --config the dataset settings come from the config; set "
     "dataset.half_res, nerf.train.white_background there or with --set"),
    (["--datapath", "x", "--set", "dataset.half_res=true"], "--set applies with --config"),
    (["--datapath", "x", "--sample-all", "--num-variations", "3"], "--sample-all caches every pixel once"),
])
def test_flags_that_would_be_ignored_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        cache_dataset.parse_args(argv + ["--savedir", "y"])
    assert message in capsys.readouterr().err


def test_dataset_errors_name_the_flags_without_a_config(tmp_path, blender_dir):
    with pytest.raises(SystemExit, match=r"^error: --datapath .*nowhere: no such folder$"):
        cache_dataset.main(["--datapath", str(tmp_path / "nowhere"), "--savedir", str(tmp_path / "c")])
    with pytest.raises(SystemExit) as err:
        cache_dataset.main(["--datapath", str(tmp_path / "nowhere"), "--type", "blender",
                            "--savedir", str(tmp_path / "c")])
    assert "--datapath DIR" in str(err.value) and "dataset.basedir" not in str(err.value)
    with pytest.raises(SystemExit) as err:  # the 64-pixel demo images do not divide by 2 x 3
        cache_dataset.main(["--datapath", blender_dir, "--halfres", "true", "--downscale", "3",
                            "--savedir", str(tmp_path / "c")])
    assert "(--downscale, times 2 with --halfres)" in str(err.value)


def test_a_blender_cache_at_a_downscale(tmp_path, blender_dir):
    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--downscale", "2", "--savedir", str(out), "--sample-all"])
    scene = load_scene(DatasetConfig(type="blender", basedir=blender_dir, downscale=2), True)
    cache = _check_against_uncached(str(out), scene)
    assert cache.manifest["dataset"]["downscale"] == 2


def test_interrupted_build_leaves_nothing(tmp_path, blender_dir, monkeypatch):
    class Interrupt:
        def __init__(self):
            self.count = 0

        def update(self, n):
            self.count += n
            if self.count == 3:
                raise KeyboardInterrupt

    from nerf.cache import build_cache, dataset_settings

    scene = load_scene(DatasetConfig(type="blender", basedir=blender_dir), white_background=True)
    with pytest.raises(KeyboardInterrupt):
        build_cache(scene, dataset_settings(DatasetConfig(basedir=blender_dir), True), str(tmp_path / "c"), 8, 2, 0,
                    progress=Interrupt())
    assert os.listdir(tmp_path) == []
    with pytest.raises(SystemExit, match="already exists"):
        os.makedirs(tmp_path / "c")
        cache_dataset.main(["--datapath", blender_dir, "--savedir", str(tmp_path / "c")])


def test_ctrl_c_or_a_kill_during_cache_dataset_is_one_line(tmp_path, blender_dir, monkeypatch, capsys):
    monkeypatch.setattr(cache_dataset, "build_cache", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as stopped:
        cache_dataset.main(["--datapath", blender_dir, "--savedir", str(tmp_path / "c")])
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().endswith(f"interrupted: {tmp_path / 'c'} not written")


def test_overwrite_only_replaces_an_earlier_cache(tmp_path, blender_dir):
    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--savedir", str(out), "--num-random-rays", "8"])
    first = (out / "manifest.json").read_text()
    cache_dataset.main(["--datapath", blender_dir, "--savedir", str(out), "--num-random-rays", "9", "--overwrite"])
    assert (out / "manifest.json").read_text() != first
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="is not a ray cache"):
        cache_dataset.main(["--datapath", blender_dir, "--savedir", str(precious), "--overwrite"])
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit, match="contains\\) the dataset folder"):
        cache_dataset.main(["--datapath", blender_dir, "--savedir", blender_dir, "--overwrite"])
    assert os.path.isfile(os.path.join(blender_dir, "transforms_train.json"))


def test_too_few_cached_rays_in_the_precrop_region_is_refused_up_front(tmp_path, blender_dir, capsys):
    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--savedir", str(out), "--num-random-rays", "64"])
    opts = TrainConfig(num_random_rays=32, precrop_iters=10, precrop_frac=0.5)
    with pytest.raises(ConfigError, match="inside the precrop region"):
        CachedRayBatcher(RayCache(str(out)), opts, 0, torch.device("cpu"))
    # cache_dataset.py --config says so when it builds, not the training run that follows
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump({"dataset": {"type": "blender", "basedir": blender_dir},
                                      "nerf": {"train": {"num_random_rays": 32, "precrop_iters": 10,
                                                         "precrop_frac": 0.5, "white_background": True},
                                               "validation": {"white_background": True}}}))
    for rays, warned in (("64", True), ("--sample-all", False)):
        cache_dataset.main(["--config", str(config), "--savedir", str(tmp_path / f"c{rays}"), "--overwrite"]
                           + (["--num-random-rays", rays] if rays != "--sample-all" else [rays]))
        out_text = capsys.readouterr().out
        assert (f"warning: {config} cannot train from it as it is: dataset.cachedir: some image has only" in out_text
                ) is warned, out_text


@pytest.mark.parametrize("batching", [False, True])
def test_each_rank_takes_its_share_of_the_cached_global_batch(tmp_path, blender_dir, batching):
    """Under torchrun every rank draws the same global batch and keeps its share: disjoint shares that together
    are the single process's batch."""
    from nerf.distributed import World

    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--savedir", str(out), "--num-random-rays", "40",
                        "--num-variations", "2"])
    opts = TrainConfig(num_random_rays=12, use_batching=batching)
    torch.manual_seed(2)
    whole = CachedRayBatcher(RayCache(str(out)), opts, 0, torch.device("cpu")).batch(5)
    parts = []
    for rank in range(3):
        torch.manual_seed(2)  # every rank seeds alike
        parts.append(CachedRayBatcher(RayCache(str(out)), opts, 0, torch.device("cpu"), World(rank=rank, size=3)).batch(5))
    assert all(len(part[0]) == 4 for part in parts)
    for k in range(3):
        assert torch.equal(torch.cat([part[k] for part in parts]), whole[k])


def test_a_moved_dataset_still_matches_its_cache_and_an_edited_one_does_not(tmp_path, blender_dir):
    out = tmp_path / "cache"
    cache_dataset.main(["--datapath", blender_dir, "--halfres", "False", "--savedir", str(out),
                        "--num-random-rays", "64"])
    moved = tmp_path / "moved"
    shutil.copytree(blender_dir, moved)
    config = {"dataset": {"type": "blender", "basedir": str(moved), "cachedir": str(out)},
              "nerf": {"train": {"num_random_rays": 32, "white_background": True},
                       "validation": {"white_background": True}}}
    RayCache(str(out)).check(config_from_dict(config))  # the same cameras elsewhere: accepted
    image = next((moved / "train").iterdir())  # a resized copy keeps the cameras but not the image files' sizes
    original = image.read_bytes()
    image.write_bytes(original + b"\0")
    with pytest.raises(ConfigError, match=r"dataset.basedir: cache '.*', config '.*moved'"):
        RayCache(str(out)).check(config_from_dict(config))
    image.write_bytes(original)
    RayCache(str(out)).check(config_from_dict(config))
    transforms = moved / "transforms_train.json"
    frames = json.loads(transforms.read_text())
    frames["camera_angle_x"] *= 1.01
    transforms.write_text(json.dumps(frames))
    with pytest.raises(ConfigError, match=r"dataset.basedir: cache '.*', config '.*moved'"):
        RayCache(str(out)).check(config_from_dict(config))
    manifest_path = out / "manifest.json"  # a cache without a fingerprint compares the folders' paths
    manifest = json.loads(manifest_path.read_text())
    del manifest["dataset_fingerprint"]
    manifest_path.write_text(json.dumps(manifest))
    shutil.rmtree(moved)
    shutil.copytree(blender_dir, moved)
    with pytest.raises(ConfigError, match="dataset.basedir"):
        RayCache(str(out)).check(config_from_dict(config))
    config["dataset"]["basedir"] = blender_dir
    RayCache(str(out)).check(config_from_dict(config))
