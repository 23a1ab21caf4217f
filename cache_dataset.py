"""Precompute training rays once, so that experiments start without decoding images.

    python cache_dataset.py --config config/lego.yml --savedir cache/lego [--num-random-rays 8192]
                            [--num-variations 50 | --sample-all] [--set section.key=value ...]
    python cache_dataset.py --datapath data/nerf_synthetic/lego/ --halfres False --savedir cache/legocache/legofull
                            --num-random-rays 8192 --num-variations 50 [--type blender|llff]

With --config every dataset setting (and the background) comes from the YAML; otherwise from the flags,
with the type inferred from the folder. A flag that would be ignored (a dataset flag with --config, --set
without it, a Blender flag for an LLFF scene) is refused. Then train with `dataset.cachedir: <savedir>` in the config:
training checks the cache's manifest against the config and refuses a cache built differently.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
from tqdm import tqdm

from nerf.cache import CachedRayBatcher, RayCache, build_cache, check_savedir, dataset_settings
from nerf.config import ConfigError, DatasetConfig, add_set_argument, load_config, overrides_from
from nerf.datasets import DatasetError, load_scene
from nerf.files import write_error
from nerf.preemption import terminated_as_interrupt


def str2bool(text: str) -> bool:
    """true / false in any case, as the config's booleans (argparse's type=bool would read 'False' as True)."""
    value = text.strip().lower()
    if value in ("true", "false"):
        return value == "true"
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# The flags that describe the dataset without --config: (flag, the config key it stands for, default; None:
# decided from the dataset).
DATAPATH_FLAGS = {"type": ("--type", "dataset.type", None), "halfres": ("--halfres", "dataset.half_res", False),
                  "downscale": ("--downscale", "dataset.downscale", 1),
                  "testskip": ("--blender-stride", "dataset.testskip", 1),
                  "llff_downsample_factor": ("--llff-downsample-factor", "dataset.downsample_factor", 8),
                  "llffhold": ("--llffhold", "dataset.llffhold", 8),
                  "white_background": ("--white-background", "nerf.train.white_background", None)}
BLENDER_ONLY, LLFF_ONLY = ("halfres", "downscale", "testskip"), ("llff_downsample_factor", "llffhold")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Precompute training rays for train_nerf.py (dataset.cachedir).")
    parser.add_argument("--config", default=None, help="take every dataset setting from this YAML config")
    add_set_argument(parser)  # with --config
    parser.add_argument("--datapath", default=None, help="scene folder (without --config)")
    parser.add_argument("--type", choices=("blender", "llff"), default=None, help="inferred from the folder if omitted")
    parser.add_argument("--halfres", "--blender-half-res", dest="halfres", type=str2bool, default=None,
                        metavar="BOOL", help="Blender: half resolution (default False)")
    parser.add_argument("--downscale", type=int, default=None,
                        help="Blender: a further area resize by this factor, after --halfres's 2 (default 1)")
    parser.add_argument("--blender-stride", "--testskip", dest="testskip", type=int, default=None,
                        help="Blender: use every n-th val frame (default 1)")
    parser.add_argument("--llff-downsample-factor", type=int, default=None, help="LLFF: images_<factor> (default 8)")
    parser.add_argument("--llffhold", type=int, default=None, help="LLFF: every n-th image is held out (default 8)")
    parser.add_argument("--white-background", type=str2bool, default=None, metavar="BOOL",
                        help="composite on white (default: True for Blender, False for LLFF)")
    parser.add_argument("--savedir", required=True, help="output folder")
    parser.add_argument("--num-random-rays", type=int, default=None,
                        help="rays cached per image and variation (default 4096)")
    parser.add_argument("--num-variations", type=int, default=None,
                        help="independent random ray sets per image (default 1)")
    parser.add_argument("--sample-all", action="store_true", help="cache every pixel of every training image once")
    parser.add_argument("--randomseed", type=int, default=3920, help="seed of the cached rays' choice (default 3920)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache at --savedir")
    args = parser.parse_args(argv)
    if (args.config is None) == (args.datapath is None):
        parser.error("give either --config FILE or --datapath DIR")
    # a flag that would be ignored is refused: the cache would silently differ from what was asked
    args.given = [name for name in DATAPATH_FLAGS if getattr(args, name) is not None]
    if args.config is not None and args.given:
        flags, keys = (", ".join(DATAPATH_FLAGS[name][k] for name in args.given) for k in (0, 1))
        parser.error(f"{flags}: with --config the dataset settings come from the config; set {keys} there or "
                     "with --set")
    if args.config is None and args.set:
        parser.error("--set applies with --config; with --datapath give the dataset's flags (see --help)")
    if args.sample_all and (args.num_random_rays is not None or args.num_variations is not None):
        parser.error("--sample-all caches every pixel once: leave out --num-random-rays and --num-variations")
    for name, (_, _, default) in DATAPATH_FLAGS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.num_random_rays = 4096 if args.num_random_rays is None else args.num_random_rays
    args.num_variations = 1 if args.num_variations is None else args.num_variations
    if args.num_variations < 1:
        parser.error("--num-variations must be >= 1")
    if args.downscale < 1:
        parser.error("--downscale must be >= 1")
    return args


def as_flags(message: str) -> str:
    """A dataset error in the words of --datapath's flags, not of the config keys the loaders name."""
    message = message.replace("--set dataset.basedir=PATH", "--datapath DIR")
    for flag, key, _ in DATAPATH_FLAGS.values():
        message = message.replace(key, flag)
    return message.replace("dataset.basedir", "--datapath")


