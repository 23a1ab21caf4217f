"""Plot validation PSNR against training time for training runs, from their TensorBoard logs.

    python plot_psnr.py RUN_DIR[=LABEL] [RUN_DIR[=LABEL] ...] --output FILE.png [--title TEXT]
                        [--time-scale F [F ...]] [--time-unit minutes|seconds]

Each RUN_DIR is a run folder of train_nerf.py (<experiment.logdir>/<experiment.id>). train_nerf.py logs at
every validation `validation/psnr`, the PSNR over the validation views, and `validation/train_seconds`, the
training seconds (validation excluded, continued across resumes), both at the step; runs logged before the
second existed are read from `validation/psnr_vs_train_seconds` (the PSNR with the whole training seconds as
the step, one point per second). --time-scale multiplies the
times, e.g. by the speed factor of ../shared/tools/machine_speed.py to plot reference seconds: one factor
for every run, or one per run in the order of the runs (runs timed while the machine's speed differed);
put it after the run folders, since it takes every number that follows it.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys

from nerf.files import atomic_write, os_error_line

PSNR_TAG, SECONDS_TAG = "validation/psnr", "validation/train_seconds"
TAG = "validation/psnr_vs_train_seconds"  # older runs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Plot validation PSNR against training time from run folders.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR[=LABEL]", help="run folders, each with an optional label")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--time-scale", type=float, nargs="+", default=[1.0],
                        help="multiply the training seconds by this (e.g. a machine speed factor): one value, "
                             "or one per run")
    parser.add_argument("--time-unit", choices=("minutes", "seconds"), default="minutes")
    args = parser.parse_args(argv)
    if not all(math.isfinite(scale) and scale > 0 for scale in args.time_scale):
        parser.error("--time-scale must be finite and > 0")
    if len(args.time_scale) not in (1, len(args.runs)):
        parser.error(f"--time-scale takes one value or one per run ({len(args.runs)}), not {len(args.time_scale)}")
    return args


def read_curve(run_dir: str) -> list[tuple[float, float]]:
    """[(training seconds, validation PSNR)] of a run folder, sorted by time; ValueError naming the folder
    when it has no TensorBoard events or no such scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not glob.glob(os.path.join(glob.escape(run_dir), "events.out.tfevents.*")):
        raise ValueError(f"{run_dir}: no TensorBoard event files (is it a train_nerf.py run folder?)")
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    tags = events.Tags()["scalars"]

    def latest(tag: str) -> dict:  # a resumed run logs a step again: keep the latest write
        return {event.step: event.value for event in sorted(events.Scalars(tag), key=lambda e: e.wall_time)}

    points = []
    if SECONDS_TAG in tags and PSNR_TAG in tags:
        seconds, psnr = latest(SECONDS_TAG), latest(PSNR_TAG)
        points = sorted((float(seconds[step]), psnr[step]) for step in seconds if step in psnr)
    if TAG in tags:  # a run logged before train_seconds existed, or its validations before a resume with it
        first = points[0][0] if points else math.inf
        points = sorted([(float(step), value) for step, value in latest(TAG).items() if step < first] + points)
    if not points:
        why = ("its validations predate the timing scalars" if PSNR_TAG in tags
               else "the run never validated: experiment.validate_every")
        raise ValueError(f"{run_dir}: no '{SECONDS_TAG}' scalar ({why})")
    return points


def split_label(text: str) -> tuple[str, str]:
    """RUN_DIR=LABEL -> (RUN_DIR, LABEL); without a label, the folder's name."""
    run_dir, _, label = text.partition("=")
    return run_dir, label or os.path.basename(os.path.normpath(run_dir))


def plotted_times(curves: list[tuple[str, list]], time_scales: list[float], unit: str) -> list[list[float]]:
    """The x values of each (label, [(seconds, PSNR)]) curve: its seconds x its entry of time_scales (one entry
    for all curves, or one per curve), in `unit`."""
    if len(time_scales) == 1:
        time_scales = list(time_scales) * len(curves)
    if len(time_scales) != len(curves):
        raise ValueError(f"{len(time_scales)} time scales for {len(curves)} curves: give one, or one per curve")
    divisor = 60.0 if unit == "minutes" else 1.0
    return [[t * scale / divisor for t, _ in points] for (_, points), scale in zip(curves, time_scales)]


def plot(curves: list[tuple[str, list]], output: str, title, time_scales: list[float], unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for (label, points), times in zip(curves, plotted_times(curves, time_scales, unit)):
        ax.plot(times, [p for _, p in points], marker="o", markersize=3, label=label)
    reference = " (reference)" if any(scale != 1.0 for scale in time_scales) else ""
    ax.set_xlabel(f"training {unit}{reference}, validation excluded")
    ax.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    extension = os.path.splitext(output)[1][1:] or "png"
    try:  # to a temporary file renamed over the output: a failed write keeps an earlier plot
        atomic_write(output, lambda f: fig.savefig(f, format=extension), binary=True, prefix=".plot-")
    finally:
        plt.close(fig)


def main(argv=None) -> list:
    args = parse_args(argv)
    curves = []
    try:
        for text in args.runs:
            run_dir, label = split_label(text)
            curves.append((label, read_curve(run_dir)))
    except ValueError as err:
        sys.exit(f"error: {err}")
    try:
        plot(curves, args.output, args.title, args.time_scale, args.time_unit)
    except OSError as err:
        sys.exit(f"error: {os_error_line(err)}")
    for label, points in curves:
        print(f"{label}: {len(points)} validations, last {points[-1][1]:.2f} dB at {points[-1][0]:.0f} s")
    print(f"Wrote {args.output}")
    return curves


if __name__ == "__main__":
    main()
