"""Data-parallel scaling: the training step with 1 process and with N processes (torchrun), same global batch.

    python bench/bench_distributed.py --config config/demo.yml [--nproc 1 2] [--steps 60] [--set k=v ...]
                                      [--json out.json]
    python bench/bench_distributed.py --bytes config/*.yml      (gradient bytes all-reduced per step)

Each run is a real `train_nerf.py` (1 process: plain python with every core's threads; N processes: torchrun,
which gives each one OMP_NUM_THREADS=1), without validation or checkpoints but the final one, for --steps
steps; the figure is train_nerf's own "s/step" line (the whole loop, the all-reduce included). Scaling
efficiency = t(1 process) / (N x t(N processes)), both at the same global batch (nerf.train.num_random_rays).
The JSON adds the machine's speed factor (../shared/tools/machine_speed.py, when it is there).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_nerf import write_json  # noqa: E402
from bench.machine import speed_factor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"Trained steps (\d+)\.\.(\d+) in ([\d.]+) s \(([\d.]+) s/step")


def parse_args(argv=None) -> argparse.Namespace:
    from nerf.config import add_set_argument, overrides_from

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", help="config to train")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to time")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run")
    parser.add_argument("--bytes", nargs="+", metavar="CONFIG", help="only print the all-reduced bytes of configs")
    parser.add_argument("--json", default=None, help="write the results here")
    add_set_argument(parser)
    args = parser.parse_args(argv)
    args.set = overrides_from(args.set)
    if not args.bytes and not args.config:
        parser.error("--config or --bytes is required")
    if args.steps < 1 or min(args.nproc) < 1:
        parser.error("--steps and every --nproc must be >= 1")
    return args


def gradient_bytes(config: str, overrides=()) -> dict:
    """{"parameters": count, "bytes": fp32 gradient bytes} of the config's trained networks at their final size
    (a voxel grid after its last growth: voxel_grid.num_voxels)."""
    import dataclasses

    from nerf.config import load_config
    from nerf.distributed import all_reduced_bytes
    from nerf.methods import build_networks

    cfg = load_config(config, list(overrides))
    if cfg.models.coarse.type == "VoxelGridModel":  # the grids at their final voxel count
        cfg = dataclasses.replace(cfg, voxel_grid=dataclasses.replace(cfg.voxel_grid,
                                                                      num_voxels_start=cfg.voxel_grid.num_voxels))
    use_ndc = cfg.dataset.type == "llff" and not cfg.dataset.no_ndc
    coarse, fine = build_networks(cfg, use_ndc)
    params = [p for m in (coarse, fine) if m is not None for p in m.parameters()]
    return {"parameters": sum(p.numel() for p in params), "bytes": all_reduced_bytes(params)}


def time_run(config: str, nproc: int, steps: int, overrides: list, logdir: str) -> dict:
    """Train `steps` steps with nproc processes; train_nerf's seconds per step."""
    sets = [f"experiment.train_iters={steps}", "experiment.validate_every=0", "experiment.save_every=0",
            f"experiment.logdir={logdir}", f"experiment.id=p{nproc}", *overrides]
    script = [os.path.join(ROOT, "train_nerf.py"), "--config", config, "--overwrite", "--set", *sets]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    result = subprocess.run(launcher + script, cwd=ROOT, capture_output=True, text=True)
    found = STEP_LINE.search(result.stdout)
    if result.returncode != 0 or not found:
        raise SystemExit(f"error: the {nproc}-process run failed: {failure_reason(result.stdout + result.stderr)}")
    return {"nproc": nproc, "seconds_per_step": float(found.group(4)), "seconds": float(found.group(3))}


def failure_reason(output: str) -> str:
    """train_nerf's own one-line error in a failed run's output (under torchrun it comes before the launcher's
    traceback, which would otherwise hide it), else the output's last lines."""
    reason = next((line for line in output.splitlines() if line.startswith("error: ")), None)
    return reason[len("error: "):] if reason is not None else "\n" + output[-2000:]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.bytes:
        from nerf.config import ConfigError

        try:
            rows = {config: gradient_bytes(config, args.set) for config in args.bytes}
        except ConfigError as err:
            sys.exit(f"error: {err}")
        for config, row in rows.items():
            print(f"{config}: {row['parameters']:,} parameters, {row['bytes'] / 1e6:.1f} MB all-reduced per step")
        return rows
    runs = []
    with tempfile.TemporaryDirectory() as logdir:
        for nproc in args.nproc:
            runs.append(time_run(args.config, nproc, args.steps, args.set, logdir))
            print(f"{nproc} process(es): {runs[-1]['seconds_per_step']:.3f} s/step")
    single = next((r for r in runs if r["nproc"] == 1), None)
    for run in runs:
        if single is not None:
            run["speedup"] = single["seconds_per_step"] / run["seconds_per_step"]
            run["efficiency"] = run["speedup"] / run["nproc"]
            print(f"{run['nproc']} process(es): speedup {run['speedup']:.2f}, efficiency {run['efficiency']:.0%}")
    report = {"config": args.config, "overrides": args.set, "steps": args.steps, "runs": runs,
              "gradient": gradient_bytes(args.config, args.set), "machine_speed": speed_factor(),
              "cpu_count": os.cpu_count()}
    if args.json:
        write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