def infer_type(folder: str) -> str:
    if not os.path.isdir(folder):
        raise DatasetError(f"--datapath {folder}: no such folder")
    if os.path.isfile(os.path.join(folder, "transforms_train.json")):
        return "blender"
    if os.path.isfile(os.path.join(folder, "poses_bounds.npy")):
        return "llff"
    raise DatasetError(f"{folder}: cannot tell the dataset type (no transforms_train.json or poses_bounds.npy); "
                       "pass --type")


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        if args.config:
            cfg = load_config(args.config, overrides_from(args.set))
            dataset, white = cfg.dataset, cfg.nerf.train.white_background
        else:
            kind = args.type or infer_type(args.datapath)
            other = [DATAPATH_FLAGS[name][0] for name in args.given if name in (BLENDER_ONLY if kind == "llff"
                                                                                 else LLFF_ONLY)]
            if other:
                raise ConfigError(f"{', '.join(other)}: not for a {kind} scene ({args.datapath}); see --help")
            dataset = DatasetConfig(type=kind, basedir=args.datapath, half_res=args.halfres, testskip=args.testskip,
                                    downscale=args.downscale, downsample_factor=args.llff_downsample_factor, llffhold=args.llffhold)
            white = args.white_background if args.white_background is not None else kind == "blender"
        check_savedir(args.savedir, dataset.basedir, args.overwrite)  # before the slow part
        scene = load_scene(dataset, white_background=white)
    except (ConfigError, DatasetError, FileExistsError) as err:
        sys.exit(f"error: {err if args.config else as_flags(str(err))}")
    rays = None if args.sample_all else args.num_random_rays
    variations = 1 if args.sample_all else args.num_variations
    start = time.time()
    with tqdm(total=variations * len(scene.i_train) + len(scene.i_val), desc="caching rays", unit="image") as bar:
        try:
            with terminated_as_interrupt():  # a kill cleans up as Ctrl-C does: the partial cache is deleted
                size = build_cache(scene, dataset_settings(dataset, white), args.savedir, rays, variations,
                                   args.randomseed, args.overwrite, bar)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (terminated_as_interrupt names it)
            bar.close()
            kept = " (the earlier cache there is kept)" if os.path.isdir(args.savedir) else ""
            sys.stderr.write(f"\ninterrupted: {args.savedir} not written{kept}\n")
            raise SystemExit(143 if str(stop) == "SIGTERM" else 130) from None
        except (FileExistsError, ValueError) as err:
            sys.exit(f"error: {err}")
        except OSError as err:  # an unwritable folder, a full disk: nothing of the cache is left, an earlier one kept
            sys.exit(f"error: {write_error(args.savedir, err).strerror}")
    print(f"Wrote {args.savedir}: {variations} variation(s) x {len(scene.i_train)} train images x "
          f"{rays or scene.height * scene.width} rays + {len(scene.i_val)} val images; "
          f"{size / 2 ** 20:.1f} MiB on disk in {time.time() - start:.1f} s")
    if args.config:  # what training with this config would refuse (too few rays in the precrop region), said now
        try:
            CachedRayBatcher(RayCache(args.savedir), cfg.nerf.train, cfg.experiment.randomseed, torch.device("cpu"))
        except ConfigError as err:
            print(f"warning: {args.config} cannot train from it as it is: {err}")
    print(f"Train from it with: --set dataset.cachedir={shlex.quote(args.savedir)}")
    return {"bytes": size, "savedir": args.savedir}


if __name__ == "__main__":
    main()
