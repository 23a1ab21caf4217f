"""imgs2poses.py end to end: synthetic photos and a video of the demo scene at known poses through
pycolmap, the recovered cameras against the truth, training on the result, and bad input."""

import math
import os

import numpy as np
import pytest
from PIL import Image

import imgs2poses
import train_nerf
from nerf.datasets import load_scene
from nerf.config import load_config
from nerf.datasets.blender import pose_spherical
from nerf.datasets.demo import CAMERA_ANGLE_X, render_demo_view
from nerf.sfm import umeyama

SIZE = 240  # pixels; rendered at 2x and box-filtered (anti-aliased, as a camera records)
BACKDROP = 10.0  # a textured sphere far behind the objects: texture everywhere in the frame


def _view(c2w, size=SIZE):
    rgba = render_demo_view(c2w, 2 * size, "noise", BACKDROP)
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    return np.round(rgb.reshape(size, 2, size, 2, 3).mean((1, 3)) * 255).astype(np.uint8)


def _forward_poses(count=30):
    """A forward-facing capture: 6 columns x 5 rows over 80 x 35 degrees, 4 units from the scene."""
    return [pose_spherical(-40 + 80 * (k % 6) / 5, -10 - 35 * (k // 6) / 4, 4.0) for k in range(count)]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("capture")
    photos = root / "photos"
    photos.mkdir()
    truth = _forward_poses()
    for k, c2w in enumerate(truth):
        Image.fromarray(_view(c2w)).save(photos / f"IMG_{k:02d}.png")
    summary = imgs2poses.main([str(photos), "--out", str(root / "scene")])
    return root, np.stack(truth), summary


def _recovered(scene_dir):
    """(view index of each registered image, OpenGL camera-to-world [N, 3, 4], focal) from poses_bounds.npy."""
    rows = np.load(os.path.join(scene_dir, "poses_bounds.npy"))
    poses = rows[:, :15].reshape(-1, 3, 5)
    names = sorted(os.listdir(os.path.join(scene_dir, "images")))
    index = [int(name.split("_")[-1].split(".")[0]) for name in names]
    c2w = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:3], poses[:, :, 3:4]], 2)
    return index, c2w, float(poses[0, 2, 4]), rows[:, 15:]


def test_recovered_cameras_match_the_truth_after_a_similarity(capture):
    root, truth, summary = capture
    assert len(summary["registered"]) == 30 and summary["failed"] == []
    assert summary["capture"] == "forward-facing" and summary["config"] == "config/own_forward_fast.yml"
    assert summary["downsample_factor"] == 1  # 240-pixel photos train whole, not from images_8 (30 pixels)
    index, c2w, focal, bounds = _recovered(root / "scene")
    true_c2w = truth[index]
    scale, rotation, shift = umeyama(c2w[:, :, 3], true_c2w[:, :3, 3])
    centres = scale * c2w[:, :, 3] @ rotation.T + shift
    extent = 2 * 4.0  # the cameras' sphere around the scene
    assert np.linalg.norm(centres - true_c2w[:, :3, 3], axis=1).max() < 0.01 * extent
    for ours, true in zip(c2w, true_c2w):
        relative = (rotation @ ours[:, :3]).T @ true[:3, :3]
        assert math.degrees(math.acos(np.clip((np.trace(relative) - 1) / 2, -1, 1))) < 0.5
    true_focal = 0.5 * SIZE / math.tan(0.5 * CAMERA_ANGLE_X)
    assert abs(focal / true_focal - 1) < 0.01
    # near: the nearest surfaces, in front of the scene centre 4 units away; far: the backdrop behind it
    near, far = bounds[:, 0] * scale, bounds[:, 1] * scale
    assert np.all((2.0 < near) & (near < 4.0)) and np.all(far > BACKDROP)


