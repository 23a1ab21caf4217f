"""Camera poses from photos or a video: structure from motion with pycolmap, written as an LLFF scene.

The pipeline of LLFF's imgs2poses.py on COLMAP's own Python bindings (pycolmap): SIFT features with one
shared camera (SIMPLE_RADIAL), exhaustive matching for photo sets and sequential matching for video
frames, incremental mapping, the largest model undistorted to a pinhole camera. The output is what
`dataset.type: llff` reads: `poses_bounds.npy` (per view [down, right, back | centre | h, w, f] and the
0.1 / 99.9 percentiles of the depths of the points it sees, as LLFF computes them), `images/` and
`images_2`, `images_4`, `images_8`.

Shapes: N views, M sparse points.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .files import first_line, folder_replaced_on_success

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
DOWNSAMPLE_FACTORS = (2, 4, 8)
# what write_llff puts into a scene folder, and all that a re-run may replace there (besides the file managers'
# own metadata, OS_METADATA)
IMAGE_FOLDERS = ("images",) + tuple(f"images_{f}" for f in DOWNSAMPLE_FACTORS)
OUTPUT_ENTRIES = ("poses_bounds.npy",) + IMAGE_FOLDERS
OS_METADATA = (".DS_Store", "Thumbs.db", "desktop.ini")
MAPPING_ATTEMPTS = 3  # runs of the incremental mapping at most, when one places fewer than half of the images


class PosesError(ValueError):
    """Input the pipeline cannot use, or a reconstruction that failed; the message is one line."""


@dataclass
class Reconstructed:
    """The outcome of structure from motion, in LLFF's terms."""

    names: list  # [N] file names of the registered views, sorted
    failed: list  # names of the images that were not registered
    poses: np.ndarray  # [N, 3, 5]: camera-to-world [down, right, back | centre] and [h, w, f]
    bounds: np.ndarray  # [N, 2]: near and far depths of the points each view sees
    points: np.ndarray  # [M, 3] sparse points
    mean_reprojection_error: float
    capture: str  # "forward-facing" or "360"
    seconds: dict = field(default_factory=dict)  # stage -> seconds


# ------------------------------------------------------------------------------------------ input
def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grey image [H, W] (higher: sharper)."""
    g = gray.astype(np.float64)
    lap = -4.0 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]  # [H-2, W-2]
    return float(lap.var())


def extract_video_frames(video: str, out_dir: str, fps: float, max_frames: int, blur_fraction: float) -> dict:
    """Frames of `video` at `fps` into out_dir (frame_00000.png, ...): frames whose sharpness is below
    blur_fraction x the median are skipped as blurred, then at most max_frames evenly spaced are kept.
    Above the video's own frame rate, frames are taken at that rate (more would be copies of the same frames).
    Returns {"read", "blurred", "kept", "fps" (the rate taken), "video_fps" (0: unknown)}; PosesError when the
    video cannot be read."""
    from PIL import Image

    video_fps = _video_frame_rate(video)
    if 0 < video_fps < fps:
        fps = video_fps
    scores = np.array([sharpness(frame.mean(-1)) for frame in _video_frames(video, fps)])  # pass 1: scores only
    if not len(scores):
        raise PosesError(f"{video}: no frames could be decoded")
    sharp = [k for k, score in enumerate(scores) if score >= blur_fraction * np.median(scores)]
    blurred = len(scores) - len(sharp)
    if len(sharp) > max_frames:
        sharp = [sharp[round(i * (len(sharp) - 1) / (max_frames - 1))] for i in range(max_frames)]
    os.makedirs(out_dir, exist_ok=True)
    keep = set(sharp)
    for index, frame in enumerate(_video_frames(video, fps)):  # pass 2: write the kept frames (memory: one frame)
        if index in keep:
            Image.fromarray(frame).save(os.path.join(out_dir, f"frame_{index:05d}.png"))
    return {"read": len(scores), "blurred": blurred, "kept": len(sharp), "fps": fps, "video_fps": video_fps}


def _video_frame_rate(video: str) -> float:
    """The frames per second that the video's header states (0 when it states none); PosesError when the video
    cannot be read."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(video)
    try:
        return float(next(reader).get("fps") or 0.0)
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError, TypeError) as err:
        raise PosesError(f"{video}: not a readable video ({first_line(err)[:200]})") from None
    finally:
        reader.close()


