"""Data-loading cost with and without a ray cache.

    python bench/bench_data.py --config config/lego.yml --cachedir cache/lego [--steps 200] [--set k=v ...]

Prints (and writes as JSON with --json) the start-up time (loading the scene vs opening the cache) and the
median time per training batch of each path. Run it on the same machine for both numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.bench_nerf import sync, with_one_line_errors, write_json  # noqa: E402
from nerf.batching import RayBatcher  # noqa: E402
from nerf.cache import CachedRayBatcher, RayCache  # noqa: E402
from nerf.config import add_set_argument, load_config, overrides_from  # noqa: E402
from nerf.datasets import load_scene  # noqa: E402
from nerf.device import select_device  # noqa: E402


def time_batches(batcher, steps: int, device: torch.device) -> float:
    """Median seconds per batch(step), synchronising the device so asynchronous work is counted."""
    times = []
    for step in range(steps):
        start = time.perf_counter()
        batch = batcher.batch(step)
        sync(device)
        float(batch[2][0, 0])  # make sure the data is really there
        times.append(time.perf_counter() - start)
    return statistics.median(times[steps // 10:])


def run_bench(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--cachedir", required=True)
    parser.add_argument("--steps", type=int, default=200)
    add_set_argument(parser)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    cfg = load_config(args.config, overrides_from(args.set) + [f"dataset.cachedir={args.cachedir}"])
    device = select_device(cfg.experiment.device)
    opts = cfg.nerf.train

    start = time.perf_counter()
    scene = load_scene(cfg.dataset, white_background=opts.white_background).to(device)
    load_seconds = time.perf_counter() - start
    uncached = time_batches(RayBatcher(scene, opts, 0), args.steps, device)

    start = time.perf_counter()
    cache = RayCache(args.cachedir)
    cache.check(cfg, args.config)
    val_scene = cache.validation_scene().to(device)
    open_seconds = time.perf_counter() - start
    cached = time_batches(CachedRayBatcher(cache, opts, 0, device), args.steps, device)
    del val_scene

    result = {"device": str(device), "rays_per_batch": opts.num_random_rays, "use_batching": opts.use_batching,
              "startup_seconds": {"load_scene": load_seconds, "open_cache": open_seconds},
              "seconds_per_batch": {"uncached": uncached, "cached": cached}}
    print(f"start-up: load scene {load_seconds:.2f} s, open cache {open_seconds:.2f} s")
    print(f"per batch of {opts.num_random_rays} rays: uncached {uncached * 1e3:.2f} ms, cached {cached * 1e3:.2f} ms")
    if args.json:
        write_json(result, args.json)
    return result


def main(argv=None) -> dict:
    return with_one_line_errors(run_bench, argv)


if __name__ == "__main__":
    main()
