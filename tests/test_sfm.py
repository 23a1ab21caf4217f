"""nerf/sfm.py: the similarity alignment, sharpness, the kind of capture, LLFF's pose layout, photo import,
the repeated mapping."""

import math

import numpy as np
import pytest
from PIL import Image

from nerf.datasets.blender import pose_spherical
from nerf.sfm import PosesError, capture_kind, import_photos, largest_model, sharpness, umeyama


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(20, 3))
    rotation, scale, shift = _rotation([1, 2, 3], 40), 2.5, np.array([1.0, -2.0, 0.5])
    target = scale * source @ rotation.T + shift
    s, r, t = umeyama(source, target)
    assert s == pytest.approx(scale) and np.allclose(r, rotation) and np.allclose(t, shift)
    mirrored = source * np.array([1, 1, -1])  # a reflection is not a rotation: det(R) stays +1
    assert np.linalg.det(umeyama(mirrored, target)[1]) == pytest.approx(1.0)


def test_sharpness_ranks_a_blurred_image_below_the_original():
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(64, 64))
    blurred = sum(np.roll(np.roll(image, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    assert sharpness(blurred) < 0.2 * sharpness(image)
    assert sharpness(np.full((8, 8), 0.5)) == 0.0


def _llff(c2w_list):
    """OpenGL camera-to-world [4, 4] -> LLFF [3, 5] ([down, right, back | centre | hwf])."""
    return np.stack([np.concatenate([-c[:3, 1:2], c[:3, 0:1], c[:3, 2:3], c[:3, 3:4], [[100], [100], [90]]], 1)
                     for c in c2w_list])


def test_capture_kind_from_the_spread_of_the_views():
    # forward: a 60 x 15 degree grid, a wide 80 x 35 degree one, and a ring of views all looking one way
    forward = _llff([pose_spherical(theta, phi, 4.0) for theta in (-30, 0, 30) for phi in (-15, -30)])
    wide = _llff([pose_spherical(-40 + 16 * (k % 6), -10 - 35 * (k // 6) / 4, 4.0) for k in range(30)])
    wobble = _llff([pose_spherical(10 * np.cos(a), -20 + 10 * np.sin(a), 4.0) for a in np.linspace(0, 6, 12)])
    # around: a ring at the horizon, one looking down 20 degrees, two rings looking down 15 and 35 degrees,
    # a ring looking down 60 degrees at an object on a table
    ring = _llff([pose_spherical(theta, -20, 4.0) for theta in range(0, 360, 30)])
    horizon = _llff([pose_spherical(theta, 0, 4.0) for theta in range(0, 360, 30)])
    two_rings = _llff([pose_spherical(7.5 * k, -15.0 if k % 2 == 0 else -35.0, 4.0) for k in range(48)])
    table = _llff([pose_spherical(theta, -60, 4.0) for theta in range(0, 360, 40)])
    # an orbit 30 degrees down with a few shots from nearly straight above (near the mean direction)
    with_top = _llff([pose_spherical(theta, -30, 4.0) for theta in range(0, 360, 10)]
                     + [pose_spherical(60.0 * k, -85, 4.0) for k in range(6)])
    # forward: fewer than half of the views across the axis (the rule's boundary), the others looking along it
    cone = _llff([pose_spherical(theta, -90 + 25, 4.0) for theta in range(0, 360, 60)]
                 + [pose_spherical(60.0 * k, -88, 4.0) for k in range(7)])
    for poses in (forward, wide, wobble, cone):
        assert capture_kind(poses) == "forward-facing"
    for poses in (ring, horizon, two_rings, table, with_top):
        assert capture_kind(poses) == "360"


def _save(folder, name, size=(32, 24), color=(200, 30, 30), orientation=None):
    image = Image.new("RGB", size, color)
    if orientation:
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(folder / name, exif=exif)
    else:
        image.save(folder / name)


def test_import_turns_photos_upright_and_skips_other_files(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for k in range(3):
        _save(src, f"a{k}.jpg", size=(32, 24) if k else (24, 32), orientation=None if k else 6)  # 6: turn 90 degrees
    (src / "notes.txt").write_text("not a photo")
    found = import_photos(str(src), str(tmp_path / "out"))
    assert found == {"photos": 3, "skipped": ["notes.txt"], "rotated": 1, "size": (32, 24),
                     "originals": {"a0.png": "a0.jpg", "a1.png": "a1.jpg", "a2.png": "a2.jpg"}}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a0.png", "a1.png", "a2.png"]
    assert Image.open(tmp_path / "out" / "a0.png").size == (32, 24)


@pytest.mark.parametrize("case, message", [
    ("empty", "no images .*it is empty"),
    ("other_files_only", "no images .*1 other file"),
    ("two", "2 image\\(s\\); structure from motion needs at least 3"),
    ("unreadable", "b.jpg: not a readable image"),
    ("mixed_sizes", "photos of 2 different sizes \\(a.jpg 32x24, c.jpg 64x48\\)"),
    ("missing", "no such folder"),
    ("same_stem", "a.jpg and a.png differ only in their extension"),
])
def test_bad_photo_folders_are_one_line_errors(tmp_path, case, message):
    src = tmp_path / "photos"
    if case != "missing":
        src.mkdir()
    if case == "other_files_only":
        (src / "readme.md").write_text("x")
    if case in ("two", "unreadable", "mixed_sizes"):
        _save(src, "a.jpg")
        _save(src, "b.jpg")
    if case == "unreadable":
        (src / "b.jpg").write_bytes(b"not a jpeg")
        _save(src, "c.jpg")
    if case == "mixed_sizes":
        _save(src, "c.jpg", size=(64, 48))
    if case == "same_stem":
        for name in ("a.jpg", "a.png", "b.jpg"):
            _save(src, name)
    with pytest.raises(PosesError, match=message) as err:
        import_photos(str(src), str(tmp_path / "out"))
    assert "\n" not in str(err.value)


class _Model:
    def __init__(self, registered, points):
        self.registered, self.points = registered, points

    def num_reg_images(self):
        return self.registered

    def num_points3D(self):
        return self.points


@pytest.mark.parametrize("images, runs, expected_model, expected_attempts", [
    (21, [(21, 2000)], 0, 1),  # the first run places them all: no second run
    (21, [(5, 679), (21, 2264)], 1, 2),  # 5 of 21: mapped again, the larger kept
    (21, [(10, 900), (11, 800), (21, 2000)], 1, 2),  # 10 of 21 is below half, 11 is not
    (20, [(10, 900), (20, 2000)], 0, 1),  # 10 of 20 is half: enough
    (21, [None, (4, 0), (3, 40)], 1, 3),  # never half: all runs, the one with most images kept
    (21, [(6, 500), None, (5, 900)], 0, 3),
    (21, [(5, 100), (5, 300), (5, 200)], 1, 3),  # equal images: the most points
    (21, [(5, 100), (5, 100), (4, 9)], 0, 3),  # equal models: the earlier
    (21, [None, None, None], None, 3),  # no model at all
])
def test_mapping_is_repeated_until_half_of_the_images_are_placed(images, runs, expected_model, expected_attempts):
    calls = []

    def map_once(attempt):
        calls.append(attempt)
        run = runs[attempt]
        return (_Model(*run) if run else None, f"model {attempt}" if run else None)

    (model, name), attempts = largest_model(map_once, images)
    assert attempts == expected_attempts == len(calls) and calls == list(range(attempts))
    if expected_model is None:
        assert model is None and name is None
    else:
        assert name == f"model {expected_model}"
        assert (model.registered, model.points) == runs[expected_model]


def test_the_training_images_come_nearest_500_pixels_wide():
    from nerf.sfm import training_downsample_factor

    cases = {192: 1, 496: 1, 760: 2, 1008: 2, 1920: 4, 4032: 8, 8000: 8}  # 760: 380 is 120 off 500, 760 is 260 off
    assert {width: training_downsample_factor(width) for width in cases} == cases
    assert training_downsample_factor(667) == 2  # 333.5 and 667 are both 167 off: the smaller images


def test_an_input_that_is_neither_a_folder_nor_a_video_says_which(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"")
    with pytest.raises(PosesError, match=r"photo.png: a file, but not a video \(.mp4, "):
        import_photos(str(tmp_path / "photo.png"), str(tmp_path / "out"))
    with pytest.raises(PosesError, match=r"nowhere: no such folder or video file$"):
        import_photos(str(tmp_path / "nowhere"), str(tmp_path / "out"))
