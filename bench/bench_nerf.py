"""Benchmark the training step and rendering of a config.

    python bench/bench_nerf.py --config config/lego.yml --set dataset.basedir=... [--iters 5] [--warmup 2]
                               [--render-stride 4] [--json out.json]

Prints a table and (with --json) writes JSON: seconds per training iteration (median after warm-up), rays/s
and network samples/s, the time split (data, sampling, network forward with the positional encoding,
rendering, backward, optimizer),
the networks' achieved GFLOP/s against this machine's matrix-multiply peak measured here for the same dtype,
seconds per rendered frame, and peak memory (RSS on CPU, max allocated on CUDA).

The step is the same computation as train_nerf.py (same functions, same order), timed phase by phase with
device synchronisation, so it runs a little slower than the real loop.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from nerf.batching import RayBatcher  # noqa: E402
from nerf.config import load_config  # noqa: E402
from nerf.datasets import load_scene  # noqa: E402
from nerf.device import select_device  # noqa: E402
from nerf.models import build_model  # noqa: E402
from nerf.rendering import prepare_rays, render_image, run_network, volume_render  # noqa: E402
from nerf.sampling import hierarchical_samples, stratified_samples  # noqa: E402

PHASES = ("data", "sampling", "network_forward", "rendering", "backward", "optimizer")


def network_flops_per_point(model: nn.Module) -> float:
    """Forward + backward FLOPs of the model's Linear layers for one point: 3 x 2 x sum(in x out)
    (the backward pass computes input and weight gradients, each as costly as the forward)."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return 3.0 * 2.0 * macs


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best achieved GFLOP/s of a square matrix multiply on this device and dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock laps measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def write_json(result: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


def timed_step(step, batcher, scene, coarse, fine, optimizer, opts, device) -> dict:
    """One training step of train_nerf.py, phase by phase. Returns seconds per phase."""
    times = dict.fromkeys(PHASES, 0.0)
    clock = [time.perf_counter()]

    def lap(phase: str) -> None:
        sync(device)
        now = time.perf_counter()
        times[phase] += now - clock[0]
        clock[0] = now

    rays_o, rays_d, target = batcher.batch(step)
    rays = prepare_rays(rays_o, rays_d, scene.near, scene.far,
                        (scene.height, scene.width, scene.focal) if scene.use_ndc else None)
    lap("data")
    z = stratified_samples(rays.near, rays.far, opts.num_coarse, opts.perturb, opts.lindisp)
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * z[..., None]
    lap("sampling")
    raw = run_network(coarse, points, rays.viewdirs, opts.netchunk)
    lap("network_forward")
    out = volume_render(raw, z, rays.directions, opts.radiance_field_noise_std, opts.white_background)
    loss = F.mse_loss(out["rgb"], target)
    lap("rendering")
    if fine is not None and opts.num_fine > 0:
        z, _ = hierarchical_samples(z, out["weights"], opts.num_fine, deterministic=not opts.perturb)
        points = rays.origins[:, None, :] + rays.directions[:, None, :] * z[..., None]
        lap("sampling")
        raw = run_network(fine, points, rays.viewdirs, opts.netchunk)
        lap("network_forward")
        out = volume_render(raw, z, rays.directions, opts.radiance_field_noise_std, opts.white_background)
        loss = loss + F.mse_loss(out["rgb"], target)
        lap("rendering")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    lap("backward")
    optimizer.step()
    lap("optimizer")
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--render-stride", type=int, default=1, help="render every k-th pixel of a frame")
    parser.add_argument("--no-render", action="store_true", help="skip the frame rendering")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.set)
    device = select_device(cfg.experiment.device)
    torch.manual_seed(cfg.experiment.randomseed)
    opts = cfg.nerf.train
    scene = load_scene(cfg.dataset, white_background=opts.white_background)
    batcher = RayBatcher(scene, opts, cfg.experiment.randomseed, device)
    coarse = build_model(cfg.models.coarse).to(device)
    fine = build_model(cfg.models.fine).to(device) if cfg.models.fine is not None else None
    params = list(coarse.parameters()) + (list(fine.parameters()) if fine is not None else [])
    optimizer = torch.optim.Adam(params, lr=cfg.optimizer.lr, betas=(cfg.optimizer.beta1, cfg.optimizer.beta2),
                                 eps=cfg.optimizer.eps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    steps = [timed_step(k, batcher, scene, coarse, fine, optimizer, opts, device)
             for k in range(args.warmup + args.iters)][args.warmup:]
    totals = [sum(s.values()) for s in steps]
    median_step = statistics.median(totals)
    split = {phase: statistics.median(s[phase] for s in steps) for phase in PHASES}

    rays = opts.num_random_rays
    fine_samples = opts.num_coarse + opts.num_fine if fine is not None and opts.num_fine > 0 else 0
    points = rays * (opts.num_coarse + fine_samples)
    flops = rays * opts.num_coarse * network_flops_per_point(coarse)
    if fine_samples:
        flops += rays * fine_samples * network_flops_per_point(fine)
    # the backward phase also contains the volume-rendering backward; the network dominates it
    network_seconds = split["network_forward"] + split["backward"]
    peak = matmul_peak_gflops(device, torch.float32)

    result = {
        "config": args.config, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "rays_per_step": rays, "network_points_per_step": points,
        "seconds_per_step": median_step, "rays_per_second": rays / median_step,
        "network_samples_per_second": points / median_step,
        "split_seconds": split, "split_fraction": {k: v / median_step for k, v in split.items()},
        "network_gflop_per_step": flops / 1e9, "network_gflops_achieved": flops / network_seconds / 1e9,
        "matmul_peak_gflops_fp32": peak, "network_fraction_of_peak": flops / network_seconds / 1e9 / peak,
    }
    if not args.no_render:
        view = (scene.i_test or scene.i_val)[0]
        start = time.perf_counter()
        frame = render_image(coarse, fine, scene.poses[view].to(device), scene.height, scene.width, scene.focal,
                             scene.near, scene.far, scene.use_ndc, cfg.nerf.validation, stride=args.render_stride)
        sync(device)
        result["seconds_per_frame"] = time.perf_counter() - start
        result["frame_resolution"] = list(frame["rgb"].shape[1::-1])
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    print(f"{args.config} on {device} ({result['threads']} threads), {rays} rays x "
          f"{opts.num_coarse}+{fine_samples} samples = {points} network points per step")
    print(f"  step            {median_step:9.3f} s   ({result['rays_per_second']:.0f} rays/s, "
          f"{result['network_samples_per_second']:.0f} samples/s)")
    for phase in PHASES:
        print(f"  {phase:<15} {split[phase]:9.3f} s   {100 * split[phase] / median_step:5.1f} %")
    print(f"  network         {result['network_gflops_achieved']:9.1f} GFLOP/s of {peak:.1f} measured fp32 matmul peak "
          f"({100 * result['network_fraction_of_peak']:.0f} %)")
    if "seconds_per_frame" in result:
        print(f"  frame {result['frame_resolution'][0]}x{result['frame_resolution'][1]}  {result['seconds_per_frame']:9.2f} s")
    print(f"  peak memory     {result['peak_memory_mb']:9.0f} MiB")
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
