import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from nerf.datasets import DatasetError, load_scene
from nerf.config import DatasetConfig
from nerf.datasets.blender import load_blender, pose_spherical, spherical_render_path
from nerf.datasets.demo import generate_demo_scene
from nerf.datasets.llff import load_llff, poses_average
from tests.conftest import shared_path


def _write_blender(root, size=4, counts=(3, 2, 4), angle=0.8):
    rng = np.random.default_rng(0)
    images = {}
    for split, count in zip(("train", "val", "test"), counts):
        os.makedirs(root / split, exist_ok=True)
        frames = []
        for k in range(count):
            rgba = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
            Image.fromarray(rgba, "RGBA").save(root / split / f"r_{k}.png")
            images[(split, k)] = rgba.astype(np.float32) / 255
            frames.append({"file_path": f"./{split}/r_{k}", "rotation": 0.0,
                           "transform_matrix": pose_spherical(30.0 * k, -30.0, 4.0).tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return images


def test_blender_compositing_splits_and_focal(tmp_path):
    images = _write_blender(tmp_path)
    scene = load_blender(str(tmp_path), white_background=True)
    assert scene.images.shape == (9, 4, 4, 3)
    assert (scene.i_train, scene.i_val, scene.i_test) == ([0, 1, 2], [3, 4], [5, 6, 7, 8])
    assert scene.focal == pytest.approx(0.5 * 4 / math.tan(0.4))
    rgba = images[("val", 1)]
    expected = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    assert np.allclose(scene.images[4].numpy(), expected, atol=1e-6)
    assert (scene.near, scene.far, scene.use_ndc) == (2.0, 6.0, False)
    black = load_blender(str(tmp_path), white_background=False)
    assert np.allclose(black.images[4].numpy(), rgba[..., :3])


def test_blender_half_res_resizes_rgba_before_compositing(tmp_path):
    images = _write_blender(tmp_path)
    scene = load_blender(str(tmp_path), half_res=True, white_background=True)
    assert (scene.height, scene.width) == (2, 2)
    assert scene.focal == pytest.approx(0.5 * 4 / math.tan(0.4) / 2)
    rgba = images[("train", 0)]
    box = rgba.reshape(2, 2, 2, 2, 4).mean(axis=(1, 3))  # 2x2 area average of RGBA
    expected = box[..., :3] * box[..., 3:] + (1 - box[..., 3:])
    assert np.allclose(scene.images[0].numpy(), expected, atol=1e-6)


def test_blender_downscale_is_a_further_area_resize(tmp_path):
    images = _write_blender(tmp_path)
    half = load_blender(str(tmp_path), half_res=True, white_background=False)
    by_two = load_blender(str(tmp_path), downscale=2, white_background=False)
    assert (by_two.height, by_two.width, by_two.focal) == (half.height, half.width, half.focal)
    assert torch.equal(by_two.images, half.images)
    quarter = load_blender(str(tmp_path), half_res=True, downscale=2, white_background=True)  # 4x4 -> 1x1
    assert (quarter.height, quarter.width) == (1, 1)
    assert quarter.focal == pytest.approx(0.5 * 4 / math.tan(0.4) / 4)
    box = images[("test", 3)].reshape(-1, 4).mean(axis=0)  # the mean RGBA of the whole image, then composited
    assert np.allclose(quarter.images[-1, 0, 0].numpy(), box[:3] * box[3] + (1 - box[3]), atol=1e-6)
    with pytest.raises(DatasetError, match=r"r_0.png: image is 4x4, not divisible by 6 \(dataset.downscale"):
        load_blender(str(tmp_path), half_res=True, downscale=3)


def test_blender_testskip_applies_to_val_and_test_only(tmp_path):
    _write_blender(tmp_path, counts=(5, 5, 5))
    scene = load_blender(str(tmp_path), testskip=2)
    assert (len(scene.i_train), len(scene.i_val), len(scene.i_test)) == (5, 3, 3)
    assert len(load_blender(str(tmp_path), testskip=0).i_test) == 5


def test_blender_bad_inputs_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_blender(str(tmp_path / "missing"))
    monkeypatch.chdir(tmp_path)  # a relative basedir is named with the folder it was looked for in
    with pytest.raises(DatasetError, match=rf"^data/lego: dataset folder not found \(dataset.basedir, looked for "
                                           rf"{tmp_path / 'data' / 'lego'}\); give the scene's folder with --set"):
        load_blender("data/lego")
    _write_blender(tmp_path)
    (tmp_path / "train" / "r_1.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"r_1.png: cannot read image"):
        load_blender(str(tmp_path))
    os.remove(tmp_path / "train" / "r_1.png")
    with pytest.raises(DatasetError, match=r"r_1.png: image file not found"):
        load_blender(str(tmp_path))
    (tmp_path / "transforms_val.json").write_text("{ broken json")
    with pytest.raises(DatasetError, match=r"transforms_val.json: malformed JSON"):
        load_blender(str(tmp_path))
    os.remove(tmp_path / "transforms_val.json")
    with pytest.raises(DatasetError, match=r"transforms_val.json: file not found"):
        load_blender(str(tmp_path))


def test_spherical_render_path():
    poses = spherical_render_path()
    assert poses.shape == (40, 4, 4)
    centres = poses[:, :3, 3]
    assert np.allclose(np.linalg.norm(centres, axis=-1), 4.0)
    assert np.allclose(centres[:, 2], 4.0 * math.sin(math.radians(30)))  # elevated 30 degrees, z up
    forward = -poses[:, :3, 2]  # cameras look down -z
    assert np.allclose(forward, -centres / 4.0, atol=1e-6)  # at the origin
    assert np.allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.eye(3), atol=1e-6)


def _write_llff(root, num=9, size=(6, 8), factor=8, full_hwf=(48.0, 64.0, 50.0)):
    rng = np.random.default_rng(1)
    folder = root / f"images_{factor}"
    folder.mkdir(parents=True)
    rows = []
    for k in range(num):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(folder / f"img_{k:03d}.png")
        angle = 0.05 * (k - num / 2)
        # LLFF columns [down, right, back] of a camera looking roughly along -z
        right = np.array([math.cos(angle), 0.0, -math.sin(angle)])
        down = np.array([0.0, -1.0, 0.0])
        back = np.cross(right, -down)
        centre = np.array([0.3 * k, 0.1 * k, 0.2])
        matrix = np.stack([down, right, back, centre, np.array(full_hwf)], axis=1)  # [3, 5]
        rows.append(np.concatenate([matrix.ravel(), [2.0 + k, 20.0 + k]]))
    np.save(root / "poses_bounds.npy", np.stack(rows))


def test_llff_conventions(tmp_path):
    _write_llff(tmp_path)
    scene = load_llff(str(tmp_path), factor=8, llffhold=8)
    assert scene.images.shape == (9, 6, 8, 3)
    assert (scene.height, scene.width) == (6, 8)
    assert scene.focal == pytest.approx(50.0 / 8)
    assert scene.i_test == [0, 8] and scene.i_val == [0, 8] and len(scene.i_train) == 7
    assert (scene.near, scene.far, scene.use_ndc) == (0.0, 1.0, True)
    poses = scene.poses.numpy().astype(np.float64)
    assert np.allclose(poses_average(poses[:, :3, :4]), np.eye(4)[:3], atol=1e-5)  # recentred
    assert scene.render_poses.shape == (120, 4, 4)
    world = load_llff(str(tmp_path), factor=8, use_ndc=False, recenter=False)
    scale = 1.0 / (2.0 * 0.75)  # bd_factor: the nearest bound becomes 1/0.75
    assert world.near == pytest.approx(0.9 * 2.0 * scale)
    assert world.far == pytest.approx(28.0 * scale)
    # axis fix [down, right, back] -> [right, up, back]; translations scaled
    assert np.allclose(world.poses[3, :3, 1].numpy(), [0.0, 1.0, 0.0], atol=1e-6)
    assert np.allclose(world.poses[3, :3, 3].numpy(), np.array([0.9, 0.3, 0.2]) * scale, atol=1e-6)
    spherified = load_llff(str(tmp_path), factor=8, spherify=True, llffhold=0)
    assert spherified.render_poses.shape == (120, 4, 4) and len(spherified.i_test) == 1


def test_llff_bad_inputs(tmp_path):
    _write_llff(tmp_path)
    with pytest.raises(DatasetError, match="images_4: image folder not found"):
        load_llff(str(tmp_path), factor=4)
    with pytest.raises(DatasetError, match=r"images: image folder not found for dataset.downsample_factor=1 \(the "
                                           r"full-size images\); this scene has images_8$"):
        load_llff(str(tmp_path), factor=1)
    os.remove(tmp_path / "images_8" / "img_003.png")
    with pytest.raises(DatasetError, match=r"poses_bounds.npy: has 9 rows but .*images_8 holds 8 images"):
        load_llff(str(tmp_path), factor=8)
    np.save(tmp_path / "poses_bounds.npy", np.zeros((8, 15)))
    with pytest.raises(DatasetError, match=r"expected an array of shape \(N, 17\)"):
        load_llff(str(tmp_path), factor=8)
    os.remove(tmp_path / "poses_bounds.npy")
    with pytest.raises(DatasetError, match="poses_bounds.npy: file not found"):
        load_llff(str(tmp_path), factor=8)


def test_demo_scene_is_generated_and_loads(tmp_path):
    root = tmp_path / "demo"
    generate_demo_scene(str(root), size=24, num_train=6, num_val=2, num_test=3)
    scene = load_scene(DatasetConfig(type="blender", basedir=str(root)), white_background=True)
    assert scene.images.shape == (11, 24, 24, 3)
    alpha = np.asarray(Image.open(root / "train" / "r_0.png"))[..., 3]
    assert set(np.unique(alpha)) == {0, 255}  # exact hits, no partial coverage
    miss = torch.from_numpy(alpha == 0)
    assert torch.equal(scene.images[0][miss], torch.ones(int(miss.sum()), 3))
    assert 0.05 < (alpha == 255).mean() < 0.8


def test_real_fern_numbers():
    scene = load_llff(shared_path("nerf_llff_data", "fern"), factor=8, use_ndc=False, recenter=True)
    assert scene.images.shape == (20, 378, 504, 3)
    assert scene.focal == pytest.approx(407.566, abs=1e-3)
    assert scene.i_test == [0, 8, 16] and len(scene.i_train) == 17
    assert scene.near == pytest.approx(0.9 / 0.75, rel=1e-5)  # min(bds) after rescale = 1/0.75


def test_real_lego_400_numbers():
    basedir = shared_path("nerf_synthetic", "lego_400")
    with open(os.path.join(basedir, "transforms_train.json")) as f:
        angle = json.load(f)["camera_angle_x"]
    assert 0.5 * 400 / math.tan(0.5 * angle) == pytest.approx(555.556, abs=1e-3)


def _edit_poses(root, change):
    rows = np.load(root / "poses_bounds.npy")
    change(rows)
    np.save(root / "poses_bounds.npy", rows)


def _nan_pose(rows):
    rows[2, 3] = np.nan


def _inf_bound(rows):
    rows[4, 16] = np.inf


def _zero_focal(rows):
    rows[:, 14] = 0.0


def _negative_focal(rows):
    rows[1, 14] = -50.0


def _near_after_far(rows):
    rows[5, 15] = rows[5, 16] + 1.0


def _resize_one_image(root):
    Image.fromarray(np.zeros((7, 8, 3), dtype=np.uint8)).save(root / "images_8" / "img_004.png")


LLFF_BAD_INPUTS = [  # (what is wrong, how to break it, the message, the named file)
    ("wrong shape", lambda r: np.save(r / "poses_bounds.npy", np.zeros((9, 3, 5))), r"shape \(N, 17\)", "poses_bounds.npy"),
    ("no rows", lambda r: np.save(r / "poses_bounds.npy", np.zeros((0, 17))), "no views", "poses_bounds.npy"),
    ("text file", lambda r: (r / "poses_bounds.npy").write_text("0 0 0"), r"cannot read \(not a NumPy .npy array\)",
     "poses_bounds.npy"),
    ("empty file", lambda r: (r / "poses_bounds.npy").write_bytes(b""), r"cannot read \(not a NumPy .npy array\)",
     "poses_bounds.npy"),
    ("NaN pose", lambda r: _edit_poses(r, _nan_pose), "row 2 holds NaN or infinite", "poses_bounds.npy"),
    ("infinite bound", lambda r: _edit_poses(r, _inf_bound), "row 4 holds NaN or infinite", "poses_bounds.npy"),
    ("zero focal", lambda r: _edit_poses(r, _zero_focal), "row 0 has focal length 0; it must be > 0", "poses_bounds.npy"),
    ("negative focal", lambda r: _edit_poses(r, _negative_focal), "row 1 has focal length -50", "poses_bounds.npy"),
    ("near >= far", lambda r: _edit_poses(r, _near_after_far), "row 5 has bounds .* expected 0 < near < far",
     "poses_bounds.npy"),
    ("image sizes differ", _resize_one_image, "img_004.png: image is 8x7, expected 8x6", "img_004.png"),
    ("count mismatch", lambda r: os.remove(r / "images_8" / "img_000.png"), "has 9 rows but .* holds 8 images",
     "poses_bounds.npy"),
    ("not an image", lambda r: (r / "images_8" / "img_002.png").write_text("text"), "cannot read image",
     "img_002.png"),
]


@pytest.mark.parametrize("what, breaks, message, named", LLFF_BAD_INPUTS, ids=[c[0] for c in LLFF_BAD_INPUTS])
def test_llff_bad_inputs_table(tmp_path, what, breaks, message, named):
    _write_llff(tmp_path)
    breaks(tmp_path)
    with pytest.raises(DatasetError, match=message) as err:
        load_llff(str(tmp_path), factor=8)
    assert named in str(err.value) and "\n" not in str(err.value), what


def test_llff_all_views_held_out_is_an_empty_training_split(tmp_path):
    _write_llff(tmp_path)
    with pytest.raises(DatasetError, match="poses_bounds.npy: with dataset.llffhold=1 all 9 views are held out"):
        load_llff(str(tmp_path), factor=8, llffhold=1)


def _edit_transforms(root, split, change):
    path = root / f"transforms_{split}.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))  # NaN and Infinity as JSON literals, which json.load reads back


def _set_matrix_value(meta, value):
    meta["frames"][1]["transform_matrix"][0][3] = value


BLENDER_BAD_INPUTS = [
    ("NaN pose", lambda r: _edit_transforms(r, "train", lambda m: _set_matrix_value(m, float("nan"))),
     "frame './train/r_1' has NaN or infinite", "transforms_train.json"),
    ("infinite pose", lambda r: _edit_transforms(r, "val", lambda m: _set_matrix_value(m, float("inf"))),
     "frame './val/r_1' has NaN or infinite", "transforms_val.json"),
    ("3x4 pose", lambda r: _edit_transforms(r, "test", lambda m: m["frames"][0].update(transform_matrix=[[1, 0, 0, 0]] * 3)),
     "needs a 4x4 'transform_matrix'", "transforms_test.json"),
    ("text pose", lambda r: _edit_transforms(r, "test", lambda m: m["frames"][0].update(transform_matrix="abc")),
     "needs a 4x4 'transform_matrix' of numbers, got a value that is not a matrix", "transforms_test.json"),
    ("no file_path", lambda r: _edit_transforms(r, "train", lambda m: m["frames"][1].pop("file_path")),
     r"frame 1 \(counted from 0\) has no 'file_path'", "transforms_train.json"),
    ("zero field of view", lambda r: _edit_transforms(r, "train", lambda m: m.update(camera_angle_x=0.0)),
     "'camera_angle_x' must be a field of view in radians", "transforms_train.json"),
    ("negative field of view", lambda r: _edit_transforms(r, "val", lambda m: m.update(camera_angle_x=-0.5)),
     "'camera_angle_x' must be", "transforms_val.json"),
    ("no training frames", lambda r: _edit_transforms(r, "train", lambda m: m.update(frames=[])),
     "no training frames", "transforms_train.json"),
    ("no val or test frames", lambda r: [_edit_transforms(r, s, lambda m: m.update(frames=[])) for s in ("val", "test")],
     "no frames; validation and evaluation need at least one", "transforms_val.json"),
    ("image sizes differ", lambda r: Image.fromarray(np.zeros((5, 4, 4), dtype=np.uint8), "RGBA").save(r / "val" / "r_1.png"),
     "r_1.png: image is 4x5, expected 4x4", "r_1.png"),
]


@pytest.mark.parametrize("what, breaks, message, named", BLENDER_BAD_INPUTS, ids=[c[0] for c in BLENDER_BAD_INPUTS])
def test_blender_bad_inputs_table(tmp_path, what, breaks, message, named):
    _write_blender(tmp_path)
    breaks(tmp_path)
    with pytest.raises(DatasetError, match=message) as err:
        load_blender(str(tmp_path))
    assert named in str(err.value) and "\n" not in str(err.value), what