def test_the_output_is_an_llff_scene_that_trains(capture, tmp_path):
    root, _, _ = capture
    scene = root / "scene"
    assert sorted(os.listdir(scene)) == ["images", "images_2", "images_4", "images_8", "poses_bounds.npy"]
    full = Image.open(next((scene / "images").iterdir()))
    assert Image.open(next((scene / "images_4").iterdir())).size == (full.width // 4, full.height // 4)
    sets = [f"dataset.basedir={scene}", "dataset.downsample_factor=4", "experiment.train_iters=3",
            f"experiment.logdir={tmp_path}", "experiment.validate_every=3", "experiment.save_every=3",
            "experiment.device=cpu", "nerf.train.num_random_rays=256", "voxel_grid.num_voxels=32768",
            "voxel_grid.num_voxels_start=4096", "occupancy.resolution=32"]
    cfg = load_config("config/own_forward_fast.yml", sets)
    assert len(load_scene(cfg.dataset, white_background=False).i_train) > 20
    metrics = train_nerf.main(["--config", "config/own_forward_fast.yml", "--set", *sets])
    assert metrics["step"] == 3 and np.isfinite(metrics["val_psnr"])


def _write_video(video):
    """A 24-frame pan of the demo scene at 10 fps; frames 5, 11 and 17 motion-blurred."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(video), (192, 192), fps=10, quality=9, macro_block_size=16)
    writer.send(None)
    poses = [pose_spherical(-40 + 80 * k / 23, -20 - 10 * math.sin(k / 4), 4.0) for k in range(24)]
    for k, c2w in enumerate(poses):
        frame = _view(c2w, 192)
        if k in (5, 11, 17):  # motion blur: a 9-pixel horizontal box filter
            frame = np.mean([np.roll(frame, s, 1) for s in range(-4, 5)], 0).astype(np.uint8)
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def test_a_video_becomes_frames_without_the_blurred_ones(tmp_path):
    video = tmp_path / "walk.mp4"
    _write_video(video)
    summary = imgs2poses.main([str(video), "--out", str(tmp_path / "scene"), "--fps", "10", "--max-frames", "30"])
    assert summary["capture"] == "forward-facing"
    names = summary["registered"] + summary["failed"]
    assert len(names) == 21 and not any(f"frame_{k:05d}" in " ".join(names) for k in (5, 11, 17))
    assert len(summary["registered"]) >= 18


def test_frames_are_taken_at_most_at_the_video_rate_and_video_options_name_a_photo_folder(tmp_path, capsys):
    from nerf.sfm import extract_video_frames

    video = tmp_path / "walk.mp4"
    _write_video(video)  # 24 frames at 10 fps
    found = extract_video_frames(str(video), str(tmp_path / "frames"), 30.0, 100, 0.0)
    assert (found["read"], found["fps"], found["video_fps"]) == (24, 10.0, 10.0)  # not 72 frames, two of three copies
    assert len(os.listdir(tmp_path / "frames")) == 24
    found = extract_video_frames(str(video), str(tmp_path / "half"), 5.0, 100, 0.0)
    assert (found["read"], found["fps"]) == (12, 5.0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(photos / f"p{k}.png")
    with pytest.raises(SystemExit, match="2 image"):
        imgs2poses.main([str(photos), "--out", str(tmp_path / "scene"), "--fps", "5", "--blur-threshold", "0.5"])
    assert (f"note: --fps, --blur-threshold apply to a video; {photos} is a folder of photos"
            in capsys.readouterr().out)


def test_repeated_mapping_runs_keep_the_largest_model(tmp_path, monkeypatch, capsys):
    """Every mapping run made (as if each placed too few images): the scene comes from the largest model's
    own folder of its own run."""
    from nerf import sfm

    real = sfm.largest_model
    monkeypatch.setattr(sfm, "largest_model", lambda map_once, count: real(map_once, 10 ** 6))
    video = tmp_path / "walk.mp4"
    _write_video(video)
    summary = imgs2poses.main([str(video), "--out", str(tmp_path / "scene"), "--fps", "10", "--max-frames", "30"])
    assert f"Mapping: {sfm.MAPPING_ATTEMPTS} runs" in capsys.readouterr().out
    assert len(summary["registered"]) >= 18
    index, c2w, _, bounds = _recovered(tmp_path / "scene")
    assert len(index) == len(summary["registered"]) and np.all(bounds[:, 0] > 0)


@pytest.mark.parametrize("case", ["no_overlap", "bad_video", "empty"])
def test_failures_are_one_line_and_leave_no_output_folder(tmp_path, case):
    src = tmp_path / "in"
    if case == "no_overlap":  # three unrelated noise images: nothing to match
        src.mkdir()
        rng = np.random.default_rng(0)
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, size=(120, 120, 3), dtype=np.uint8)).save(src / f"n{k}.png")
    elif case == "bad_video":
        src = tmp_path / "clip.mp4"
        src.write_bytes(b"\x00" * 1000)
    else:
        src.mkdir()
    out = tmp_path / "scene"
    with pytest.raises(SystemExit) as err:
        imgs2poses.main([str(src), "--out", str(out)])
    message = str(err.value)
    assert message.startswith("error: ") and "\n" not in message
    assert str(src) in message
    assert {"no_overlap": "do not overlap enough", "bad_video": "not a readable video", "empty": "no images"}[case] in message
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".imgs2poses")]


def test_fern_photos_give_the_published_poses(tmp_path):
    """Optional (needs ../shared): fern's 20 photos (images_8, 504x378) against the published poses_bounds.npy,
    after the same similarity alignment. The focal length is compared to 3 %: the published one belongs to
    COLMAP's distorted camera fitted on the 4032-pixel originals, ours to the undistorted 504-pixel views."""
    from conftest import shared_path

    fern = shared_path("nerf_llff_data", "fern")
    summary = imgs2poses.main([os.path.join(fern, "images_8"), "--out", str(tmp_path / "fern")])
    assert summary["failed"] == [] and summary["capture"] == "forward-facing"
    published = np.load(os.path.join(fern, "poses_bounds.npy"))[:, :15].reshape(-1, 3, 5)
    ours = np.load(tmp_path / "fern" / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)
    scale, rotation, shift = umeyama(ours[:, :, 3], published[:, :, 3])
    spread = np.linalg.norm(published[:, :, 3].max(0) - published[:, :, 3].min(0))
    assert np.linalg.norm(scale * ours[:, :, 3] @ rotation.T + shift - published[:, :, 3], axis=1).max() < 0.01 * spread
    for a, b in zip(ours, published):  # LLFF columns: both [down, right, back]
        relative = (rotation @ a[:, :3]).T @ b[:, :3]
        assert math.degrees(math.acos(np.clip((np.trace(relative) - 1) / 2, -1, 1))) < 0.5
    assert abs(ours[0, 2, 4] / (published[0, 2, 4] / 8) - 1) < 0.03


def test_cuda_without_a_cuda_build_of_pycolmap_is_a_one_line_error(tmp_path, monkeypatch):
    import pycolmap

    monkeypatch.setattr(pycolmap, "has_cuda", False, raising=False)
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * k, dtype=np.uint8)).save(src / f"p{k}.png")
    with pytest.raises(SystemExit) as err:
        imgs2poses.main([str(src), "--out", str(tmp_path / "scene"), "--device", "cuda"])
    assert "built without CUDA" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "scene").exists()


