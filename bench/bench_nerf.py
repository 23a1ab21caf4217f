"""Benchmark the training step and rendering of a config.

    python bench/bench_nerf.py --config config/lego.yml --set dataset.basedir=... [--iters 5] [--warmup 2]
                               [--render-stride 4] [--checkpoint CKPT] [--json out.json]
                               [--reference-yenchenlin PATH] [--compare-precision fp32] [--profile-steps N]
                               [--no-speed-factor]

Prints a table and (with --json) writes JSON: seconds per training iteration (median after warm-up), rays/s
and network samples/s, the time split (data, sampling, network forward with the positional encoding,
rendering, backward, optimizer; with the occupancy grid also its updates, amortised), the networks' achieved
GFLOP/s against this machine's matrix-multiply peak for the same dtype (runtime.precision), measured after
each step (the median share over the steps),
seconds per rendered frame (of a trained model with --checkpoint, with its PSNR), and peak memory (RSS on
CPU, max allocated on CUDA). On the CPU also the network chunk each model runs in (runtime.cpu_network_chunk,
or the measured best and the seconds of each candidate). The machine's speed factor
(../shared/tools/machine_speed.py) is measured beside the step, so that seconds compare across machines; with
--reference-yenchenlin the training step of yenchenlin/nerf-pytorch (bench/yenchenlin_step.py) is timed
in the same run, one of its steps after each of ours, and the JSON gives our speedup over it (the median
ratio of neighbouring steps: the machine's speed drifts between the two otherwise). With --compare-precision
a step of the same networks in another runtime.precision is timed beside each of ours in the same way (the
two take turns at going first), with its share of the peak of its own dtype: one run gives the ratio of,
say, the bf16 and the fp32 step at the same moment (the fp32 matrix-multiply speed of some machines swings
by a third within seconds while their bf16 speed holds). The peak memory then covers the steps of both.

The step is the same computation as train_nerf.py (same functions, same order), timed phase by phase with
device synchronisation, so it runs a little slower than the real loop. With --profile-steps N, N steps also
run as train_nerf.py runs them (the host free to run ahead of the device), timed together, and the same N
again under torch.profiler: per step the host's waits for the device and the operators that caused them, the
kernel launches, the device's busy seconds, the operators that take the host's time (JSON `unsynchronised`).
With occupancy.enabled the timed steps are taken after the grid warm-up (skipping on), from the grid of
--checkpoint when it has one.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench.machine import speed_factor  # noqa: E402
from bench.yenchenlin_step import YenchenlinProcess  # noqa: E402
from nerf.batching import RayBatcher  # noqa: E402
from nerf.compositing import composite_samples, volume_render  # noqa: E402
from nerf.checkpoint import CheckpointError  # noqa: E402
from nerf.config import ConfigError, add_set_argument, load_config, overrides_from  # noqa: E402
from nerf.datasets import DatasetError, load_scene  # noqa: E402
from nerf.device import DeviceError, select_device  # noqa: E402
from nerf.files import atomic_write, os_error_line  # noqa: E402
from nerf.importers import load_models  # noqa: E402
from nerf.losses import NonFiniteWatch  # noqa: E402
from nerf.methods import build_method  # noqa: E402
from nerf.metrics import psnr  # noqa: E402
from nerf.occupancy import occupancy_samples  # noqa: E402
from nerf.optimizer import build_optimizer, set_learning_rate, zero_gradients  # noqa: E402
from nerf.rays import prepare_rays  # noqa: E402
from nerf.rendering import field_at_samples, has_color_branch, render_samples_split  # noqa: E402
from nerf.runtime import DTYPES, freed_cpu_memory_kept, run_network  # noqa: E402
from nerf.sampling import hierarchical_samples, stratified_samples  # noqa: E402

PHASES = ("grid_update", "data", "sampling", "network_forward", "rendering", "backward", "optimizer")


def network_flops_per_point(model: nn.Module) -> float:
    """Forward + backward FLOPs of the model's Linear layers for one point: 3 x 2 x sum(in x out)
    (the usual convention: the backward pass computes input and weight gradients, each as costly as the
    forward; a layer whose input needs no gradient, such as an encoding's, computes less: 2.0 % less in all
    for the paper MLP)."""
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return 3.0 * 2.0 * macs


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10,
                       onednn: bool = False) -> float:
    """Best achieved GFLOP/s of a square matrix multiply on this device and dtype: torch.matmul, or with onednn
    oneDNN's product called directly (on the CPU, fp32 torch.matmul is MKL's sgemm, which some CPUs run well
    below oneDNN's speed; bf16 already goes to oneDNN). oneDNN's linear computes a b^T: the same FLOPs."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    product = ((lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")) if onednn
               else (lambda: torch.matmul(a, b)))
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        product()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9


