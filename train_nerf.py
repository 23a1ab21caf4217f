"""Train a NeRF from a YAML config.

    python train_nerf.py --config config/lego.yml [--load-checkpoint PATH|auto] [--prune coarse|fine|both]
                         [--set section.key=value ...]
    torchrun --nproc_per_node=N train_nerf.py --config ...      (data-parallel: docs/distributed.md)

Outputs go to <experiment.logdir>/<experiment.id>/: config.yml (the resolved config), TensorBoard
events, and checkpoint<step>.ckpt every experiment.save_every steps and at the end. SIGTERM or SIGUSR1
saves a checkpoint at the next step boundary and exits 0; `--load-checkpoint auto` continues from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import glob
import os
import re
import sys
import time
from typing import Optional

import torch
from tqdm import tqdm

from nerf.batching import RayBatcher
from nerf.cache import CachedRayBatcher, RayCache
from nerf.checkpoint import (CheckpointError, import_optimizer_state, load_checkpoint, nonfinite_tensors,
                             restore_training_state, save_checkpoint, set_process_device_rng_state)
from nerf.config import (Config, ConfigError, add_set_argument, config_to_dict, load_config, overrides_from,
                         save_config, validate as validate_config)
from nerf.datasets import Scene, load_scene
from nerf.device import DeviceError
from nerf.distributed import (SINGLE, World, average_gradients, broadcast_parameters, check_batch, process_device,
                              quiet_unless_rank_zero, speaks_for_all, world_size_from)
from nerf import distributed
from nerf.files import os_error_line, remove_stale_temporaries
from nerf.importers import NATIVE, LoadedModels, detect_format, models_from_checkpoint, stored_models_if_pruned
from nerf.methods import Method, build_method
from nerf.losses import NonFiniteLoss, NonFiniteWatch
from nerf.metrics import mse_to_psnr
from nerf.optimizer import build_optimizer, keep_configured_groups, set_learning_rate, zero_gradients
from nerf.preemption import PreemptionRequest
from nerf.pruning import PruningRun, apply_pruning_event, start_pruning, transfer_optimizer
from nerf.rays import prepare_rays
from nerf.rendering import stride_too_coarse
from nerf.runtime import grad_scaler
from nerf.schedule import learning_rate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--load-checkpoint", default=None,
                        help="resume from this checkpoint; 'auto': from the run folder's newest checkpoint, or "
                             "start fresh when it has none (a command line a preempted job can re-queue)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh run even if the run folder holds checkpoints of an earlier run")
    parser.add_argument("--prune", choices=("coarse", "fine", "both"), default=None,
                        help="compress the loaded model by structured pruning while fine-tuning (see pruning:)")
    add_set_argument(parser)
    args = parser.parse_args(argv)
    args.set = overrides_from(args.set)
    return args


CHECKPOINT_NAME = re.compile(r"checkpoint(\d+)\.ckpt")  # what training writes: checkpoint001000.ckpt


def checkpoint_step(name: str) -> int:
    """The step in a checkpoint file name (checkpoint001000.ckpt -> 1000); -1 for other names."""
    match = CHECKPOINT_NAME.fullmatch(name)
    return int(match.group(1)) if match else -1


def validation_views(scene: Scene, count: int) -> list:
    """`count` fixed, evenly spaced views of the val split (deterministic, unlike one random image)."""
    ids = scene.i_val or scene.i_test
    if count >= len(ids):
        return list(ids)
    return [ids[round(k * (len(ids) - 1) / max(count - 1, 1))] for k in range(count)]


@torch.no_grad()
def validate(cfg: Config, scene: Scene, method: Method, world: World = SINGLE) -> dict:
    """Render the validation views with the validation settings; mean PSNR of the fine output.

    With nerf.validation.downsample = k every k-th pixel is rendered and compared with the same pixels.
    Under torchrun rank r renders views r, r + N, ... and the errors are summed over the ranks; the
    training RNG is left as it was (ranks render different views but must keep drawing alike).
    """
    opts, stride = cfg.nerf.validation, cfg.nerf.validation.downsample
    views = validation_views(scene, opts.num_views)
    method.train(False)
    mses, first = torch.zeros(len(views), dtype=torch.float64), None
    devices = [method.device] if method.device.type == "cuda" else []
    with torch.random.fork_rng(devices, enabled=world.size > 1):
        for k in range(world.rank, len(views), world.size):
            target = scene.images[views[k]][::stride, ::stride].to(method.device)  # [H', W', 3]
            out = method.render_image(scene.poses[views[k]].to(method.device), scene, opts, stride)
            mses[k] = torch.mean((out["rgb"] - target) ** 2).item()
            if first is None:
                first = (out, target)
    method.train(True)
    mses = world.sum(mses).tolist()
    psnr = sum(mse_to_psnr(mse) for mse in mses) / len(mses)
    return {"psnr": psnr, "mse": sum(mses) / len(mses), "render": first[0] if first else None,
            "target": first[1] if first else None}


def load_data(cfg: Config, config_path: str, device: torch.device, world: World = SINGLE) -> tuple:
    """(scene for validation and camera settings, training batcher of this rank's rays, number of training
    views)."""
    train_opts, seed = cfg.nerf.train, cfg.experiment.randomseed
    if cfg.dataset.cachedir:
        cache = RayCache(cfg.dataset.cachedir)
        cache.check(cfg, config_path)
        scene = cache.validation_scene()  # validation views only; training rays come from the cache
        return scene, CachedRayBatcher(cache, train_opts, seed, device, world), cache.manifest["num_train"]
    scene = load_scene(cfg.dataset, white_background=train_opts.white_background)
    return scene, RayBatcher(scene, train_opts, seed, device, world=world), len(scene.i_train)


def checkpoint_to_load(path: Optional[str], cfg: Config, notes: list,
                       is_main: bool = True) -> tuple[Optional[str], Optional[dict]]:
    """--load-checkpoint: (the path given, None), or for 'auto' the run folder's newest readable checkpoint and
    its contents ((None, None): none yet). An unreadable one (a disk fault; the saves themselves are atomic) is
    renamed <name>.unreadable by rank 0, its bytes kept, so that a re-queued job continues from the one before
    instead of failing on it at every start."""
    if path != "auto":
        return path, None
    run_dir = os.path.join(cfg.experiment.logdir, cfg.experiment.id)
    for name in reversed(list_checkpoints(run_dir)):
        candidate = os.path.join(run_dir, name)
        try:
            ckpt = load_checkpoint(candidate)
        except CheckpointError as err:
            if is_main:
                os.replace(candidate, candidate + ".unreadable")
            notes.append(f"warning: {err}; renamed it {name}.unreadable and took the checkpoint before it")
            continue
        notes.append(f"--load-checkpoint auto: continuing from {candidate}")
        return candidate, ckpt
    notes.append(f"--load-checkpoint auto: no readable checkpoint in {run_dir}; starting fresh")
    return None, None


def read_start(path: Optional[str], cfg: Config, config_path: str, notes: list,
               ckpt: Optional[dict] = None) -> tuple[Optional[dict], Optional[LoadedModels], Config]:
    """The checkpoint to start from (or None; `ckpt`: its contents when already read), the models of another
    implementation's checkpoint (or None), and the config with the models they hold (an imported or pruned
    architecture)."""
    if not path:
        return None, None, cfg
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if detect_format(ckpt, path) == NATIVE:
        models = stored_models_if_pruned(ckpt, cfg.models)
        if models != cfg.models:
            notes.append(f"{path}: continuing with the pruned layer sizes stored in the checkpoint")
        cfg = dataclasses.replace(cfg, models=models)
        changed = changed_settings(ckpt.get("config"), cfg)
        if changed:
            notes.append(f"warning: {path} was trained with other settings, which this run changes: "
                         + "; ".join(changed))
        return ckpt, None, cfg
    foreign = models_from_checkpoint(ckpt, path, cfg.models)
    if foreign.fine is None and cfg.nerf.train.num_fine > 0:
        raise ValueError(f"{path}: has no fine model but nerf.train.num_fine is {cfg.nerf.train.num_fine}; set it "
                         "to 0 (and nerf.validation.num_fine) to train coarse only")
    cfg = dataclasses.replace(cfg, models=foreign.models)  # the saved config describes the real models
    validate_config(cfg, f"{config_path} with the models of {path}")
    return ckpt, foreign, cfg


# the keys a resumed run may change without comment: how long it runs, what it logs, where it writes and reads,
# how it validates, memory knobs, and the pruning schedule (an unfinished pruning run keeps the stored one)
UNREMARKABLE_CHANGES = ("experiment.id", "experiment.logdir", "experiment.train_iters", "experiment.validate_every",
                        "experiment.save_every", "experiment.print_every", "experiment.device", "dataset.basedir",
                        "dataset.cachedir", "runtime.compile", "runtime.keep_cpu_memory", "nerf.validation.*",
                        "pruning.*", "*chunk*")


def changed_settings(stored: Optional[dict], cfg: Config) -> list[str]:
    """'key: value (checkpoint: stored value)' for each setting of cfg that differs from the checkpoint's
    config (stored: its nested dicts; None for a checkpoint without one), but for UNREMARKABLE_CHANGES."""
    def flat(tree: dict, prefix: str = "") -> dict:
        items = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[f"{prefix}{key}"] = value
        return items

    if not isinstance(stored, dict):
        return []
    now, then = flat(config_to_dict(cfg)), flat(stored)
    return [f"{key}: {now[key]!r} (checkpoint: {then[key]!r})" for key in now
            if key in then and now[key] != then[key]
            and not any(fnmatch.fnmatchcase(key, pattern) for pattern in UNREMARKABLE_CHANGES)]


def resume(method: Method, optimizer, scaler, ckpt: Optional[dict], foreign: Optional[LoadedModels],
           path: Optional[str], notes: list) -> int:
    """Load the training state to continue from; returns the step to start at (0 for a fresh run). What it
    tells the user goes to `notes`, printed once the set-up has succeeded."""
    if foreign is not None:
        # another implementation's run continues at the step after its last update, with its Adam moments
        # when they fit our parameters (our hyperparameters, e.g. eps 1e-7, replace the stored ones)
        kept = import_optimizer_state(optimizer, ckpt.get("optimizer_state_dict"), method.cfg.optimizer)
        notes.append(f"Starting from {foreign.description}; continuing at step {foreign.step} with "
                     f"{'its Adam state' if kept else 'a fresh Adam state (the stored one does not fit)'}")
        method.start(foreign.step, None)
        return foreign.step
    if ckpt is None:
        method.start(0, None)
        return 0
    start_step = restore_training_state(ckpt, path, method.coarse, method.fine, optimizer)
    if method.world.size > 1 and "rng_state" in ckpt:
        set_process_device_rng_state(ckpt["rng_state"], method.device)
    notes.append(f"Resumed from {path} at step {start_step}")
    method.start(start_step, ckpt, path)
    if scaler.is_enabled() and ckpt.get("grad_scaler"):
        scaler.load_state_dict(ckpt["grad_scaler"])
    keep_configured_groups(optimizer, new_optimizer(method))
    return start_step


def new_optimizer(method: Method) -> torch.optim.Adam:
    return build_optimizer(method.parameter_groups(), method.cfg.optimizer, method.device, method.fused_optimizer)


def checkpoints_at_risk(run_dir: str, start_step: int, resumed: bool) -> list[str]:
    """The checkpoints of the run folder that this run would overwrite: any, for a fresh run; those after the
    start step, for a resumed one."""
    return [name for name in list_checkpoints(run_dir) if not resumed or checkpoint_step(name) > start_step]


def remove_earlier_run(run_dir: str, start_step: int, resumed: bool) -> None:
    """--overwrite, once every rank has set up: delete the checkpoints this run would overwrite, and for a fresh
    run the earlier run's TensorBoard events, so that the folder holds one run (`--load-checkpoint auto` and
    plot_psnr.py would otherwise take the earlier run's files)."""
    at_risk = checkpoints_at_risk(run_dir, start_step, resumed)
    events = [] if resumed else sorted(glob.glob(os.path.join(glob.escape(run_dir), "events.out.tfevents.*")))
    for path in [os.path.join(run_dir, name) for name in at_risk] + events:
        os.remove(path)
    if at_risk or events:
        print(f"--overwrite: removed {len(at_risk)} checkpoint(s) and {len(events)} TensorBoard event file(s) "
              f"of the earlier run in {run_dir}")


