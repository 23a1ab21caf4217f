"""Render a trained NeRF: the scene's render path as frames, or the test/val/train views with metrics.

    python eval_nerf.py --config FILE --checkpoint CKPT --savedir DIR [TRIAL] [--split render|test|val|train]
                        [--save-disparity-image] [--save-depth] [--downsample N] [--views 0,8,16]
                        [--max-views N] [--chunksize N] [--set section.key=value ...]

Checkpoints of this project, of krrish94/nerf-pytorch (.ckpt, with its YAML config) and of
yenchenlin/nerf-pytorch (.tar) are recognised from their contents. Rendering uses the config's
validation settings (no jitter, no noise) and is chunked, so memory stays bounded.

Outputs in DIR[/TRIAL]: frames 000.png, 001.png, ...; disparity/ and depth/ (PNG, and depth .npy in
scene units) when asked; for test/val/train also compare/ (ground truth | render | error), error/ and
metrics.json with per-view and mean PSNR and SSIM (LPIPS when available offline).

Under `torchrun --nproc_per_node=N eval_nerf.py ...` rank r renders views r, r + N, ... and rank 0 writes
metrics.json: the same files as one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from nerf.checkpoint import CheckpointError
from nerf.config import Config, ConfigError, add_set_argument, load_config, overrides_from
from nerf.datasets import DatasetError, load_scene
from nerf import distributed
from nerf.device import DeviceError
from nerf.distributed import SINGLE, World, process_device, quiet_unless_rank_zero
from nerf.files import atomic_write, os_error_line, stays_below, write_error
from nerf.importers import NATIVE, LoadedModels, load_models
from nerf.methods import build_method
from nerf.metrics import LpipsMetric, psnr, ssim
from nerf.rendering import stride_too_coarse


SSIM_WINDOW = 11  # the NeRF convention (tf.image.ssim)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Render a trained NeRF and compute test metrics.")
    parser.add_argument("--config", required=True, help="YAML config (dataset and rendering settings)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint of this project, krrish94 or yenchenlin")
    parser.add_argument("--savedir", required=True, help="output folder")
    parser.add_argument("trial", nargs="?", default=None, help="optional sub-folder of --savedir")
    parser.add_argument("--split", choices=("render", "test", "val", "train"), default="render",
                        help="render: the render path (default); test/val/train: those views with metrics "
                             "(train: how well the model fits the views it learnt from, against test)")
    parser.add_argument("--save-disparity-image", action="store_true", help="also write disparity frames")
    parser.add_argument("--save-depth", action="store_true", help="also write depth frames (.png and .npy)")
    parser.add_argument("--downsample", type=int, default=1,
                        help="render at 1/N resolution (every N-th pixel; metrics against the same pixels)")
    parser.add_argument("--views", default=None, help="comma-separated view numbers within the split, e.g. 0,8,16")
    parser.add_argument("--max-views", type=int, default=None, help="render at most N views (evenly spaced)")
    parser.add_argument("--chunksize", type=int, default=None, help="rays rendered at once, with either sampler (memory "
                                                                    "knob; nerf.validation.chunksize, occupancy.render_chunk)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the frames and metrics of an earlier evaluation in the output folder")
    add_set_argument(parser)
    args = parser.parse_args(argv)
    args.set = overrides_from(args.set)
    if args.downsample < 1:
        parser.error("--downsample must be >= 1")
    if args.max_views is not None and args.max_views < 1:
        parser.error("--max-views must be >= 1")
    if args.chunksize is not None and args.chunksize < 1:
        parser.error("--chunksize must be >= 1")
    if args.trial is not None and not stays_below(args.trial):  # --overwrite clears the folder: under --savedir
        parser.error(f"TRIAL {args.trial!r}: expected a sub-folder name of --savedir (no '..', not absolute)")
    if args.views is not None:
        try:
            args.views = [int(v) for v in args.views.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--views expects comma-separated integers, got {args.views!r}")
    return args


def select_views(count: int, views, max_views) -> list:
    """Positions within a split of `count` views: an explicit list, or up to max_views evenly spaced."""
    if views is not None:
        bad = [v for v in views if not 0 <= v < count]
        if bad:
            raise ValueError(f"--views {bad} out of range: this split has {count} views (0..{count - 1})")
        chosen = list(dict.fromkeys(views))  # each view once, in the order given
    else:
        chosen = list(range(count))
    if max_views is not None and max_views < len(chosen):
        chosen = [chosen[round(k * (len(chosen) - 1) / max(max_views - 1, 1))] for k in range(max_views)]
    if not chosen:
        raise ValueError("no views selected: the split is empty or --views lists none")
    return chosen


FRAME = re.compile(r"\d{3,}\.(png|npy)")  # 000.png, ...; depth/000.npy
OUTPUT_FOLDERS = ("compare", "error", "depth", "disparity")
EARLIER_FILES = ("metrics.json", "animation.gif", "animation.mp4")  # makegif.py's default outputs: of the frames


def earlier_outputs(out_dir: str) -> list[str]:
    """The files an earlier evaluation wrote into out_dir: its frames, metrics.json, the frames in its
    sub-folders, and makegif.py's animation of them under its default name. Anything else there is left alone."""
    if not os.path.isdir(out_dir):
        return []
    found = [os.path.join(out_dir, name) for name in sorted(os.listdir(out_dir))
             if FRAME.fullmatch(name) or name in EARLIER_FILES]
    for folder in OUTPUT_FOLDERS:
        path = os.path.join(out_dir, folder)
        if os.path.isdir(path):
            found += [os.path.join(path, name) for name in sorted(os.listdir(path)) if FRAME.fullmatch(name)]
    return found