def _video_frames(video: str, fps: float):
    """The frames [H, W, 3] uint8 of a video at `fps`, one at a time; PosesError when it cannot be read."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(video, output_params=["-vf", f"fps={fps}"])
        width, height = next(reader)["size"]
        for raw in reader:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError) as err:
        raise PosesError(f"{video}: not a readable video ({first_line(err)[:200]})") from None


def import_photos(folder: str, out_dir: str) -> dict:
    """Copy the photos of `folder` into out_dir upright (EXIF orientation applied); files without an image
    extension are skipped. PosesError for an empty folder, fewer than 3 photos, an unreadable image or
    photos of different sizes. Returns {"photos", "skipped", "rotated", "size"}."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if os.path.isfile(folder):
        raise PosesError(f"{folder}: a file, but not a video ({', '.join(VIDEO_EXTENSIONS)}); give a folder of photos "
                         "or a video")
    if not os.path.isdir(folder):
        raise PosesError(f"{folder}: no such folder or video file")
    entries = sorted(name for name in os.listdir(folder) if not name.startswith("."))
    photos = [name for name in entries if name.lower().endswith(IMAGE_EXTENSIONS)]
    skipped = [name for name in entries if name not in photos]
    if not photos:
        raise PosesError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})"
                         + (f"; it holds {len(skipped)} other file(s), e.g. {skipped[0]}" if skipped else ", it is empty"))
    if len(photos) < 3:
        raise PosesError(f"{folder}: {len(photos)} image(s); structure from motion needs at least 3 overlapping photos")
    stems = {}
    for name in photos:
        stems.setdefault(os.path.splitext(name)[0].lower(), []).append(name)
    clash = next((names for names in stems.values() if len(names) > 1), None)
    if clash:
        raise PosesError(f"{folder}: {' and '.join(clash)} differ only in their extension; rename one of them")
    os.makedirs(out_dir, exist_ok=True)
    sizes, rotated = {}, 0
    for name in photos:
        path = os.path.join(folder, name)
        try:
            with Image.open(path) as image:
                rotated += image.getexif().get(0x0112, 1) not in (0, 1)  # the EXIF orientation tag
                upright = ImageOps.exif_transpose(image).convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise PosesError(f"{path}: not a readable image ({type(err).__name__})") from None
        sizes[name] = upright.size
        stem = os.path.splitext(name)[0]
        upright.save(os.path.join(out_dir, stem + ".png"))
    distinct = sorted(set(sizes.values()))
    if len(distinct) > 1:
        examples = ", ".join(f"{next(n for n in photos if sizes[n] == s)} {s[0]}x{s[1]}" for s in distinct[:3])
        raise PosesError(f"{folder}: photos of {len(distinct)} different sizes ({examples}); one camera and one size "
                         "are expected: resize them to one size or pass only the photos of one camera")
    return {"photos": len(photos), "skipped": skipped, "rotated": rotated, "size": distinct[0],
            "originals": {os.path.splitext(name)[0] + ".png": name for name in photos}}  # our PNG copy -> the photo