def run_folder(cfg: Config, start_step: int, resumed: bool, overwrite: bool) -> str:
    """The run folder, made, with the resolved config saved; refused (ValueError) when the run would overwrite
    checkpoints of another run (checkpoints_at_risk) without overwrite."""
    run_dir = os.path.join(cfg.experiment.logdir, cfg.experiment.id)
    at_risk = checkpoints_at_risk(run_dir, start_step, resumed)
    if at_risk and not overwrite:
        raise ValueError(f"{run_dir} already holds checkpoints of another run ({at_risk[-1]}) that this run would "
                         "overwrite; pick another experiment.id (--set experiment.id=NAME), resume from its last "
                         "checkpoint, or pass --overwrite")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(f"experiment.logdir {cfg.experiment.logdir}: cannot create the run folder {run_dir} "
                         f"({err.strerror or err})") from None
    stale = remove_stale_temporaries(run_dir)
    if stale:
        print(f"{run_dir}: removed {len(stale)} temporary file(s) of interrupted saves ({', '.join(stale)})")
    save_config(cfg, os.path.join(run_dir, "config.yml"))
    return run_dir


def list_checkpoints(run_dir: str) -> list[str]:
    """The names of the checkpoints training wrote into a run folder (checkpoint<step>.ckpt; none if the folder
    does not exist), by step. Other .ckpt files there (one copied in to start from) are not the run's."""
    names = [name for name in os.listdir(run_dir) if checkpoint_step(name) >= 0] if os.path.isdir(run_dir) else []
    return sorted(names, key=checkpoint_step)


