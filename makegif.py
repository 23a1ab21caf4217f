"""Turn rendered frames into a looping GIF (and optionally an MP4).

    python makegif.py DIR [TRIAL] [--output NAME] [--fps F | --duration MS] [--mp4]

Frames are the PNG files directly inside DIR (or DIR/TRIAL), in natural order (frame 2 before 10), all of
one size. The GIF (and MP4) are written inside that folder, each to a temporary file renamed over the
output when complete, so that a failed write (a full disk) leaves an earlier GIF intact.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from nerf.files import atomic_write, atomic_write_file, os_error_line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Turn a folder of PNG frames into a looping GIF (and MP4).")
    parser.add_argument("folder", help="folder of PNG frames, e.g. the --savedir of eval_nerf.py")
    parser.add_argument("trial", nargs="?", default=None, help="optional sub-folder of FOLDER")
    parser.add_argument("--output", default="animation.gif",
                        help="output file, relative to the frames' folder (default animation.gif)")
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument("--fps", type=float, default=None, help="frames per second")
    timing.add_argument("--duration", type=float, default=None, help="milliseconds per frame (default 200)")
    parser.add_argument("--mp4", action="store_true", help="also write an H.264 MP4 next to the GIF")
    args = parser.parse_args(argv)
    # a GIF stores each frame's delay in hundredths of a second, and browsers play a delay under 20 ms as 100 ms
    if args.fps is not None and not 0 < args.fps <= 50:  # nan too
        parser.error("--fps must be in (0, 50]: browsers play a GIF frame shorter than 20 ms as 100 ms")
    if args.duration is not None and not 20 <= args.duration < float("inf"):
        parser.error("--duration must be at least 20 (milliseconds: browsers play a GIF frame shorter than 20 ms as "
                     "100 ms)")
    return args


def natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_frames(folder: str) -> list:
    if os.path.isfile(folder):
        raise FileNotFoundError(f"{folder}: a file; give the folder of frames (eval_nerf.py's output)")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: folder not found")
    frames = sorted((name for name in os.listdir(folder) if name.lower().endswith(".png")), key=natural_key)
    if not frames:
        raise FileNotFoundError(f"{folder}: no PNG frames in this folder")
    return [os.path.join(folder, name) for name in frames]


def read_frame(path: str):
    """The frame as an RGB PIL image; a ValueError naming the file when it cannot be decoded (not an image, a
    truncated PNG)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError; some damage is a SyntaxError
        raise ValueError(f"{path}: not a readable image ({err})") from None


def read_frames(paths: list) -> list:
    """The frames, each decoded once for both outputs; a ValueError naming the first frame whose size differs
    from the first frame's (frames of two evaluations in one folder, say)."""
    frames = [read_frame(path) for path in paths]
    odd = next((k for k, frame in enumerate(frames) if frame.size != frames[0].size), None)
    if odd is not None:
        (w0, h0), (w1, h1) = frames[0].size, frames[odd].size
        raise ValueError(f"{os.path.dirname(paths[0]) or '.'}: frames of different sizes ({os.path.basename(paths[0])} "
                         f"{w0}x{h0}, {os.path.basename(paths[odd])} {w1}x{h1}): one animation needs one size; render "
                         "into a folder of its own")
    return frames


def write_gif(frames: list, output: str, duration_ms: float) -> None:
    atomic_write(output, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                  duration=round(duration_ms), loop=0), binary=True, prefix=".gif-")


def write_mp4(frames: list, output: str, fps: float) -> None:
    import imageio.v2 as imageio

    def encode(tmp: str) -> None:  # imageio's ffmpeg writer takes a file name, and its format from the suffix
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                pixelformat="yuv420p") as writer:  # yuv420p: playable everywhere
            for image in frames:
                frame = np.asarray(image)
                # yuv420p needs even sizes: pad by repeating the last row/column
                pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
                writer.append_data(np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))

    atomic_write_file(output, encode, prefix=".mp4-", suffix=".mp4")


def main(argv=None) -> list:
    args = parse_args(argv)
    folder = os.path.join(args.folder, args.trial) if args.trial else args.folder
    try:
        paths = list_frames(folder)
        frames = read_frames(paths)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    duration = 1000.0 / args.fps if args.fps else (args.duration or 200.0)
    outputs = [os.path.join(folder, args.output if args.output.lower().endswith(".gif") else args.output + ".gif")]
    try:
        write_gif(frames, outputs[0], duration)
        if args.mp4:
            outputs.append(os.path.splitext(outputs[0])[0] + ".mp4")
            write_mp4(frames, outputs[1], 1000.0 / duration)
    except OSError as err:
        sys.exit(f"error: {os_error_line(err)}")
    for path in outputs:
        print(f"Wrote {path} ({len(paths)} frames, {duration:.0f} ms per frame)")
    return outputs


if __name__ == "__main__":
    main()
