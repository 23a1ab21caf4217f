import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import eval_nerf
import train_nerf
from nerf.datasets.demo import generate_demo_scene

MODEL = {"type": "FlexibleNeRFModel", "num_layers": 2, "hidden_size": 16, "skip_connect_every": 0,
         "hidden_size_dir": 8, "num_encoding_fn_xyz": 3, "num_encoding_fn_dir": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    scene = root / "scene"
    generate_demo_scene(str(scene), size=12, num_train=4, num_val=2, num_test=3)
    cfg = {"experiment": {"id": "e", "logdir": str(root / "logs"), "train_iters": 3, "validate_every": 0,
                          "save_every": 0, "device": "cpu"},
           "dataset": {"type": "blender", "basedir": str(scene)},
           "models": {"coarse": MODEL, "fine": MODEL},
           "nerf": {"train": {"num_random_rays": 32, "num_coarse": 4, "num_fine": 4, "white_background": True},
                    "validation": {"num_coarse": 4, "num_fine": 4, "white_background": True, "chunksize": 50}}}
    config = root / "cfg.yml"
    config.write_text(yaml.safe_dump(cfg))
    train_nerf.main(["--config", str(config)])
    return str(config), str(root / "logs" / "e" / "checkpoint000003.ckpt"), root


def test_render_path_frames_disparity_and_depth(trained):
    config, ckpt, root = trained
    out = root / "render"
    summary = eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(out), "trial1",
                              "--save-disparity-image", "--save-depth", "--max-views", "5", "--downsample", "2"])
    folder = out / "trial1"
    frames = sorted(p for p in os.listdir(folder) if p.endswith(".png"))
    assert frames == ["000.png", "010.png", "020.png", "029.png", "039.png"]  # 5 of 40, evenly spaced
    assert Image.open(folder / "000.png").size == (6, 6)
    assert len(os.listdir(folder / "disparity")) == 5
    depth = np.load(folder / "depth" / "000.npy")
    assert depth.shape == (6, 6) and np.all(depth >= 0) and np.all(depth <= 6.0 + 1e-4)
    assert summary["resolution"] == [6, 6] and "mean" not in summary


def test_train_split_scores_the_training_views(trained):
    config, ckpt, root = trained
    summary = eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "train"),
                              "--split", "train", "--views", "1,3"])
    assert [v["image_index"] for v in summary["views"]] == [1, 3]  # the train split comes first (4 views)


def test_test_split_metrics(trained):
    config, ckpt, root = trained
    out = root / "test"
    summary = eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(out), "--split", "test",
                              "--views", "0,2", "--chunksize", "7"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert [v["view"] for v in metrics["views"]] == [0, 2]
    assert [v["image_index"] for v in metrics["views"]] == [6, 8]  # test split follows train (4) + val (2)
    assert metrics["mean"]["psnr"] == pytest.approx(np.mean([v["psnr"] for v in metrics["views"]]))
    assert -1 <= metrics["mean"]["ssim"] <= 1
    assert summary["mean"]["psnr"] == metrics["mean"]["psnr"]
    # the saved render reproduces the stored PSNR (8-bit rounding aside)
    render = np.asarray(Image.open(out / "000.png"), dtype=np.float64) / 255
    compare = np.asarray(Image.open(out / "compare" / "000.png"), dtype=np.float64) / 255
    target = compare[:, :12]
    psnr = -10 * np.log10(np.mean((render - target) ** 2))
    assert psnr == pytest.approx(metrics["views"][0]["psnr"], abs=0.3)
    assert os.path.isfile(out / "error" / "002.png")