def newest_checkpoint(run_dir: str) -> Optional[str]:
    """The path of the run folder's checkpoint of the highest step, or None."""
    names = list_checkpoints(run_dir)
    return os.path.join(run_dir, names[-1]) if names else None


def check_finite(watch: NonFiniteWatch, method: Method, cfg: Config, run_dir: str, step: int, saving: bool) -> None:
    """NonFiniteLoss (one line: the step, the settings to change, the newest checkpoint, which stays the
    newest) when a loss was NaN or infinite, or, before a save, when a weight is. With fp16 loss scaling a
    non-finite loss is left to the GradScaler, which skips such steps; only non-finite weights stop."""
    bad = None if cfg.runtime.precision == "fp16" else watch.first_bad_step()
    where = f"the training loss became {bad[1]} in step {bad[0] + 1} (after {bad[0]} completed steps)" if bad else None
    if where is None and saving:
        tensors = nonfinite_tensors({"coarse": method.coarse, "fine": method.fine})
        where = (f"{len(tensors)} weight tensor(s) were NaN or infinite after step {step} ({tensors[0]})"
                 if tensors else None)
    if method.world.agree(where is not None):  # every rank stops at the same step
        where = where or f"another training process's loss became NaN or infinite by step {step}"
        newest = newest_checkpoint(run_dir)
        resume_hint = (f"the newest checkpoint, {newest}, stays the newest" if newest else
                       "no checkpoint was saved before it")
        precision = (f" or use runtime.precision fp32 (now {cfg.runtime.precision})" if cfg.runtime.precision != "fp32"
                     else "")
        raise NonFiniteLoss(f"{where}; training stopped without saving and {resume_hint}. Lower optimizer.lr "
                            f"(now {cfg.optimizer.lr:g}){precision}" + (" and resume from that checkpoint"
                                                                       if newest else ""))


