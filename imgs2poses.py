"""Camera poses for your own photos or video: structure from motion (pycolmap) into an LLFF scene.

    python imgs2poses.py PHOTO_FOLDER_OR_VIDEO --out data/my_scene [--fps 2] [--max-frames 100]
                         [--matcher auto|exhaustive|sequential] [--device auto|cpu|cuda]

Writes data/my_scene/{poses_bounds.npy, images/, images_2/, images_4/, images_8/}, which
`dataset.type: llff` trains on, and prints what was registered, the reprojection error, the kind of
capture (forward-facing or 360) and the config to train with. See README "Your own photos".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import tempfile
import time

from nerf.config import read_yaml
from nerf.files import first_line
from nerf.sfm import (OS_METADATA, OUTPUT_ENTRIES, VIDEO_EXTENSIONS, PosesError, default_config, extract_video_frames,
                      import_photos, reconstruct, training_downsample_factor, write_llff)


ROOT = os.path.dirname(os.path.abspath(__file__))
VIDEO_DEFAULTS = {"fps": 2.0, "max_frames": 100, "blur_threshold": 0.6}  # the options that apply to a video only


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("input", help="a folder of photos, or a video file")
    parser.add_argument("--out", required=True, help="the scene folder to write (an earlier output of this script there is replaced; "
                                                    "any other non-empty folder, or one holding anything else "
                                                    "too, is refused)")
    parser.add_argument("--fps", type=float, default=None,
                        help="video: frames taken per second of video (default 2; at most the video's own rate)")
    parser.add_argument("--max-frames", type=int, default=None, help="video: at most this many frames (default 100)")
    parser.add_argument("--blur-threshold", type=float, default=None,
                        help="video: skip frames whose sharpness is below this fraction of the median frame's (default 0.6)")
    parser.add_argument("--matcher", choices=("auto", "exhaustive", "sequential"), default="auto",
                        help="auto (default): sequential for video frames, exhaustive for photos")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where SIFT and matching run (default auto; cuda needs a CUDA build of pycolmap)")
    args = parser.parse_args(argv)
    args.video_options = [f"--{name.replace('_', '-')}" for name in VIDEO_DEFAULTS if getattr(args, name) is not None]
    for name, default in VIDEO_DEFAULTS.items():
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    if not 0 < args.fps < float("inf") or args.max_frames < 3 or not 0 <= args.blur_threshold < 1:  # nan too
        parser.error("--fps must be > 0, --max-frames >= 3 and --blur-threshold in [0, 1)")
    return args


def check_output(source: str, out: str) -> None:
    """PosesError unless `out` may be (re)written: not the input nor a folder holding it, and either new or
    an earlier output of this script holding nothing else (it is replaced as a whole)."""
    source_real, out_real = os.path.realpath(source), os.path.realpath(out)
    if source_real == out_real or source_real.startswith(out_real + os.sep):
        raise PosesError(f"--out {out}: holds the input {source}, which replacing it would delete; choose another "
                         "folder")
    if os.path.isfile(out):
        raise PosesError(f"--out {out}: is a file; a folder is expected")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, "poses_bounds.npy")):
        raise PosesError(f"--out {out}: exists and is not an earlier output of imgs2poses.py (no poses_bounds.npy); "
                         "choose a new folder")
    others = sorted(set(os.listdir(out)) - set(OUTPUT_ENTRIES) - set(OS_METADATA)) if os.path.isdir(out) else []
    if others:
        raise PosesError(f"--out {out}: also holds what imgs2poses.py did not write ({', '.join(others[:5])}"
                         f"{', ...' if len(others) > 5 else ''}), which replacing the folder would delete; move it "
                         "out or choose another folder")


def main(argv=None) -> dict:
    args = parse_args(argv)
    is_video = os.path.isfile(args.input) and args.input.lower().endswith(VIDEO_EXTENSIONS)
    started = time.time()
    try:
        check_output(args.input, args.out)
        with tempfile.TemporaryDirectory(prefix="imgs2poses-") as work:
            frames_dir = os.path.join(work, "input")
            start = time.time()
            if is_video:
                found = extract_video_frames(args.input, frames_dir, args.fps, args.max_frames, args.blur_threshold)
                rate = (f"{found['fps']:g} fps (the video's own rate; --fps {args.fps:g} would repeat frames)"
                        if found["fps"] < args.fps else f"{found['fps']:g} fps")
                print(f"{args.input}: {found['read']} frames at {rate}, {found['blurred']} blurred skipped, "
                      f"{found['kept']} kept")
                if found["kept"] < 3:
                    raise PosesError(f"{args.input}: {found['kept']} usable frame(s); at least 3 are needed (raise --fps)")
            else:
                if args.video_options:  # a folder of photos: every photo is taken
                    verb = "applies" if len(args.video_options) == 1 else "apply"
                    print(f"note: {', '.join(args.video_options)} {verb} to a video; {args.input} is a folder of "
                          "photos, all of which are used")
                found = import_photos(args.input, frames_dir)
                print(f"{args.input}: {found['photos']} photos of {found['size'][0]}x{found['size'][1]}"
                      + (f", {found['rotated']} turned upright (EXIF)" if found["rotated"] else "")
                      + (f"; skipped {len(found['skipped'])} other file(s): {', '.join(found['skipped'][:5])}"
                         if found["skipped"] else ""))
            stages = {"input": time.time() - start}
            sequential = args.matcher == "sequential" or (args.matcher == "auto" and is_video)
            result, undistorted = reconstruct(frames_dir, work, sequential, args.device, args.input)
            originals = found.get("originals", {})  # name the user's photos, not our PNG copies of them
            result = dataclasses.replace(result, failed=[originals.get(name, name) for name in result.failed])
            stages.update(result.seconds)
            start = time.time()
            write_llff(result, undistorted, args.out)
            stages["output"] = time.time() - start
    except PosesError as err:
        sys.exit(f"error: {err}")
    except (OSError, RuntimeError) as err:  # a full disk, an unwritable folder, a COLMAP failure
        sys.exit(f"error: {args.out}: {type(err).__name__}: {first_line(err)[:300]}")
    return summarize(args, result, stages, time.time() - started)


def summarize(args, result, stages: dict, seconds: float) -> dict:
    """Print what was registered and what to do next; the summary as a dict."""
    total = len(result.names) + len(result.failed)
    print(f"Registered {len(result.names)} of {total} images"
          + (f"; not registered: {', '.join(result.failed)}" if result.failed else ""))
    print(f"Mean reprojection error {result.mean_reprojection_error:.3f} px; {len(result.points)} sparse points; "
          f"depth range {result.bounds[:, 0].min():.3g} .. {result.bounds[:, 1].max():.3g}")
    print("Stages: " + ", ".join(f"{name} {value:.1f} s" for name, value in stages.items()) + f" (total {seconds:.1f} s)")
    config = default_config(result.capture)
    width, height = image_size(args.out)
    factor = training_downsample_factor(width)
    preset = read_yaml(os.path.join(ROOT, config))["dataset"]["downsample_factor"]
    sets = f"dataset.basedir={shlex.quote(args.out)}"
    sets += "" if factor == preset else f" dataset.downsample_factor={factor}"
    print(f"Capture: {result.capture}. Wrote {args.out} ({width}x{height} images). Train at {width // factor}x"
          f"{height // factor} with:\n  python {from_here('train_nerf.py')} --config {from_here(config)} --set {sets}")
    return {"registered": result.names, "failed": result.failed, "capture": result.capture, "config": config,
            "downsample_factor": factor, "mean_reprojection_error": result.mean_reprojection_error,
            "stages": stages, "seconds": seconds}


def from_here(name: str) -> str:
    """A file of this repository as a path from the working directory, quoted for a shell: a printed command
    that works where the user is."""
    return shlex.quote(os.path.relpath(os.path.join(ROOT, name)))


def image_size(scene: str) -> tuple[int, int]:
    """(width, height) of the scene's full-size images (images/, as written)."""
    from PIL import Image

    first = sorted(os.listdir(os.path.join(scene, "images")))[0]
    with Image.open(os.path.join(scene, "images", first)) as image:
        return image.size


if __name__ == "__main__":
    main()