def onednn_peak_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN's product is timed beside torch.matmul's: on the CPU of a build that has it, in fp32 (the
    dtype where torch.matmul calls MKL instead; bf16 products already are oneDNN's)."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock laps measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def write_json(result: dict, path: str) -> None:
    """The results into `path`, atomically; when that fails they are printed, so that the bench's minutes are
    not lost, and the run ends with a one-line error naming the file."""
    text = json.dumps(result, indent=2)
    try:
        atomic_write(path, lambda f: f.write(text), binary=False, prefix=".bench-")
    except OSError as err:
        print(text)
        sys.exit(f"error: {os_error_line(err)} (the results are printed above)")


class Laps:
    """Wall-clock time per phase, with device synchronisation at each lap."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.clock = device, dict.fromkeys(PHASES, 0.0), time.perf_counter()

    def __call__(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.times[phase] += now - self.clock
        self.clock = now


def timed_batch(step, batcher, scene, lap: Laps):
    """The step's rays (as train_nerf.py prepares them) and targets, timed as "data"."""
    rays_o, rays_d, target = batcher.batch(step)
    rays = prepare_rays(rays_o, rays_d, scene.near, scene.far,
                        (scene.height, scene.width, scene.focal) if scene.use_ndc else None)
    lap("data")
    return rays, target


def timed_update(loss, optimizer, lap: Laps, keep_buffers: bool) -> None:
    """Backward pass and optimizer step, timed as "backward" and "optimizer" (gradients cleared as in training)."""
    zero_gradients(optimizer, keep_buffers)
    loss.backward()
    lap("backward")
    optimizer.step()
    lap("optimizer")


def timed_step(step, batcher, scene, method, optimizer, opts, device) -> dict:
    """One training step of train_nerf.py (coarse/fine sampler), phase by phase. Returns seconds per
    phase and the network points evaluated with gradients."""
    coarse, fine = method.runners
    lap = Laps(device)
    rays, target = timed_batch(step, batcher, scene, lap)
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
    timed_update(loss, optimizer, lap, method.keeps_gradient_buffers)
    return {"times": lap.times, "coarse_points": len(rays) * opts.num_coarse,
            "fine_points": len(rays) * (opts.num_coarse + opts.num_fine) if fine is not None and opts.num_fine else 0}


def timed_occupancy_step(step, batcher, scene, method, optimizer, opts, occ, device) -> dict:
    """One training step of train_nerf.py with the occupancy grid, phase by phase (grid update every
    update_every steps, as in training; the density pass of early termination counts as sampling)."""
    field, sampler = method.field, method.sampler
    lap = Laps(device)
    if step % occ.update_every == 0:
        sampler.grid.update(field.density, sampler.step_size, all_cells=False)
    lap("grid_update")
    rays, target = timed_batch(step, batcher, scene, lap)
    t, valid, dt = occupancy_samples(field, rays, opts, sampler)
    lap("sampling")
    num_valid = int(valid.sum())
    color_points = num_valid
    if occ.color_weight_threshold > 0 and has_color_branch(field):  # density, weights, colour: one phase
        out = render_samples_split(field, rays, t, valid, dt, opts, occ.color_weight_threshold)
        lap("network_forward")
        color_points = out["num_colored"]  # the colour MLP ran only where the weight reached the threshold
    else:
        raw = field_at_samples(field, rays, t, valid, opts)
        lap("network_forward")
        out = composite_samples(raw, rays, t, valid, dt, opts)
    loss = F.mse_loss(out["rgb"], target)
    lap("rendering")
    timed_update(loss, optimizer, lap, method.keeps_gradient_buffers)
    return {"times": lap.times, "coarse_points": num_valid, "fine_points": 0, "flop_points": color_points}


def chunk_reports(runners) -> list[dict]:
    """The CPU network chunk of each runner (runner.chunk_report), measured now or read from the cache."""
    return [runner.cpu_chunk() and runner.chunk_report for runner in runners if runner is not None]


# the CUDA runtime calls that make the host wait for the device, and those that launch a kernel
HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
KERNEL_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
# far past every schedule's one-off events (a voxel grid's growth, the occupancy warm-up): steady-state steps
STEADY_STEP = 1_000_000
BENCH_SYNC = "bench::wait_for_the_last_step"


def no_laps(phase: str) -> None:
    """A Laps that neither synchronises nor times: timed_batch and timed_update as training runs them."""


def training_step(step: int, batcher, scene, method, optimizer, opts, watch: NonFiniteWatch) -> None:
    """Step `step` of train_nerf.py's loop as it runs there between its logging steps, with no synchronisation
    between its phases: the method's hooks (occupancy updates), the batch, rendering, loss, the non-finite
    watch, backward pass and optimizer step."""
    if method.before_step(step):
        raise RuntimeError(f"step {step} replaced the parameters (a grid growth): not a steady-state step")
    rays, target = timed_batch(step, batcher, scene, no_laps)
    out = method.render_rays(rays, opts)
    method.after_render(step, rays, out)
    loss, _ = method.loss(out, target, rays, step)
    watch.record(loss, step)
    timed_update(loss, optimizer, no_laps, method.keeps_gradient_buffers)


def _waiting_operator(event) -> str:
    """Where a profiled event came from: its outermost operator, and the innermost one when they differ
    ("aten::index > aten::nonzero": a boolean mask's indexing, whose nonzero the host waits for)."""
    chain, parent = [], event.cpu_parent
    while parent is not None:
        chain.append(parent.name)
        parent = parent.cpu_parent
    if not chain:
        return event.name
    return chain[-1] if len(chain) == 1 else f"{chain[-1]} > {chain[0]}"


def unsynchronised_steps(num_steps: int, batcher, scene, method, optimizer, opts, device) -> dict:
    """num_steps training steps as train_nerf.py runs them, timed together (one synchronisation after the
    last: the step time of training, where the host runs ahead of the device until something waits), then
    the same steps again under torch.profiler. Per step: the host's waits for the device and the operators
    that caused them (a size or value the host must read: nonzero, item, ...), the kernel launches, the
    device's busy seconds (the sum of its kernels' and copies' times; 0 on the CPU), and the operators that
    take the host's time. On a GPU, seconds_per_step well above device_busy_seconds_per_step means the step is
    bound by the host. One untimed step first: it enters the batcher's epoch (a reshuffle of every pixel)."""
    watch = NonFiniteWatch(device)
    training_step(STEADY_STEP - 1, batcher, scene, method, optimizer, opts, watch)
    sync(device)
    start = time.perf_counter()
    for k in range(num_steps):
        training_step(STEADY_STEP + k, batcher, scene, method, optimizer, opts, watch)
    sync(device)
    seconds = (time.perf_counter() - start) / num_steps
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for k in range(num_steps):  # the same steps: the same batches and occupancy updates
            training_step(STEADY_STEP + k, batcher, scene, method, optimizer, opts, watch)
        with torch.profiler.record_function(BENCH_SYNC):
            sync(device)
    events = profile.events()
    waits = collections.Counter(_waiting_operator(e) for e in events if e.name in HOST_WAITS)
    for name in [name for name in waits if name.startswith(BENCH_SYNC)]:
        del waits[name]  # the bench's own wait for the last step
    launches = sum(1 for e in events if e.name in KERNEL_LAUNCHES)
    # kernels and copies on the device; not the annotations that span a stretch of them (Optimizer.step#...)
    device_us = sum(getattr(e, "device_time_total", 0) or 0 for e in events
                    if e.device_type == torch.autograd.DeviceType.CUDA
                    and not getattr(e, "is_user_annotation", False))
    operators = sorted((e for e in profile.key_averages() if e.key != BENCH_SYNC),
                       key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "steps": num_steps,
        "seconds_per_step": seconds,
        "host_waits_per_step": sum(waits.values()) / num_steps,
        "host_waits_by_operator": {name: n / num_steps for name, n in waits.most_common()},
        "kernel_launches_per_step": launches / num_steps,
        "device_busy_seconds_per_step": device_us / 1e6 / num_steps,
        "host_operators": [{"name": e.key, "calls_per_step": e.count / num_steps,
                            "self_host_ms_per_step": e.self_cpu_time_total / 1e3 / num_steps}
                           for e in operators[:15]],
    }


def timed_step_and_peak(k, batcher, scene, method, runners, optimizer, cfg, device,
                        dtype: torch.dtype) -> tuple[dict, float]:
    """Training step k of `method` with `runners` (the networks in one precision), timed phase by phase, and
    the matmul peak of `dtype` measured right after it."""
    method.runners = runners
    if method.sampler is None:
        timed = timed_step(k, batcher, scene, method, optimizer, cfg.nerf.train, device)
    else:
        timed = timed_occupancy_step(k, batcher, scene, method, optimizer, cfg.nerf.train, cfg.occupancy, device)
    return timed, matmul_peak_gflops(device, dtype, repeats=3)


def network_gflops(step: dict, coarse: nn.Module, fine: Optional[nn.Module]) -> float:
    """GFLOP/s of a timed step's networks: forward + backward FLOPs of the points it evaluated with gradients
    (those that reached the colour MLP, with the split renderer of a voxel grid) over its network_forward +
    backward seconds (the backward also holds the volume rendering's; the networks dominate it)."""
    flops = step.get("flop_points", step["coarse_points"]) * network_flops_per_point(coarse)
    if step["fine_points"]:
        flops += step["fine_points"] * network_flops_per_point(fine)
    return flops / (step["times"]["network_forward"] + step["times"]["backward"]) / 1e9


def compared_summary(compared: list, our_totals: list, coarse: nn.Module, fine: Optional[nn.Module]) -> dict:
    """--compare-precision's figures from its (timed step, matmul peak) pairs, each beside one of our steps
    (our_totals: their seconds): the median seconds and split, the median share of its own dtype's peak, and
    speedup = its seconds / ours, the median ratio of neighbouring steps (above 1: ours is faster)."""
    totals = [sum(s["times"].values()) for s, _ in compared]
    return {
        "seconds_per_step": statistics.median(totals),
        "split_seconds": {phase: statistics.median(s["times"][phase] for s, _ in compared) for phase in PHASES},
        "matmul_peak_beside_steps_gflops": [p for _, p in compared],
        "network_fraction_of_peak": statistics.median(network_gflops(s, coarse, fine) / p for s, p in compared),
        "speedup": statistics.median(theirs / ours for theirs, ours in zip(totals, our_totals)),
    }


def run_bench(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", required=True)
    add_set_argument(parser)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--render-stride", type=int, default=1, help="render every k-th pixel of a frame")
    parser.add_argument("--no-render", action="store_true", help="skip the frame rendering")
    parser.add_argument("--checkpoint", default=None, help="time a trained model (and its occupancy grid)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--reference-yenchenlin", default=None, metavar="PATH",
                        help="also time yenchenlin/nerf-pytorch's training step (a clone of it at PATH)")
    parser.add_argument("--compare-precision", choices=sorted(DTYPES), default=None, metavar="PRECISION",
                        help="also time a step of the same networks in this runtime.precision beside each of ours "
                             "(the two taking turns at going first)")
    parser.add_argument("--profile-steps", type=int, default=0, metavar="N",
                        help="also run N steps as train_nerf.py does (no synchronisation between phases), timed "
                             "together, and the same N again under torch.profiler: host waits, kernel launches, "
                             "device time")
    parser.add_argument("--no-speed-factor", action="store_true", help="skip machine_speed.py")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.render_stride < 1 or args.profile_steps < 0:
        parser.error("--iters and --render-stride must be >= 1, --warmup and --profile-steps >= 0")
    args.set = overrides_from(args.set)

    cfg = load_config(args.config, args.set)
    device = select_device(cfg.experiment.device)
    if args.reference_yenchenlin and device.type != "cpu":
        sys.exit("error: --reference-yenchenlin times the CPU step only (run with --set experiment.device=cpu)")
    torch.manual_seed(cfg.experiment.randomseed)
    opts = cfg.nerf.train
    scene = load_scene(cfg.dataset, white_background=opts.white_background)
    batcher = RayBatcher(scene, opts, cfg.experiment.randomseed, device)
    stored_grid, networks = None, None
    if args.checkpoint:
        loaded = load_models(args.checkpoint, cfg, device)
        networks, stored_grid = (loaded.coarse.train(), loaded.fine), loaded.occupancy_grid
        if loaded.fine is not None:
            loaded.fine.train()
        cfg = dataclasses.replace(cfg, models=loaded.models)
    try:
        method = build_method(cfg, scene.use_ndc, device, networks)
    except ValueError as err:
        sys.exit(f"error: {err}")
    coarse, fine = method.coarse, method.fine
    models = method.networks()
    optimizer = build_optimizer(method.parameter_groups(), cfg.optimizer, device, method.fused_optimizer)
    set_learning_rate(optimizer, cfg.optimizer.lr)
    result = {"config": args.config, "overrides": args.set, "checkpoint": args.checkpoint, "device": str(device),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": cfg.runtime.precision,
              "compile": cfg.runtime.compile, "sampler": "occupancy" if cfg.occupancy.enabled else "hierarchical"}
    if method.sampler is not None:
        start = time.perf_counter()
        method.prepare_rendering(stored_grid)
        sync(device)
        result["grid_build_seconds"] = None if stored_grid is not None else time.perf_counter() - start
        result["grid_occupied_fraction"] = method.sampler.grid.occupied_fraction()
    result["freed_cpu_memory_kept"] = freed_cpu_memory_kept()  # runtime.keep_cpu_memory, where it took effect
    if device.type == "cpu":  # the chunk each network runs in (measured now, or read from the cache)
        result["cpu_network_chunk"] = chunk_reports(method.runners)
    our_runners, compared_runners = method.runners, None  # compared: the same networks for --compare-precision
    if args.compare_precision:
        try:
            method.set_runtime(dataclasses.replace(cfg.runtime, precision=args.compare_precision))
        except ValueError as err:
            sys.exit(f"error: --compare-precision: {err}")
        compared_runners, compared_dtype = method.runners, DTYPES[args.compare_precision]
        method.runners = our_runners
        if device.type == "cpu":  # measured (or read) now, not inside a timed step
            compared_chunks = chunk_reports(compared_runners)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    reference = YenchenlinProcess(args.reference_yenchenlin, cfg, opts) if args.reference_yenchenlin else None
    dtype = DTYPES[cfg.runtime.precision]

    steps, reference_seconds, peaks, onednn_peaks, compared = [], [], [], [], []
    for k in range(args.warmup + args.iters):
        # the compared precision's step goes first on odd steps, so that neither always follows the other
        if compared_runners is not None and k % 2 == 1:
            compared.append(timed_step_and_peak(k, batcher, scene, method, compared_runners, optimizer, cfg, device,
                                                compared_dtype))
        # the matmul peaks and yenchenlin's step beside ours: all timed on the machine as it is now
        timed, peak = timed_step_and_peak(k, batcher, scene, method, our_runners, optimizer, cfg, device, dtype)
        steps.append(timed)
        peaks.append(peak)
        if onednn_peak_available(device, dtype):
            onednn_peaks.append(matmul_peak_gflops(device, dtype, repeats=3, onednn=True))
        if reference is not None:
            reference_seconds.append(reference())
        if compared_runners is not None and k % 2 == 0:
            compared.append(timed_step_and_peak(k, batcher, scene, method, compared_runners, optimizer, cfg, device,
                                                compared_dtype))
    method.runners = our_runners
    steps, reference_seconds, peaks = steps[args.warmup:], reference_seconds[args.warmup:], peaks[args.warmup:]
    onednn_peaks, compared = onednn_peaks[args.warmup:], compared[args.warmup:]
    totals = [sum(s["times"].values()) for s in steps]
    median_step = statistics.median(totals)
    split = {phase: statistics.median(s["times"][phase] for s in steps) for phase in PHASES}
    coarse_points = statistics.median(s["coarse_points"] for s in steps)
    fine_points = statistics.median(s["fine_points"] for s in steps)
    points = coarse_points + fine_points
    # forward + backward FLOPs of the points evaluated with gradients (the density-only pass of the
    # occupancy sampler is not counted: it runs inside "sampling")
    # (with the split renderer of a voxel grid only the points that got a colour ran the MLP: flop_points)
    flop_points = statistics.median(s.get("flop_points", s["coarse_points"]) for s in steps)
    flops = flop_points * network_flops_per_point(coarse) + (fine_points * network_flops_per_point(fine)
                                                             if fine_points else 0)
    # the backward phase also contains the volume-rendering backward; the network dominates it
    network_seconds = split["network_forward"] + split["backward"]
    # the share of the peak step by step, each against the peak measured right after it: CPUs of this
    # kind change their clock by tens of percent within minutes, and a best reading from another moment
    # (matmul_peak_best_gflops, kept for reference) would compare two different machines
    achieved = [network_gflops(s, coarse, fine) for s in steps]  # GFLOP/s
    fractions = [a / p for a, p in zip(achieved, peaks)]
    peak, best_peak = statistics.median(peaks), matmul_peak_gflops(device, dtype)
    rays = opts.num_random_rays
    result.update({
        "rays_per_step": rays, "network_points_per_step": points, "mlp_points_per_step": flop_points + fine_points,
        "seconds_per_step": median_step, "rays_per_second": rays / median_step,
        "network_samples_per_second": points / median_step,
        "split_seconds": split, "split_fraction": {k: v / median_step for k, v in split.items()},
        "network_gflop_per_step": flops / 1e9, "network_gflops_achieved": flops / network_seconds / 1e9,
        "matmul_peak_dtype": str(dtype).replace("torch.", ""), "matmul_peak_gflops": peak,
        "matmul_peak_beside_steps_gflops": peaks, "matmul_peak_best_gflops": max(best_peak, *peaks),
        "network_fraction_of_peak": statistics.median(fractions),
        "non_network_fraction": 1.0 - network_seconds / median_step,
    })
    if onednn_peaks:  # the same shares against oneDNN's product, timed beside torch.matmul's
        result.update({
            "matmul_peak_onednn_gflops": statistics.median(onednn_peaks),
            "matmul_peak_onednn_beside_steps_gflops": onednn_peaks,
            "network_fraction_of_onednn_peak": statistics.median(a / p for a, p in zip(achieved, onednn_peaks)),
        })
    if compared:
        result["compared_precision"] = {
            "precision": args.compare_precision,
            "matmul_peak_dtype": str(compared_dtype).replace("torch.", ""),
            **compared_summary(compared, totals, coarse, fine)}
        if device.type == "cpu":
            result["compared_precision"]["cpu_network_chunk"] = compared_chunks
    if not args.no_render:
        view = (scene.i_test or scene.i_val)[0]
        for m in models:
            m.eval()
        start = time.perf_counter()
        if method.sampler is not None:
            method.sampler.skipping = True
        frame = method.render_image(scene.poses[view].to(device), scene, cfg.nerf.validation, stride=args.render_stride)
        sync(device)
        result["seconds_per_frame"] = time.perf_counter() - start
        result["frame_resolution"] = list(frame["rgb"].shape[1::-1])
        if args.checkpoint:
            target = scene.images[view][::args.render_stride, ::args.render_stride].to(device)
            result["frame_psnr"] = psnr(frame["rgb"].clamp(0, 1), target)
    if args.profile_steps > 0:  # after the frame: its PSNR is of the model as loaded or trained above
        result["unsynchronised"] = unsynchronised_steps(args.profile_steps, batcher, scene, method, optimizer, opts,
                                                        device)
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if reference is not None:
        result["reference"] = reference.result(args.warmup)
        # how many times faster ours is: the median of the ratios of neighbouring steps
        result["reference"]["speedup"] = statistics.median(r / ours for r, ours in zip(reference_seconds, totals))
    if not args.no_speed_factor:
        result["machine_speed"] = speed_factor()

    print(f"{args.config} on {device} ({result['threads']} threads, {result['precision']}, "
          f"{result['sampler']} sampler): {rays} rays, {points:.0f} network points per step"
          + (f" ({flop_points:.0f} through the colour MLP)" if flop_points != coarse_points else ""))
    print(f"  step            {median_step:9.3f} s   ({result['rays_per_second']:.0f} rays/s, "
          f"{result['network_samples_per_second']:.0f} samples/s)")
    for phase in PHASES:
        print(f"  {phase:<15} {split[phase]:9.3f} s   {100 * split[phase] / median_step:5.1f} %")
    print(f"  network         {result['network_gflops_achieved']:9.1f} GFLOP/s of {peak:.1f} measured "
          f"{result['matmul_peak_dtype']} matmul peak beside the steps ({100 * result['network_fraction_of_peak']:.0f} %, "
          f"best reading {result['matmul_peak_best_gflops']:.0f}); "
          f"everything else {100 * result['non_network_fraction']:.1f} % of the step")
    if "matmul_peak_onednn_gflops" in result:
        print(f"  {'':<15} {100 * result['network_fraction_of_onednn_peak']:9.0f} % of oneDNN's "
              f"{result['matmul_peak_dtype']} product beside the steps ({result['matmul_peak_onednn_gflops']:.1f} GFLOP/s)")
    if "unsynchronised" in result:
        run = result["unsynchronised"]
        waits = ", ".join(f"{name} {n:g}" for name, n in list(run["host_waits_by_operator"].items())[:4])
        print(f"  as in training  {run['seconds_per_step']:9.3f} s   ({run['steps']} steps, no synchronisation "
              f"between phases; device busy {run['device_busy_seconds_per_step']:.3f} s, "
              f"{run['kernel_launches_per_step']:.0f} kernel launches, {run['host_waits_per_step']:g} host waits"
              + (f": {waits}" if waits else "") + ")")
    if "seconds_per_frame" in result:
        psnr_text = f", PSNR {result['frame_psnr']:.2f} dB" if "frame_psnr" in result else ""
        print(f"  frame {result['frame_resolution'][0]}x{result['frame_resolution'][1]}  "
              f"{result['seconds_per_frame']:9.2f} s{psnr_text}")
    print(f"  peak memory     {result['peak_memory_mb']:9.0f} MiB")
    for k, chunk in enumerate(result.get("cpu_network_chunk", [])):
        print(f"  network chunk   {chunk['chunk']:9d} points ({('coarse', 'fine')[k]}: {chunk['source']}"
              + (f", seconds per candidate {chunk['seconds']})" if "seconds" in chunk else ")"))
    if "compared_precision" in result:
        compared_result = result["compared_precision"]
        speedup, name = compared_result["speedup"], compared_result["precision"]
        faster = (f"{result['precision']} {speedup:.2f}x faster" if speedup >= 1
                  else f"{name} {1 / speedup:.2f}x faster")
        print(f"  {name + ' step':<15} {compared_result['seconds_per_step']:9.3f} s   "
              f"({100 * compared_result['network_fraction_of_peak']:.0f} % of its {name} matmul peak; {faster}, "
              "steps alternating)")
    if "reference" in result:
        print(f"  yenchenlin step {result['reference']['seconds_per_step']:9.3f} s   (ours "
              f"{result['reference']['speedup']:.2f}x faster, steps alternating)")
    factor = result.get("machine_speed", {}).get("speed_factor")
    if factor:
        print(f"  machine speed factor {factor:.2f} (reference seconds = seconds here x factor)")
    if args.json:
        write_json(result, args.json)
    return result


def with_one_line_errors(run, argv=None) -> dict:
    """run(argv), where bad input (a config, a key, a scene, a checkpoint, a file) is a one-line error."""
    try:
        return run(argv)
    except (ConfigError, DatasetError, CheckpointError, DeviceError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")


def main(argv=None) -> dict:
    return with_one_line_errors(run_bench, argv)


if __name__ == "__main__":
    main()