@pytest.mark.parametrize("case", ["input_inside", "other_folder", "file", "earlier_output_and_more"])
def test_an_output_folder_that_would_destroy_data_is_refused_before_any_work(tmp_path, case):
    scene = tmp_path / "my_scene"
    photos = scene / "images" if case == "input_inside" else tmp_path / "photos"
    photos.mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * k, dtype=np.uint8)).save(photos / f"p{k}.png")
    if case in ("other_folder", "earlier_output_and_more"):
        scene.mkdir()
        (scene / "notes.txt").write_text("someone's files")
    if case == "earlier_output_and_more":  # a re-run would replace the whole folder, notes.txt with it
        (scene / "images_8").mkdir()
        np.save(scene / "poses_bounds.npy", np.zeros((3, 17)))
        (scene / ".DS_Store").write_bytes(b"")  # a file manager's own: not named, replaced with the folder
    if case == "file":
        scene = tmp_path / "scene.txt"
        scene.write_text("a file")
    with pytest.raises(SystemExit) as err:
        imgs2poses.main([str(photos), "--out", str(scene)])
    expected = {"input_inside": "holds the input", "other_folder": "not an earlier output", "file": "is a file",
                "earlier_output_and_more": "also holds what imgs2poses.py did not write (notes.txt)"}[case]
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in photos.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    if case in ("other_folder", "earlier_output_and_more"):
        assert (scene / "notes.txt").read_text() == "someone's files"


def test_the_images_not_registered_are_named_as_the_user_named_them(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for k, c2w in enumerate(_forward_poses()[:12]):
        Image.fromarray(_view(c2w)).save(photos / f"IMG_{k:02d}.jpg", quality=95)
    noise = np.random.default_rng(0).integers(0, 256, _view(_forward_poses()[0]).shape, dtype=np.uint8)
    Image.fromarray(noise).save(photos / "IMG_99.jpg", quality=95)  # overlaps nothing: never placed
    summary = imgs2poses.main([str(photos), "--out", str(tmp_path / "scene")])
    assert summary["failed"] == ["IMG_99.jpg"]  # the user's file, not the PNG copy COLMAP was given
    assert len(summary["registered"]) == 12


def test_the_printed_command_works_from_the_working_directory(tmp_path, monkeypatch):
    import shlex

    where = tmp_path / "some where"
    where.mkdir()
    monkeypatch.chdir(where)
    for name in ("train_nerf.py", "config/own_forward_fast.yml"):
        path = shlex.split(imgs2poses.from_here(name))[0]
        assert not os.path.isabs(path) and os.path.isfile(path)