def test_bad_arguments(trained, capsys):
    config, ckpt, root = trained
    with pytest.raises(SystemExit) as err:
        eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "x"), "--split", "test",
                        "--views", "0,9"])
    assert "out of range" in str(err.value)
    with pytest.raises(SystemExit):
        eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "x"), "--downsample", "0"])
    with pytest.raises(SystemExit, match=r"--downsample 4: the 12x12 views would render at 3x3; at most 3 here"):
        eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "x"), "--downsample", "4"])
    with pytest.raises(SystemExit) as err:
        eval_nerf.main(["--config", config, "--checkpoint", str(root / "none.ckpt"), "--savedir", str(root / "x")])
    assert "checkpoint file not found" in str(err.value)
    capsys.readouterr()
    for trial in ("../../escape", "/tmp/abs_trial", "."):  # --overwrite would clear a folder outside --savedir
        with pytest.raises(SystemExit):
            eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "x"), trial])
        assert f"TRIAL {trial!r}: expected a sub-folder name of --savedir" in capsys.readouterr().err
    assert not os.path.exists(root / "x")


def test_ctrl_c_is_one_line_that_says_what_was_written(trained, monkeypatch, capsys):
    config, ckpt, root = trained
    monkeypatch.setattr(eval_nerf, "evaluate", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as stopped:
        eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "cut"), "trial"])
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip() == (f"interrupted: the frames written so far are in {root / 'cut' / 'trial'}; "
                                               "metrics.json is written by a complete evaluation")


def test_an_earlier_evaluation_is_never_mixed_with_a_new_one(trained, capsys):
    config, ckpt, root = trained
    out = root / "again"
    eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(out), "--split", "test", "--views", "0,1"])
    (out / "notes.txt").write_text("not the script's")
    before = sorted(os.listdir(out))
    assert before == ["000.png", "001.png", "compare", "error", "metrics.json", "notes.txt"]
    with pytest.raises(SystemExit) as err:  # another split at another size would mix with these frames
        eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(out), "--max-views", "1",
                        "--downsample", "2"])
    assert "holds the frames of an earlier evaluation (7 files, e.g. 000.png)" in str(err.value)
    assert len(str(err.value).splitlines()) == 1 and sorted(os.listdir(out)) == before
    capsys.readouterr()
    eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(out), "--max-views", "1",
                    "--downsample", "2", "--overwrite"])
    assert "removed 7 files of an earlier evaluation" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["000.png", "notes.txt"]
    assert Image.open(out / "000.png").size == (6, 6)
    with pytest.raises(SystemExit, match="out of range"):  # checked before anything is deleted
        eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(out), "--views", "99",
                        "--overwrite"])
    assert sorted(os.listdir(out)) == ["000.png", "notes.txt"]
    a_file = root / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as err:
        eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(a_file), "--max-views", "1"])
    assert f"error: {a_file}: cannot create the output folder" in str(err.value)


def test_metrics_json_holds_no_infinity():
    summary = {"mean": {"psnr": float("inf"), "ssim": 1.0}, "views": [{"psnr": float("inf")}, {"psnr": 31.5}]}
    text = json.dumps(eval_nerf.finite_or_none(summary), allow_nan=False)  # allow_nan=False: strict JSON
    assert json.loads(text) == {"mean": {"psnr": None, "ssim": 1.0}, "views": [{"psnr": None}, {"psnr": 31.5}]}


def test_tiny_renders_skip_ssim_and_empty_selections_are_refused(trained):
    config, ckpt, root = trained
    summary = eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "tiny"),
                              "--split", "test", "--downsample", "2", "--views", "1,1"])
    assert summary["num_views"] == 1  # duplicates rendered once
    assert "ssim" not in summary["mean"] and "not computed" in summary["ssim"]
    with pytest.raises(SystemExit, match="no views selected"):
        eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "none"), "--views", ","])


def test_select_views():
    assert eval_nerf.select_views(10, None, None) == list(range(10))
    assert eval_nerf.select_views(10, None, 3) == [0, 4, 9]  # round(4.5) == 4
    assert eval_nerf.select_views(10, [1, 5, 7], 2) == [1, 7]
    with pytest.raises(ValueError):
        eval_nerf.select_views(3, [3], None)