class Clock:
    """Training seconds: wall time less validation, continued across resumes (the PSNR-vs-time axis)."""

    def __init__(self, earlier: float):
        self.start, self.validation, self.earlier = time.time(), 0.0, earlier

    def train_seconds(self) -> float:
        return self.earlier + time.time() - self.start - self.validation


def log_training(writer, method: Method, out: dict, loss, mse, target, lr: float, step: int, progress) -> dict:
    """Loss, PSNR (of the main MSE alone), lr and the method's scalars at a logging step."""
    scalars = {"train/loss": loss.item(), "train/psnr": mse_to_psnr(mse.item())}  # the host syncs of the step
    progress.set_postfix(loss=f"{scalars['train/loss']:.4f}", psnr=f"{scalars['train/psnr']:.2f}")
    scalars.update(method.scalars(out, target), **{"train/lr": lr})
    for name, value in scalars.items():
        writer.add_scalar(name, value, step)
    return {"train_loss": scalars["train/loss"], "train_psnr": scalars["train/psnr"]}


def log_validation(writer, cfg: Config, scene: Scene, method: Method, clock: Clock, step: int, first: bool) -> dict:
    """Validate, write the scalars and images (rank 0's writer), and print one line."""
    val_start = time.time()
    val = validate(cfg, scene, method, method.world)
    clock.validation += time.time() - val_start
    if val["render"] is None:  # a rank with no validation view (more ranks than views)
        return {"val_psnr": val["psnr"], "val_step": step}
    writer.add_scalar("validation/psnr", val["psnr"], step)
    writer.add_scalar("validation/loss", val["mse"], step)
    writer.add_image("validation/rgb", val["render"]["rgb"].clamp(0, 1), step, dataformats="HWC")
    disp = val["render"]["disp"]
    writer.add_image("validation/disparity", (disp / disp.max().clamp(min=1e-10))[None], step)
    if first:
        writer.add_image("validation/target", val["target"], step, dataformats="HWC")
    train_seconds = clock.train_seconds()
    writer.add_scalar("validation/train_seconds", train_seconds, step)  # plot_psnr.py's times
    writer.add_scalar("validation/psnr_vs_train_seconds", val["psnr"], round(train_seconds))  # TensorBoard's view
    tqdm.write(f"[step {step}] validation PSNR {val['psnr']:.2f} dB ({time.time() - clock.start:.0f} s; "
               f"{train_seconds:.0f} s training)")
    return {"val_psnr": val["psnr"], "val_step": step}