# ------------------------------------------------------------------------------- reconstruction
def run_colmap(image_dir: str, work_dir: str, sequential: bool, device: str = "auto", source: str = ""):
    """SIFT, matching, incremental mapping and undistortion; (undistorted pinhole reconstruction, folder
    of undistorted images, names of all input images, {stage: seconds}). PosesError (naming `source`, the
    user's input) when fewer than 3 images register."""
    source = source or image_dir
    import pycolmap

    if device == "cuda" and not getattr(pycolmap, "has_cuda", False):
        raise PosesError("--device cuda: this pycolmap was built without CUDA (on Linux with an NVIDIA GPU: "
                         "pip uninstall pycolmap && pip install pycolmap-cuda12)")
    pycolmap.logging.minloglevel = 2  # COLMAP's progress lines would drown the summary; errors still show
    seconds, database = {}, os.path.join(work_dir, "database.db")
    names = sorted(os.listdir(image_dir))
    start = time.time()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    where = pycolmap.Device(device)
    pycolmap.extract_features(database, image_dir, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              device=where)
    seconds["features"] = time.time() - start
    start = time.time()
    mapping = pycolmap.IncrementalPipelineOptions()
    if sequential:  # video frames: neighbours overlap most, and consecutive frames are close together
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = 20  # each frame is matched with the next 20 (and, quadratically, farther ones)
        pycolmap.match_sequential(database, pairing_options=pairing, device=where)
        # COLMAP's first pair needs a 16-degree triangulation angle, which frames a few degrees apart rarely
        # reach within the matched window: 8 degrees (a slow 100-frame pan failed at 16 and passed at 8)
        mapping.mapper.init_min_tri_angle = 8.0
    else:
        pycolmap.match_exhaustive(database, device=where)
    seconds["matching"] = time.time() - start
    start = time.time()

    def map_once(attempt: int):
        sparse = os.path.join(work_dir, f"sparse_{attempt}")
        os.makedirs(sparse, exist_ok=True)
        models = pycolmap.incremental_mapping(database, image_dir, sparse, options=mapping)
        best = max(models, key=lambda k: model_size(models[k]), default=None)
        return (models[best], os.path.join(sparse, str(best))) if best is not None else (None, None)

    (model, model_dir), attempts = largest_model(map_once, len(names))
    seconds["mapping"] = time.time() - start
    if attempts > 1 and model is not None:
        print(f"Mapping: {attempts} runs (COLMAP's mapping is random; one that places fewer than half of the images "
              f"is run again, {MAPPING_ATTEMPTS} runs at most); kept the one placing {model.num_reg_images()} of "
              f"{len(names)}")
    if model is None or model.num_points3D() < 10:
        raise PosesError(f"{source}: no usable reconstruction from the {len(names)} images (the photos do not "
                         "overlap enough, or show too little texture)")
    if model.num_reg_images() < 3:
        raise PosesError(f"{source}: only {model.num_reg_images()} of {len(names)} images could be placed; "
                         "the photos do not overlap enough")
    start = time.time()
    undistorted = os.path.join(work_dir, "undistorted")
    pycolmap.undistort_images(undistorted, model_dir, image_dir)
    seconds["undistortion"] = time.time() - start
    return pycolmap.Reconstruction(os.path.join(undistorted, "sparse")), os.path.join(undistorted, "images"), names, \
        seconds


def largest_model(map_once, num_images: int, attempts: int | None = None) -> tuple:
    """(the result of map_once(attempt) with the most registered images, number of attempts made).

    COLMAP's incremental mapping is random (RANSAC, multithreaded bundle adjustment): from the same
    matches, a run that places all 21 frames of a video can, now and then, stop after 5 or find no initial
    pair. So a run whose model places fewer than half of the images is repeated, up to `attempts` runs
    (MAPPING_ATTEMPTS), and the largest model is kept (the earlier of two equal ones). map_once returns
    (model or None, anything); a model answers num_reg_images() and num_points3D(). A capture of which less
    than half can be placed pays every run: input with nothing to match fails fast, a partial one maps
    MAPPING_ATTEMPTS times."""
    attempts = max(1, MAPPING_ATTEMPTS if attempts is None else attempts)
    best = None
    for attempt in range(attempts):
        result = map_once(attempt)
        if best is None or model_size(result[0]) > model_size(best[0]):
            best = result
        if 2 * model_size(best[0])[0] >= num_images:
            return best, attempt + 1
    return best, attempts


