"""The training step of yenchenlin/nerf-pytorch, timed on the same machine, scene and settings as ours.

yenchenlin/nerf-pytorch (MIT) is the PyTorch port most people compare against; its code is not part of
this repository. Clone it and pass its folder:

    git clone https://github.com/yenchenlin/nerf-pytorch /path/to/yenchenlin
    python bench/bench_nerf.py --config config/lego.yml ... --reference-yenchenlin /path/to/yenchenlin

The step below is the body of its `train()` loop for a Blender scene without precrop (one random image,
N_rand of its pixels, `render`, the fine plus coarse MSE, `backward`, Adam), with its own `create_nerf`
building the 8x256 networks and its `run_network`/`render_rays` doing the work. Only its dataset loaders
are not needed; where one cannot be imported (e.g. OpenCV missing for its LINEMOD loader) a stand-in
module takes its place, so that `run_nerf` imports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch

LOADERS = {"load_llff": "load_llff_data", "load_deepvoxels": "load_dv_data", "load_blender": "load_blender_data",
           "load_LINEMOD": "load_LINEMOD_data"}


def import_yenchenlin(path: str):
    """Its run_nerf module from a checkout at `path`; SystemExit with one line when it is not one."""
    if not os.path.isfile(os.path.join(path, "run_nerf.py")):
        raise SystemExit(f"error: --reference-yenchenlin {path}: no run_nerf.py there (a clone of "
                         "https://github.com/yenchenlin/nerf-pytorch is expected)")
    sys.path.insert(0, os.path.abspath(path))
    for module, function in LOADERS.items():
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a loader the step does not use; any import failure is fine here
            stand_in = types.ModuleType(module)
            setattr(stand_in, function, None)
            sys.modules[module] = stand_in
    return importlib.import_module("run_nerf")


def settings(cfg, opts, scene) -> argparse.Namespace:
    """Its command-line arguments for our config's paper settings (netchunk and chunk: its defaults)."""
    return argparse.Namespace(
        multires=10, multires_views=4, i_embed=0, use_viewdirs=cfg.nerf.use_viewdirs, N_importance=opts.num_fine,
        netdepth=8, netwidth=256, netdepth_fine=8, netwidth_fine=256, N_samples=opts.num_coarse,
        netchunk=1024 * 64, chunk=1024 * 32, lrate=cfg.optimizer.lr, basedir=tempfile.mkdtemp(), expname="bench",
        ft_path=None, no_reload=True, perturb=1.0 if opts.perturb else 0.0, white_bkgd=opts.white_background,
        raw_noise_std=opts.radiance_field_noise_std, dataset_type="blender", no_ndc=False, lindisp=opts.lindisp)


def time_yenchenlin_step(path: str, cfg, opts, scene, iters: int, warmup: int) -> dict:
    """Seconds per training step of yenchenlin's code (median of `iters` after `warmup`), on the CPU."""
    run_nerf = import_yenchenlin(path)
    run_nerf.device = torch.device("cpu")  # its module picks CUDA when there is one; the rays here are on the CPU
    args = settings(cfg, opts, scene)
    os.makedirs(os.path.join(args.basedir, args.expname), exist_ok=True)
    torch.manual_seed(cfg.experiment.randomseed)
    render_kwargs_train, _, _, _, optimizer = run_nerf.create_nerf(args)
    render_kwargs_train.update(near=scene.near, far=scene.far)
    H, W, focal = scene.height, scene.width, scene.focal
    K = np.array([[focal, 0, 0.5 * W], [0, focal, 0.5 * H], [0, 0, 1]])
    images, poses = scene.images.numpy(), scene.poses.numpy()
    times = []
    for _ in range(warmup + iters):
        start = time.perf_counter()
        img_i = np.random.choice(scene.i_train)  # its train() step for a Blender scene, precrop over
        target = torch.Tensor(images[img_i])
        rays_o, rays_d = run_nerf.get_rays(H, W, K, torch.Tensor(poses[img_i, :3, :4]))
        coords = torch.stack(torch.meshgrid(torch.linspace(0, H - 1, H), torch.linspace(0, W - 1, W),
                                            indexing="ij"), -1)
        coords = torch.reshape(coords, [-1, 2])
        select_coords = coords[np.random.choice(coords.shape[0], size=[opts.num_random_rays], replace=False)].long()
        rays_o, rays_d = rays_o[select_coords[:, 0], select_coords[:, 1]], rays_d[select_coords[:, 0], select_coords[:, 1]]
        target_s = target[select_coords[:, 0], select_coords[:, 1]]
        rgb, disp, acc, extras = run_nerf.render(H, W, K, chunk=args.chunk, rays=torch.stack([rays_o, rays_d], 0),
                                                 retraw=True, **render_kwargs_train)
        optimizer.zero_grad()
        loss = run_nerf.img2mse(rgb, target_s)
        if "rgb0" in extras:
            loss = loss + run_nerf.img2mse(extras["rgb0"], target_s)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"implementation": "yenchenlin/nerf-pytorch", "path": os.path.abspath(path), "commit": git_commit(path),
            "device": "cpu", "seconds_per_step": statistics.median(times[warmup:]), "threads": torch.get_num_threads()}


def git_commit(path: str) -> str:
    """The commit of the checkout at `path`, or "not a git checkout"."""
    result = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "not a git checkout"
