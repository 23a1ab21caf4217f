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
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

if __name__ == "__main__":  # a module of bench_nerf.py, not a script (and nerf/ is not on the path here)
    sys.exit("bench/yenchenlin_step.py is used by bench/bench_nerf.py: run python bench/bench_nerf.py "
             "--config config/lego.yml --reference-yenchenlin PATH (see its --help)")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nerf.datasets import load_scene  # noqa: E402

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


class YenchenlinStep:
    """yenchenlin's training step on the CPU, set up once; each call runs one step and returns its seconds."""

    def __init__(self, path: str, cfg, opts, scene):
        self.path = path
        self.run_nerf = run_nerf = import_yenchenlin(path)
        run_nerf.device = torch.device("cpu")  # its module picks CUDA when there is one; the rays here are on the CPU
        self.args = args = settings(cfg, opts, scene)
        os.makedirs(os.path.join(args.basedir, args.expname), exist_ok=True)
        torch.manual_seed(cfg.experiment.randomseed)
        self.render_kwargs, _, _, _, self.optimizer = run_nerf.create_nerf(args)
        self.render_kwargs.update(near=scene.near, far=scene.far)
        self.scene, self.num_rays = scene, opts.num_random_rays
        H, W, focal = scene.height, scene.width, scene.focal
        self.K = np.array([[focal, 0, 0.5 * W], [0, focal, 0.5 * H], [0, 0, 1]])
        self.images, self.poses = scene.images.numpy(), scene.poses.numpy()

    def __call__(self) -> float:
        run_nerf, scene = self.run_nerf, self.scene
        H, W = scene.height, scene.width
        start = time.perf_counter()
        img_i = np.random.choice(scene.i_train)  # its train() step for a Blender scene, precrop over
        target = torch.Tensor(self.images[img_i])
        rays_o, rays_d = run_nerf.get_rays(H, W, self.K, torch.Tensor(self.poses[img_i, :3, :4]))
        coords = torch.stack(torch.meshgrid(torch.linspace(0, H - 1, H), torch.linspace(0, W - 1, W),
                                            indexing="ij"), -1)
        coords = torch.reshape(coords, [-1, 2])
        select_coords = coords[np.random.choice(coords.shape[0], size=[self.num_rays], replace=False)].long()
        rays_o, rays_d = rays_o[select_coords[:, 0], select_coords[:, 1]], rays_d[select_coords[:, 0], select_coords[:, 1]]
        target_s = target[select_coords[:, 0], select_coords[:, 1]]
        rgb, disp, acc, extras = run_nerf.render(H, W, self.K, chunk=self.args.chunk,
                                                 rays=torch.stack([rays_o, rays_d], 0), retraw=True,
                                                 **self.render_kwargs)
        self.optimizer.zero_grad()
        loss = run_nerf.img2mse(rgb, target_s)
        if "rgb0" in extras:
            loss = loss + run_nerf.img2mse(extras["rgb0"], target_s)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start

    def result(self, seconds: list[float]) -> dict:
        """The JSON record of the timed steps (warm-up steps already left out)."""
        return {"implementation": "yenchenlin/nerf-pytorch", "path": os.path.abspath(self.path),
                "commit": git_commit(self.path), "device": "cpu", "seconds_per_step": statistics.median(seconds),
                "threads": torch.get_num_threads()}


def _serve(conn, path: str, cfg, opts) -> None:
    """The body of YenchenlinProcess's process: set up, then one step per "step" message until "stop"."""
    try:
        scene = load_scene(cfg.dataset, white_background=opts.white_background)
        step = YenchenlinStep(path, cfg, opts, scene)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which exits with it
        conn.send(("error", str(err) or type(err).__name__))
        return
    conn.send(("ready", None))
    seconds = []
    while (message := conn.recv()) != "stop":
        if message == "step":
            seconds.append(step())
            conn.send(seconds[-1])
        else:  # "result": the record of the steps after the first `message[1]`
            conn.send(step.result(seconds[message[1]:]))


class YenchenlinProcess:
    """yenchenlin's step in a process of its own: each call runs one step there and returns its seconds.

    bench_nerf.py alternates these calls with its own steps, so that both are timed on the machine as it
    is at that moment (CPUs of this kind drift in speed by tens of percent within minutes, which a ratio
    of two sequential measurements would carry). Its own process, because in ours its 65536-point
    chunks would leave the allocator and the caches in a state that slows our next step (measured: 1.9x
    slower in bf16), which a training run never sees.
    """

    def __init__(self, path: str, cfg, opts):
        context = multiprocessing.get_context("spawn")  # no forked copy of our threads and tensors
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, path, cfg, opts), daemon=True)
        self.process.start()
        status, message = self.conn.recv()
        if status == "error":
            self.process.join()
            raise SystemExit(message if message.startswith("error:") else f"error: yenchenlin step: {message}")

    def __call__(self) -> float:
        self.conn.send("step")
        return self.conn.recv()

    def result(self, warmup: int) -> dict:
        """Its JSON record of the steps after the first `warmup`; ends the process."""
        self.conn.send(("result", warmup))
        record = self.conn.recv()
        self.conn.send("stop")
        self.process.join()
        return record


def time_yenchenlin_step(path: str, cfg, opts, scene, iters: int, warmup: int) -> dict:
    """Seconds per training step of yenchenlin's code (median of `iters` after `warmup`), on the CPU."""
    step = YenchenlinStep(path, cfg, opts, scene)
    seconds = [step() for _ in range(warmup + iters)]
    return step.result(seconds[warmup:])


def git_commit(path: str) -> str:
    """The commit of the checkout at `path`, or "not a git checkout"."""
    result = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "not a git checkout"