def test_occupancy_rendering_of_both_kinds_of_checkpoint(trained, capsys):
    config, ckpt, root = trained
    grid_sets = ["--set", "occupancy.enabled=true", "--set", "occupancy.resolution=8", "--set",
                 "occupancy.num_steps=64"]
    # a coarse/fine checkpoint: a grid is filled from its fine model
    summary = eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "occ"),
                              "--split", "test", "--views", "0"] + grid_sets)
    assert summary["sampler"] == "occupancy" and np.isfinite(summary["mean"]["psnr"])
    out = capsys.readouterr().out
    assert "filled from the model's density" in out
    assert (f"note: {ckpt} was trained with coarse/fine sampling; the config renders it with the occupancy grid "
            "(occupancy.enabled: true)") in out
    # a checkpoint trained with the grid: its stored grid is used, and must match the config
    single = ["--set", "models.fine=null", "--set", "nerf.train.num_fine=0", "--set", "nerf.validation.num_fine=0"]
    train_nerf.main(["--config", config, "--set", "experiment.id=g"] + single + grid_sets)
    grid_ckpt = str(root / "logs" / "g" / "checkpoint000003.ckpt")
    eval_nerf.main(["--config", config, "--checkpoint", grid_ckpt, "--savedir", str(root / "occ2"), "--split", "test",
                    "--views", "0"] + single + grid_sets)
    out = capsys.readouterr().out
    assert "stored in the checkpoint" in out and "note:" not in out  # the sampler it was trained with
    eval_nerf.main(["--config", config, "--checkpoint", grid_ckpt, "--savedir", str(root / "occ4"), "--split", "test",
                    "--views", "0"] + single)
    assert (f"note: {grid_ckpt} was trained with the occupancy grid; the config renders it with coarse/fine sampling "
            "(occupancy.enabled: false)") in capsys.readouterr().out
    with pytest.raises(SystemExit, match="does not match"):
        eval_nerf.main(["--config", config, "--checkpoint", grid_ckpt, "--savedir", str(root / "occ3"),
                        "--views", "0"] + single + grid_sets + ["--set", "occupancy.resolution=4"])


def test_a_config_whose_model_differs_says_which_model_renders(trained, capsys):
    config, ckpt, root = trained
    eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "same"), "--max-views", "1"])
    assert "differs from the config" not in capsys.readouterr().out
    out = root / "other"
    summary = eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(out), "--max-views", "1",
                              "--set", "models.coarse.hidden_size=32", "models.fine.hidden_size=32"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "differs from the config" in line]
    assert lines == [f"{ckpt}: this project's checkpoint, 3 steps trained; its model (FlexibleNeRFModel 2x16 + fine "
                     "2x16) differs from the config's (FlexibleNeRFModel 2x32 + fine 2x32): using the checkpoint's"]
    assert summary["num_views"] == 1  # and it rendered with the checkpoint's model


def test_eval_renders_through_the_pixel_points_the_run_trained_with(trained, capsys):
    config, ckpt, root = trained  # trained through the pixels' corners (the default)
    same = eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "corners"),
                           "--split", "test", "--views", "0"])
    assert "pixel_center" not in capsys.readouterr().out
    other = eval_nerf.main(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "centres"),
                            "--split", "test", "--views", "0", "--set", "dataset.pixel_center=true"])
    assert (f"{ckpt}: trained with dataset.pixel_center=false, the config says true: using the checkpoint's"
            in capsys.readouterr().out)
    assert other["mean"]["psnr"] == same["mean"]["psnr"]
    fake = torch.load(ckpt, weights_only=True)
    fake["config"]["dataset"]["pixel_center"] = "yes"
    torch.save(fake, root / "bad.ckpt")
    with pytest.raises(SystemExit, match="'dataset.pixel_center' is 'yes'; expected true or false"):
        eval_nerf.main(["--config", config, "--checkpoint", str(root / "bad.ckpt"), "--savedir", str(root / "bad")])


def test_chunksize_reaches_the_occupancy_sampler_too(trained):
    config, ckpt, root = trained
    args = eval_nerf.parse_args(["--config", config, "--checkpoint", ckpt, "--savedir", str(root / "chunk"),
                                 "--chunksize", "7", "--set", "occupancy.enabled=true", "occupancy.resolution=8"])
    cfg, opts, _, method, _ = eval_nerf.set_up(args)
    assert opts.chunksize == 7 and cfg.occupancy.render_chunk == 7 and method.sampler.cfg.render_chunk == 7