def clear_output_folder(out_dir: str, overwrite: bool) -> None:
    """Refuse (ValueError) an output folder that holds an earlier evaluation's files, whose frames would mix
    with this one's (other views, another size: a GIF of both, a metrics.json of neither); with overwrite,
    delete those files first."""
    earlier = earlier_outputs(out_dir)
    if earlier and not overwrite:
        raise ValueError(f"{out_dir}: holds the frames of an earlier evaluation ({len(earlier)} files, e.g. "
                         f"{os.path.relpath(earlier[0], out_dir)}); choose another --savedir or TRIAL, or pass "
                         "--overwrite to replace them")
    for path in earlier:
        os.remove(path)
    for folder in OUTPUT_FOLDERS:
        path = os.path.join(out_dir, folder)
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
    if earlier:
        print(f"--overwrite: removed {len(earlier)} files of an earlier evaluation in {out_dir}")


def finite_or_none(value):
    """JSON has no Infinity or NaN (strict parsers refuse them): a PSNR of identical images is written null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W(, C)] float in [0, 1] -> uint8, clamped then rounded (not truncated)."""
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()


def save_frame(save, path: str) -> None:
    """save(path) into path's folder (made); an OSError (a full disk) raised again naming the file."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save(path)
    except OSError as err:
        raise write_error(path, err) from None


def save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    save_frame(lambda target: Image.fromarray(array).save(target), path)


def error_image(render: torch.Tensor, target: torch.Tensor, max_error: float = 0.25) -> torch.Tensor:
    """Per-pixel RMS error over channels as a heat map [H, W, 3] (black 0 to yellow >= max_error)."""
    err = ((render - target) ** 2).mean(-1).sqrt().div(max_error).clamp(0, 1)  # [H, W]
    return torch.stack((err.clamp(0, 0.5) * 2, (err - 0.5).clamp(0, 0.5) * 2, torch.zeros_like(err)), -1)


def depth_in_scene_units(depth: torch.Tensor, use_ndc: bool) -> torch.Tensor:
    """Expected depth along the ray. Without NDC it is camera z-depth already; under NDC, t in [0, 1)
    maps back to the distance 1 / (1 - t) beyond the z = 0 plane of the recentred world (near plane 1)."""
    if not use_ndc:
        return depth
    return 1.0 / (1.0 - depth.clamp(max=1.0 - 1e-6))


def sampler_note(loaded: LoadedModels, cfg: Config, checkpoint: str) -> Optional[str]:
    """A line when the config renders this project's checkpoint with another sampler than its training's (a
    config of another preset): the frames are then not those of the model as trained."""
    if loaded.source != NATIVE or (loaded.occupancy_grid is not None) == cfg.occupancy.enabled:
        return None
    names = {True: "the occupancy grid", False: "coarse/fine sampling"}
    return (f"note: {checkpoint} was trained with {names[loaded.occupancy_grid is not None]}; the config renders it "
            f"with {names[cfg.occupancy.enabled]} (occupancy.enabled: {str(cfg.occupancy.enabled).lower()}). The "
            "config.yml of its run renders it as trained")


def set_up(args) -> tuple:
    """(cfg, rendering settings, scene, method, loaded checkpoint); a one-line error for any problem."""
    try:
        cfg = load_config(args.config, args.set)
        device = process_device(cfg.experiment.device)
        opts = cfg.nerf.validation
        if args.chunksize is not None:  # both samplers' chunk: the occupancy grid marches render_chunk rays at once
            opts = dataclasses.replace(opts, chunksize=args.chunksize)
            cfg = dataclasses.replace(cfg, occupancy=dataclasses.replace(cfg.occupancy, render_chunk=args.chunksize))
        loaded = load_models(args.checkpoint, cfg, device)
        note = None
        if loaded.pixel_center is not None and loaded.pixel_center != cfg.dataset.pixel_center:
            # rays through other points of the pixels than in training would blur every frame
            note = (f"{args.checkpoint}: trained with dataset.pixel_center={str(loaded.pixel_center).lower()}, "
                    f"the config says {str(cfg.dataset.pixel_center).lower()}: using the checkpoint's")
            cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, pixel_center=loaded.pixel_center))
        scene = load_scene(cfg.dataset, white_background=opts.white_background)
    except (ConfigError, DeviceError, CheckpointError, DatasetError) as err:
        sys.exit(f"error: {err}")
    print(loaded.description)
    if note:
        print(note)
    try:  # the method of the checkpoint's models, with the config's sampler and runtime settings
        method = build_method(dataclasses.replace(cfg, models=loaded.models), scene.use_ndc, device,
                              (loaded.coarse, loaded.fine), training=False)
        described = method.prepare_rendering(loaded.occupancy_grid)
    except ValueError as err:
        sys.exit(f"error: {args.checkpoint}: {err}")
    for line in (sampler_note(loaded, cfg, args.checkpoint), described, method.scene_warning(scene)):
        if line:
            print(line)
    return cfg, opts, scene, method, loaded


def score(rgb_float: torch.Tensor, target: torch.Tensor, lpips_metric, out_dir: str, name: str) -> dict:
    """PSNR, SSIM (when the image is large enough) and LPIPS (when available) of the 8-bit render as saved;
    writes the error and the side-by-side comparison images."""
    rgb = torch.from_numpy(to_uint8(rgb_float)).to(target.device).float() / 255.0  # scored as saved (8-bit)
    record = {"psnr": psnr(rgb, target)}
    if min(rgb.shape[:2]) >= SSIM_WINDOW:
        record["ssim"] = ssim(rgb, target, window_size=SSIM_WINDOW)
    if lpips_metric is not None:
        record["lpips"] = lpips_metric(rgb, target)
    errors = error_image(rgb, target)
    save_png(to_uint8(errors), os.path.join(out_dir, "error", name + ".png"))
    save_png(to_uint8(torch.cat((target, rgb, errors), dim=1)), os.path.join(out_dir, "compare", name + ".png"))
    return record


def write_metrics(summary: dict, records: list, lpips_metric, out_dir: str) -> None:
    """Means over the views, what was not computed and why, and the per-view records: metrics.json."""
    summary["mean"] = {key: float(np.mean([r[key] for r in records])) for key in records[0]
                       if key not in ("view", "image_index")}
    if "ssim" not in records[0]:
        summary["ssim"] = f"not computed: renders smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window"
    if lpips_metric is None:
        summary["lpips"] = LpipsMetric.unavailable_reason()
    else:
        summary["lpips_backbone"] = lpips_metric.backbone
    summary["views"] = records
    text = json.dumps(finite_or_none(summary), indent=2, allow_nan=False)
    atomic_write(os.path.join(out_dir, "metrics.json"), lambda f: f.write(text), binary=False, prefix=".metrics-")


def main(argv=None) -> dict:
    args = parse_args(argv)
    with quiet_unless_rank_zero():
        try:
            cfg, opts, scene, method, loaded = set_up(args)
        except KeyboardInterrupt:
            sys.stderr.write("\ninterrupted before rendering: nothing written\n")
            raise SystemExit(130) from None
        try:
            world = distributed.start(method.device)
            try:
                return evaluate(args, cfg, opts, scene, method, loaded, world)
            except OSError as err:  # an output folder that cannot be written, a full disk
                sys.exit(f"error: {os_error_line(err)}")
            finally:
                distributed.finish(world)
        except KeyboardInterrupt:  # Ctrl-C: each frame is written whole, metrics.json only at the end
            sys.stderr.write(f"\ninterrupted: the frames written so far are in {output_folder(args)}; metrics.json is "
                             "written by a complete evaluation\n")
            raise SystemExit(130) from None


def output_folder(args) -> str:
    return os.path.join(args.savedir, args.trial) if args.trial else args.savedir


def evaluate(args, cfg, opts, scene, method, loaded, world: World = SINGLE) -> dict:
    """Render this rank's share of the selected views, score them, write the frames and (rank 0) metrics.json."""
    out_dir = output_folder(args)
    if args.split == "render":
        poses, targets, ids = scene.render_poses, None, list(range(len(scene.render_poses)))
    else:
        ids = {"test": scene.i_test, "val": scene.i_val, "train": scene.i_train}[args.split]
        poses, targets = scene.poses, scene.images
    try:  # before anything in the output folder is touched
        positions = select_views(len(ids), args.views, args.max_views)
    except ValueError as err:
        sys.exit(f"error: {err}")
    too_coarse = stride_too_coarse(scene.width, scene.height, args.downsample)  # every n-th pixel
    if too_coarse:
        sys.exit(f"error: --downsample {args.downsample}: {too_coarse}")
    error = None
    if world.is_main:
        try:
            clear_output_folder(out_dir, args.overwrite)
        except ValueError as err:
            error = f"error: {err}"
        except OSError as err:
            error = f"error: {os_error_line(err)}"
        if error is None:
            try:
                os.makedirs(out_dir, exist_ok=True)
            except OSError as err:
                error = f"error: {out_dir}: cannot create the output folder ({err.strerror or err})"
    error = world.gather(error)[0]  # the others wait for rank 0's check before they write
    if error:
        sys.exit(error if world.is_main else 1)

    factor, device = args.downsample, method.device
    lpips_metric = LpipsMetric.create(device) if targets is not None else None
    records, disparities, depths, seconds = [], [], [], []
    height = width = None
    mine = positions[world.rank::world.size]
    for position in tqdm(mine, desc=f"rendering {args.split}", dynamic_ncols=True, disable=not world.is_main):
        index, name, start = ids[position], f"{position:03d}", time.time()
        out = method.render_image(poses[index].to(device), scene, opts, stride=factor)
        height, width = out["rgb"].shape[:2]
        seconds.append(time.time() - start)
        save_png(to_uint8(out["rgb"]), os.path.join(out_dir, name + ".png"))
        if args.save_disparity_image:
            disparities.append((name, out["disp"].cpu()))
        if args.save_depth:
            depth = depth_in_scene_units(out["depth"], scene.use_ndc).cpu()
            save_frame(lambda target: np.save(target, depth.numpy().astype(np.float32)),
                       os.path.join(out_dir, "depth", name + ".npy"))
            depths.append((name, depth))
        if targets is not None:
            target = targets[index][::factor, ::factor].to(device)  # the pixels that were rendered
            records.append({"view": position, "image_index": index,
                            **score(out["rgb"], target, lpips_metric, out_dir, name)})

    # one brightness scale for the whole sequence (every rank's frames), so that frames are comparable
    for folder, frames in (("disparity", disparities), ("depth", depths)):
        scale = max((float(frame.max()) for _, frame in frames), default=0.0)
        scale = max(world.gather(scale)) or 1.0
        for name, frame in frames:
            save_png(to_uint8(frame / scale), os.path.join(out_dir, folder, name + ".png"))

    gathered = world.gather((records, seconds, (width, height)))
    records = sorted((r for part in gathered for r in part[0]), key=lambda r: positions.index(r["view"]))
    seconds = [s for part in gathered for s in part[1]]
    width, height = next(size for *_, size in gathered if size[0] is not None)
    if not world.is_main:
        return {}
    summary = {"checkpoint": args.checkpoint, "source": loaded.source, "split": args.split,
               "resolution": [width, height], "metrics_on": "8-bit renders read back / 255", "downsample": factor,
               "num_views": len(positions), "seconds_per_frame": float(np.mean(seconds)),
               "precision": cfg.runtime.precision,
               "sampler": "occupancy" if method.sampler is not None else "hierarchical"}
    if records:
        write_metrics(summary, records, lpips_metric, out_dir)
        means = ", ".join(f"{k.upper()} {v:.4f}" for k, v in summary["mean"].items())
        print(f"{args.split}: {len(records)} view{'s' if len(records) != 1 else ''} at {width}x{height}: mean {means}")
    print(f"Wrote {len(positions)} frames to {out_dir} ({summary['seconds_per_frame']:.2f} s per frame)")
    return summary


if __name__ == "__main__":
    main()