def prune_event(run: PruningRun, pruned: dict, method: Method, optimizer, cfg: Config, run_dir: str, writer,
                step: int) -> tuple:
    """Fire the pruning run's next event: smaller layers, the optimizer's moments sliced to them, the saved
    config updated. Returns (optimizer, cfg)."""
    changes, models, lines = apply_pruning_event(run, pruned, cfg.models)
    for line in lines:
        tqdm.write(f"[step {step}] {line}")
    optimizer = transfer_optimizer(optimizer, method.parameters(), changes)
    cfg = dataclasses.replace(cfg, models=models)
    method.cfg = cfg
    method.set_runtime(cfg.runtime)  # recompiled for the new layer sizes
    if method.world.is_main:
        save_config(cfg, os.path.join(run_dir, "config.yml"))
    writer.add_scalar("pruning/parameters", sum(p.numel() for p in method.parameters()), step)
    return optimizer, cfg


def start_training(args, cfg: Config, scene: Scene, device: torch.device, ckpt, foreign, world: World,
                   notes: list) -> tuple:
    """(method, optimizer, grad scaler, start step, pruning run or None, the models it prunes) of a fresh,
    resumed or imported run; what it tells the user goes to `notes`."""
    method = build_method(cfg, scene.use_ndc, device, (foreign.coarse, foreign.fine) if foreign else None,
                          world=world)
    if ckpt is not None and foreign is None:
        method.prepare_to_load(ckpt)
    warning = method.scene_warning(scene)
    if warning:
        notes.append(warning)
    scaler, optimizer = grad_scaler(cfg.runtime, device), new_optimizer(method)
    start_step = resume(method, optimizer, scaler, ckpt, foreign, args.load_checkpoint, notes)
    stored_chunks = ckpt.get("cpu_network_chunks") if ckpt is not None and foreign is None else None
    if device.type == "cpu" and stored_chunks and not cfg.runtime.cpu_network_chunk:
        for runner, chunk in zip([r for r in method.runners if r is not None], stored_chunks):
            runner.keep_cpu_chunk(int(chunk), f"as in {args.load_checkpoint}, for an exact resume")
    stored = ckpt.get("pruning") if ckpt is not None and foreign is None else None
    pruning, pruned, lines = start_pruning(args.prune, stored, start_step, cfg, args.load_checkpoint,
                                           method.coarse, method.fine)
    notes.extend(lines)
    return method, optimizer, scaler, start_step, pruning, pruned