def model_size(model) -> tuple[int, int]:
    """(registered images, sparse points) of a model, (-1, -1) for none: which of two models is larger."""
    return (model.num_reg_images(), model.num_points3D()) if model is not None else (-1, -1)


def llff_poses(reconstruction) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(names [N] sorted, poses [N, 3, 5], bounds [N, 2], points [M, 3]) of a pinhole reconstruction, as LLFF's
    pose_utils.save_poses writes them: c2w columns reordered from COLMAP's [right, down, forward] to
    [down, right, back], hwf of the (undistorted) camera, near/far = 0.1 / 99.9 percentile of the depths
    of the points each view observes."""
    images = sorted(reconstruction.images.values(), key=lambda im: im.name)
    images = [im for im in images if im.has_pose]
    camera = reconstruction.cameras[images[0].camera_id]
    hwf = np.array([camera.height, camera.width, camera.params[0]], dtype=np.float64)
    ids = sorted(reconstruction.points3D)
    points = np.array([reconstruction.points3D[i].xyz for i in ids]).reshape(-1, 3)  # [M, 3]
    row_of = {point_id: row for row, point_id in enumerate(ids)}
    poses, bounds = [], []
    for image in images:
        w2c = np.eye(4)
        w2c[:3, :4] = image.cam_from_world().matrix()
        c2w = np.linalg.inv(w2c)[:3, :4]  # [3, 4]: right, down, forward, centre
        pose = np.concatenate([c2w[:, 1:2], c2w[:, 0:1], -c2w[:, 2:3], c2w[:, 3:4], hwf[:, None]], 1)  # [3, 5]
        seen = [row_of[p.point3D_id] for p in image.points2D if p.has_point3D() and p.point3D_id in row_of]
        depths = (points[seen] - c2w[:, 3]) @ c2w[:, 2]  # along the viewing direction
        poses.append(pose)
        bounds.append([np.percentile(depths, 0.1), np.percentile(depths, 99.9)] if len(depths) else [np.nan, np.nan])
    return [im.name for im in images], np.stack(poses), np.array(bounds), points


def capture_kind(poses: np.ndarray) -> str:
    """"360" when the cameras look at the scene from all round, else "forward-facing", from the view
    directions f_i (poses: LLFF [N, 3, 5]) about their mean direction a: all round when some f_i is more
    than 90 degrees from a (a ring near the horizon), or when at least half of the f_i are 20 degrees or more
    off a and their directions about a leave no gap wider than 90 degrees (a ring looking down at the scene:
    the cameras circle the axis; a few shots from straight above, near a, do not count against it). A
    forward-facing capture has views near a, and at most an arc around it."""
    forward = -poses[:, :, 2] / np.linalg.norm(poses[:, :, 2], axis=1, keepdims=True)  # [N, 3] (back = -forward)
    axis = forward.mean(0)
    if np.linalg.norm(axis) < 1e-6:
        return "360"
    axis = axis / np.linalg.norm(axis)
    off_axis = np.degrees(np.arccos(np.clip(forward @ axis, -1.0, 1.0)))  # [N]
    if off_axis.max() > 90.0:
        return "360"
    side = forward - (forward @ axis)[:, None] * axis  # [N, 3] the part of each direction across the axis
    e1 = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 = e1 / np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    ring = off_axis >= 20.0  # [N] the views that look at the scene from a side
    if 2 * ring.sum() < len(ring):
        return "forward-facing"
    azimuth = np.sort(np.degrees(np.arctan2(side[ring] @ e2, side[ring] @ e1)))  # [K]
    widest_gap = np.diff(np.append(azimuth, azimuth[0] + 360.0)).max()
    return "360" if widest_gap <= 90.0 else "forward-facing"


def reconstruct(image_dir: str, work_dir: str, sequential: bool, device: str = "auto",
                source: str = "") -> tuple[Reconstructed, str]:
    """Structure from motion on the images of image_dir (work files in work_dir); see run_colmap. Returns the
    result and the folder of the undistorted views."""
    source = source or image_dir
    reconstruction, undistorted_dir, names, seconds = run_colmap(image_dir, work_dir, sequential, device, source)
    registered, poses, bounds, points = llff_poses(reconstruction)
    bad = [name for name, (near, far) in zip(registered, bounds) if not (np.isfinite(near) and 0 < near < far)]
    if bad:
        raise PosesError(f"{source}: no depth range for {len(bad)} registered view(s) (e.g. {bad[0]}): they see "
                         "no sparse points in front of them")
    result = Reconstructed(names=registered, failed=[n for n in names if n not in registered], poses=poses,
                           bounds=bounds, points=points,
                           mean_reprojection_error=float(reconstruction.compute_mean_reprojection_error()),
                           capture=capture_kind(poses), seconds=seconds)
    return result, undistorted_dir


# ------------------------------------------------------------------------------------------ output
def write_llff(result: Reconstructed, undistorted_dir: str, out_dir: str) -> None:
    """poses_bounds.npy, images/ (the undistorted views, PNG) and images_2/4/8 (area-averaged) into out_dir,
    built beside it and renamed into place, so that a failure never leaves a folder that looks complete."""
    from PIL import Image

    with folder_replaced_on_success(out_dir, ".imgs2poses-") as tmp:
        for folder in IMAGE_FOLDERS:
            os.makedirs(os.path.join(tmp, folder))
        height, width = _multiple_of(int(result.poses[0, 0, 4]), 8), _multiple_of(int(result.poses[0, 1, 4]), 8)
        for k, name in enumerate(result.names):
            with Image.open(os.path.join(undistorted_dir, name)) as image:
                # centred crop to a multiple of 8 pixels, so that images_N are exactly 1/N (the loader divides
                # the focal length by N); at most 7 pixels go, the principal point stays within half a pixel
                left, top = (image.width - width) // 2, (image.height - height) // 2
                image = image.convert("RGB").crop((left, top, left + width, top + height))
                stem = f"{k:04d}_{os.path.splitext(name)[0]}.png"
                image.save(os.path.join(tmp, "images", stem))
                for factor in DOWNSAMPLE_FACTORS:
                    size = (max(1, image.width // factor), max(1, image.height // factor))
                    image.resize(size, Image.BOX).save(os.path.join(tmp, f"images_{factor}", stem))
        poses = result.poses.copy()
        poses[:, 0, 4], poses[:, 1, 4] = height, width
        rows = np.concatenate([poses.reshape(-1, 15), result.bounds], 1)  # [N, 17]
        np.save(os.path.join(tmp, "poses_bounds.npy"), rows)


def _multiple_of(size: int, factor: int) -> int:
    return max(factor, size - size % factor)


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (s, R [3, 3], t [3]) minimising sum |s R source_i + t - target_i|^2 (Umeyama 1991):
    source, target [N, 3]."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    cov = xt.T @ xs / len(source)  # [3, 3]
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / xs.var(0).sum())
    return scale, rotation, mu_t - scale * rotation @ mu_s


def default_config(capture: str) -> str:
    """The config a capture trains with next."""
    return "config/own_forward_fast.yml" if capture == "forward-facing" else "config/own_360_fast.yml"


# The width own_forward_fast was tuned at (fern's images_8, from 4032-pixel originals: 504 pixels).
TRAINING_WIDTH = 500


def training_downsample_factor(width: int) -> int:
    """The dataset.downsample_factor (1 or one of DOWNSAMPLE_FACTORS) whose images come nearest TRAINING_WIDTH
    pixels wide (the smaller images on a tie): a 4032-pixel photo trains from images_8, a 504-pixel one from
    images/, so that small photos are not shrunk to a few dozen pixels."""
    return min((1, *DOWNSAMPLE_FACTORS), key=lambda f: (abs(width / f - TRAINING_WIDTH), -f))


__all__ = ["PosesError", "Reconstructed", "capture_kind", "default_config", "extract_video_frames", "import_photos",
           "llff_poses", "reconstruct", "sharpness", "training_downsample_factor", "umeyama", "write_llff"]