def agree_on_cpu_chunks(method: Method, world: World) -> None:
    """On the CPU: measure (or read) each network's chunk now rather than inside the first step, give every
    rank rank 0's sizes, and print them (a collective under torchrun: called after the set-up check)."""
    if method.device.type != "cpu":
        return
    runners = [runner for runner in method.runners if runner is not None]
    chosen = world.gather([runner.cpu_chunk() for runner in runners])[0]
    for runner, chunk in zip(runners, chosen):
        if chunk != runner.cpu_chunk():
            runner.keep_cpu_chunk(chunk, "rank 0's")
    names = ("coarse ", "fine ") if len(runners) == 2 else ("",)
    print("CPU network chunk: " + ", ".join(f"{name}{r.chunk_report['chunk']} points ({r.chunk_report['source']})"
                                            for name, r in zip(names, runners)))


class NullWriter:
    """The TensorBoard writer of ranks other than 0: writes nothing."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    add_image = add_scalar

    def close(self) -> None:
        pass


def join_world(cfg: Config) -> tuple[World, torch.device]:
    """The training processes and this one's device; under torchrun the global batch is checked against the
    world size before the rendezvous (a one-line error, no work done)."""
    check_batch(cfg.nerf.train.num_random_rays, world_size_from())
    device = process_device(cfg.experiment.device)
    return distributed.start(device), device


def set_up(args, world: World, cfg: Config, device: torch.device) -> tuple:
    """Data, start checkpoint, method and run folder (rank 0 makes it; None when the checkpoint is at or past
    experiment.train_iters: nothing to train, nothing written); ValueError, DeviceError or OSError. Its
    messages are printed once all of it has succeeded, so that a refusal is the only line of a failed start."""
    torch.manual_seed(cfg.experiment.randomseed)
    scene, batcher, num_train = load_data(cfg, args.config, device, world)
    too_coarse = stride_too_coarse(scene.width, scene.height, cfg.nerf.validation.downsample)
    if cfg.experiment.validate_every and too_coarse:
        raise ValueError(f"{args.config}: nerf.validation.downsample {cfg.nerf.validation.downsample}: {too_coarse}")
    notes = []
    args.load_checkpoint, ckpt = checkpoint_to_load(args.load_checkpoint, cfg, notes, world.is_main)
    ckpt, foreign, cfg = read_start(args.load_checkpoint, cfg, args.config, notes, ckpt)
    method, optimizer, scaler, start_step, pruning, pruned = start_training(args, cfg, scene, device, ckpt, foreign,
                                                                            world, notes)
    batcher.check_crop(start_step)
    if ckpt is not None and start_step >= cfg.experiment.train_iters:
        run_dir = None
    else:
        run_dir = (run_folder(cfg, start_step, ckpt is not None, args.overwrite) if world.is_main else
                   os.path.join(cfg.experiment.logdir, cfg.experiment.id))
    for note in notes:
        print(note)
    return cfg, scene, batcher, num_train, ckpt, foreign, method, optimizer, scaler, start_step, pruning, pruned, run_dir


def set_up_failure(error: Optional[str], start_step: Optional[int], world: World) -> Optional[str]:
    """The one-line error to exit with when set-up failed on any rank (rank 0 names the first failed rank;
    the others exit quietly), or None when every rank is ready to start at the same step."""
    reports = world.gather((error, start_step))
    errors, steps = [e for e, _ in reports], [s for _, s in reports]
    if not any(errors) and len(set(steps)) > 1:
        errors = [f"error: the ranks would start at different steps ({steps}): every rank must see the same run "
                  "folder and checkpoint (a file system shared by all machines)"] + [None] * (len(steps) - 1)
    if not any(errors):
        return None
    if error and world.size == 1:
        return error
    rank, first = next((r, e) for r, e in enumerate(errors) if e)
    return (first if rank == 0 else f"{first} (rank {rank})") if world.is_main else ""


def main(argv=None) -> dict:
    args = parse_args(argv)
    with quiet_unless_rank_zero():
        try:
            return train(args)
        except KeyboardInterrupt:  # a second Ctrl-C (the first saves at the end of its step), or one during set-up
            sys.stderr.write("\ninterrupted: stopped without saving; the checkpoints written before are kept\n")
            raise SystemExit(130) from None


def train(args) -> dict:
    try:  # before the rendezvous
        cfg = load_config(args.config, args.set)
        world, device = join_world(cfg)
    except ConfigError as err:  # the same on the ranks of a machine (which read the same files): one line each
        sys.exit(f"error: {err}" if speaks_for_all(variable="LOCAL_RANK") else 1)
    except (ValueError, DeviceError, OSError) as err:  # a rank's own (a LOCAL_RANK without a GPU): every one says it
        sys.exit(f"error: {err}")
    try:
        error = None
        try:  # set-up: every problem is a one-line error before any training output
            (cfg, scene, batcher, num_train, ckpt, foreign, method, optimizer, scaler, start_step, pruning, pruned,
             run_dir) = set_up(args, world, cfg, device)
        except (ValueError, DeviceError, OSError) as err:
            error, start_step = f"error: {err}", None
        failure = set_up_failure(error, start_step, world)
        if failure is not None:
            sys.exit(failure or 1)
        if args.overwrite and world.is_main and run_dir is not None:
            remove_earlier_run(run_dir, start_step, ckpt is not None)
        if run_dir is None:
            print(f"Nothing to train: {args.load_checkpoint} is at step {start_step} and experiment.train_iters is "
                  f"{cfg.experiment.train_iters} (raise it to train on); nothing written")
            return {"step": start_step, "run_dir": None}
        broadcast_parameters(method.parameters(), world)  # every rank starts from rank 0's weights
        agree_on_cpu_chunks(method, world)
        with PreemptionRequest() as preemption:
            return run(cfg, world, scene, batcher, num_train, ckpt, foreign, method, optimizer, scaler, start_step,
                       pruning, pruned, run_dir, preemption)
    finally:
        distributed.finish(world)


def run(cfg: Config, world: World, scene: Scene, batcher, num_train: int, ckpt, foreign, method: Method, optimizer,
        scaler, start_step: int, pruning, pruned, run_dir: str, preemption: PreemptionRequest) -> dict:
    """The training loop, from start_step to experiment.train_iters or a preemption signal."""
    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    device, exp, train_opts = method.device, cfg.experiment, cfg.nerf.train
    writer = SummaryWriter(run_dir) if world.is_main else NullWriter()
    print(f"{scene.basedir}: {num_train} train / {len(scene.i_val)} val / {len(scene.i_test)} test views at "
          f"{scene.width}x{scene.height}, focal {scene.focal:.3f}, near {scene.near:g}, far {scene.far:g}"
          f"{', NDC' if scene.use_ndc else ''}; device {device}"
          f"{f' x {world.size} processes' if world.size > 1 else ''}; run dir {run_dir}")
    ndc = (scene.height, scene.width, scene.focal) if scene.use_ndc else None
    clock = Clock(float(ckpt.get("train_seconds") or 0.0) if ckpt is not None and foreign is None else 0.0)
    metrics, watch, end_step = {}, NonFiniteWatch(device), exp.train_iters
    progress = tqdm(range(start_step, exp.train_iters), initial=start_step, total=exp.train_iters, dynamic_ncols=True,
                    disable=not world.is_main)
    try:
        for step in progress:
            lr = learning_rate(step, cfg.optimizer.lr, cfg.scheduler.lr_decay,
                               decay_factor=cfg.scheduler.lr_decay_factor, decay_start=cfg.scheduler.decay_start)
            lr *= pruning.lr_scale if pruning is not None and step < pruning.end_step else 1.0
            set_learning_rate(optimizer, lr)
            if method.before_step(step):  # new parameters (a grown grid): a fresh Adam
                optimizer = new_optimizer(method)
                set_learning_rate(optimizer, lr)

            rays_o, rays_d, target = batcher.batch(step)  # [R / N, 3] each: this rank's share of the batch
            rays = prepare_rays(rays_o, rays_d, scene.near, scene.far, ndc)
            out = method.render_rays(rays, train_opts, world.render_generator(exp.randomseed, step, device))
            method.after_render(step, rays, out)
            loss, mse = method.loss(out, target, rays, step)
            watch.record(loss, step)
            completed = step + 1
            is_last, logging = completed == exp.train_iters, exp.print_every and completed % exp.print_every == 0
            saving = (exp.save_every and completed % exp.save_every == 0) or is_last
            if watch.check_every_step or logging:  # a saving step checks below, before it saves
                check_finite(watch, method, cfg, run_dir, completed, saving=False)
            zero_gradients(optimizer, method.keeps_gradient_buffers)
            scaler.scale(loss).backward()  # the scaler is a pass-through except for fp16
            average_gradients(method.parameters(), world)  # the whole batch's gradient on every rank
            scaler.step(optimizer)
            scaler.update()
            preempted = world.agree(preemption.requested is not None)  # every rank stops at the same step
            saving = saving or preempted

            if pruned and pruning.due(completed):
                optimizer, cfg = prune_event(pruning, pruned, method, optimizer, cfg, run_dir, writer, completed)
            if logging or is_last:
                metrics.update(log_training(writer, method, out, loss, mse, target, lr, completed, progress))
            if exp.validate_every and (completed % exp.validate_every == 0 or is_last) and not preempted:
                first = completed == exp.validate_every or step == start_step
                metrics.update(log_validation(writer, cfg, scene, method, clock, completed, first))
            if saving:
                check_finite(watch, method, cfg, run_dir, completed, saving=True)
                extra = {"pruning": pruning.to_dict() if pruning is not None and completed <= pruning.end_step
                         else None, "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                         "cpu_network_chunks": [r.cpu_chunk() for r in method.runners if r is not None]
                         if device.type == "cpu" else None,
                         "train_seconds": clock.train_seconds(), **method.checkpoint_state()}
                path = os.path.join(run_dir, f"checkpoint{completed:06d}.ckpt")
                save_error = None
                try:
                    if world.is_main:
                        save_checkpoint(path, completed, method.coarse, method.fine, optimizer, config_to_dict(cfg),
                                        metrics, extra)
                except OSError as err:
                    save_error = err
                if world.agree(save_error is not None):  # the others wait for rank 0's save, and stop with it
                    raise save_error or OSError(f"rank 0 could not write {path}")
            if preempted:
                tqdm.write(f"[step {completed}] {preemption.requested or 'another rank was signalled'}: saved {path}; "
                           "the same command with --load-checkpoint auto continues from it")
                metrics["preempted"] = preemption.requested or "another rank"
                end_step = completed
                break
    except NonFiniteLoss as err:
        stop(progress, writer, f"error: {err}")
    except OSError as err:  # a full disk: the atomic writes leave every earlier file intact
        what = os_error_line(err)
        newest = newest_checkpoint(run_dir)
        stop(progress, writer, f"error: {what}; the files written before are intact ("
                               + (f"newest checkpoint: {newest})" if newest else "no checkpoint yet)"))
    progress.close()
    writer.close()
    return finish(metrics, clock, start_step, end_step, run_dir)


def stop(progress, writer, message: str) -> None:
    """End a run that cannot go on: close the bar and the event file, exit with a one-line error."""
    progress.close()
    try:
        writer.close()
    except OSError:  # a full disk may refuse the event file's last flush too; the message matters more
        pass
    sys.exit(message)


def finish(metrics: dict, clock: Clock, start_step: int, end_step: int, run_dir: str) -> dict:
    """Print the summary line; the metrics main() returns."""
    metrics["seconds"] = time.time() - clock.start
    metrics["validation_seconds"] = clock.validation
    steps_run = max(end_step - start_step, 0)
    if steps_run:
        summary = f"Trained steps {start_step}..{end_step} in {metrics['seconds']:.1f} s " \
                  f"({metrics['seconds'] / steps_run:.3f} s/step, validation included)"
        if "val_psnr" in metrics:
            summary += f"; validation PSNR {metrics['val_psnr']:.2f} dB at step {metrics['val_step']}"
        print(summary)
    metrics["run_dir"] = run_dir
    metrics["step"] = max(start_step, end_step)
    return metrics


if __name__ == "__main__":
    main()
