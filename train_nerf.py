"""Train a NeRF from a YAML config.

    python train_nerf.py --config config/lego.yml [--load-checkpoint PATH] [--prune coarse|fine|both]
                         [--set section.key=value ...]

Outputs go to <experiment.logdir>/<experiment.id>/: config.yml (the resolved config), TensorBoard
events, and checkpoint<step>.ckpt every experiment.save_every steps and at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nerf.batching import RayBatcher
from nerf.cache import CachedRayBatcher, RayCache
from nerf.checkpoint import (CheckpointError, import_optimizer_state, load_checkpoint, restore_training_state,
                             save_checkpoint)
from nerf.config import Config, ConfigError, config_to_dict, load_config, save_config
from nerf.config import validate as validate_config
from nerf.datasets import DatasetError, Scene, load_scene
from nerf.device import select_device
from nerf.importers import NATIVE, detect_format, models_from_checkpoint, stored_models_if_pruned
from nerf.metrics import mse_to_psnr
from nerf.models import NeRFModel, build_model
from nerf.voxel_grid import VoxelGridModel, grow, grown_box
from nerf.pruning import PruningRun, apply_pruning_event, layer_widths, prunable_layers, transfer_optimizer
from nerf.optimizer import build_optimizer, keep_configured_groups, set_learning_rate, zero_gradients
from nerf.occupancy import ONE_NETWORK_ERROR, box_warning, build_sampler
from nerf.rendering import (prepare_rays, ray_distortion_loss, render_image, render_rays, sample_color_loss,
                            set_compiled_compositing)
from nerf.runtime import field_runners, grad_scaler
from nerf.schedule import learning_rate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--load-checkpoint", default=None, help="resume from this checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh run even if the run folder holds checkpoints of an earlier run")
    parser.add_argument("--prune", choices=("coarse", "fine", "both"), default=None,
                        help="compress the loaded model by structured pruning while fine-tuning (see pruning:)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set experiment.train_iters=1000")
    return parser.parse_args(argv)


def checkpoint_step(name: str) -> int:
    """The step in a checkpoint file name (checkpoint001000.ckpt -> 1000); -1 for other names."""
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else -1


def model_parameters(coarse, fine) -> list:
    return list(coarse.parameters()) + (list(fine.parameters()) if fine is not None else [])


def models_to_prune(which: str, coarse, fine, checkpoint, excluded) -> dict:
    """The models `--prune coarse|fine|both` compresses; ValueError with the reason when it cannot."""
    if not checkpoint:
        raise ValueError("--prune compresses a trained model: give it with --load-checkpoint")
    chosen = {"coarse": ["coarse"], "fine": ["fine"], "both": ["coarse", "fine"]}[which]
    models = {"coarse": coarse, "fine": fine}
    if "fine" in chosen and fine is None:
        raise ValueError(f"--prune {which}: this model has no fine network")
    for name in chosen:
        if isinstance(models[name], VoxelGridModel):
            raise ValueError("--prune removes neurons of an MLP; a VoxelGridModel is compressed by training it with "
                             "fewer voxels (voxel_grid.num_voxels) instead")
        if not isinstance(models[name], NeRFModel):
            raise ValueError(f"--prune supports PaperNeRFModel/FlexibleNeRFModel, not {type(models[name]).__name__}")
        unknown = sorted(set(excluded) - set(prunable_layers(models[name])))
        if unknown:
            raise ValueError(f"pruning.excluded_layers: {unknown} are not prunable layers of the {name} model "
                             f"(those are {', '.join(prunable_layers(models[name]))})")
    return {name: models[name] for name in chosen}


def validation_views(scene: Scene, count: int) -> list:
    """`count` fixed, evenly spaced views of the val split (deterministic, unlike one random image)."""
    ids = scene.i_val or scene.i_test
    if count >= len(ids):
        return list(ids)
    return [ids[round(k * (len(ids) - 1) / max(count - 1, 1))] for k in range(count)]


@torch.no_grad()
def validate(cfg: Config, scene: Scene, coarse, fine, sampler=None) -> dict:
    """Render the validation views with the validation settings; mean PSNR of the fine output.

    With nerf.validation.downsample = k every k-th pixel is rendered and compared with the same pixels.
    coarse, fine: the models or their FieldRunners; sampler: the occupancy sampler when training with one.
    """
    opts, stride = cfg.nerf.validation, cfg.nerf.validation.downsample
    device = next(coarse.parameters()).device
    coarse.eval()
    if fine is not None:
        fine.eval()
    psnrs, mses, first = [], [], None
    for view in validation_views(scene, opts.num_views):
        target = scene.images[view][::stride, ::stride].to(device)  # [H', W', 3]
        out = render_image(coarse, fine, scene.poses[view].to(device), scene.height, scene.width, scene.focal,
                           scene.near, scene.far, scene.use_ndc, opts, stride=stride, sampler=sampler)
        mse = torch.mean((out["rgb"] - target) ** 2).item()
        mses.append(mse)
        psnrs.append(mse_to_psnr(mse))
        if first is None:
            first = (out, target)
    coarse.train()
    if fine is not None:
        fine.train()
    return {"psnr": sum(psnrs) / len(psnrs), "mse": sum(mses) / len(mses), "render": first[0],
            "target": first[1]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    exp, train_opts = cfg.experiment, cfg.nerf.train
    try:
        device = select_device(exp.device)
    except RuntimeError as err:
        sys.exit(f"error: {err}")
    torch.manual_seed(exp.randomseed)

    try:
        if cfg.dataset.cachedir:
            cache = RayCache(cfg.dataset.cachedir)
            cache.check(cfg, args.config)
            scene = cache.validation_scene()  # validation views only; training rays come from the cache
            batcher = CachedRayBatcher(cache, train_opts, exp.randomseed, device)
        else:
            scene = load_scene(cfg.dataset, white_background=train_opts.white_background)
            batcher = RayBatcher(scene, train_opts, exp.randomseed, device)
    except (ConfigError, DatasetError) as err:
        sys.exit(f"error: {err}")
    ndc = (scene.height, scene.width, scene.focal) if scene.use_ndc else None
    sampler = build_sampler(cfg.occupancy, scene.use_ndc, device) if cfg.occupancy.enabled else None

    ckpt, foreign = None, None
    if args.load_checkpoint:
        try:
            ckpt = load_checkpoint(args.load_checkpoint)
            if detect_format(ckpt, args.load_checkpoint) != NATIVE:
                foreign = models_from_checkpoint(ckpt, args.load_checkpoint, cfg.models)
        except CheckpointError as err:
            sys.exit(f"error: {err}")
    if foreign is not None:
        if foreign.fine is None and train_opts.num_fine > 0:
            sys.exit(f"error: {args.load_checkpoint}: has no fine model but nerf.train.num_fine is "
                     f"{train_opts.num_fine}; set it to 0 (and nerf.validation.num_fine) to train coarse only")
        cfg = dataclasses.replace(cfg, models=foreign.models)  # the saved config describes the real models
        try:
            validate_config(cfg, f"{args.config} with the models of {args.load_checkpoint}")
        except ConfigError as err:
            sys.exit(f"error: {err}")
        coarse, fine = foreign.coarse.to(device), foreign.fine.to(device) if foreign.fine is not None else None
    else:
        if ckpt is not None:
            models = stored_models_if_pruned(ckpt, cfg.models)
            if models != cfg.models:
                print(f"{args.load_checkpoint}: continuing with the pruned layer sizes stored in the checkpoint")
                cfg = dataclasses.replace(cfg, models=models)
        coarse = build_model(cfg.models.coarse, cfg.voxel_grid, sampler.grid.aabb if sampler else None).to(device)
        fine = build_model(cfg.models.fine).to(device) if cfg.models.fine is not None else None
        if ckpt is not None and isinstance(coarse, VoxelGridModel):
            coarse.resize_like(ckpt.get("model_coarse_state_dict") or {})  # grown: the optimizer needs its shapes
    if cfg.occupancy.enabled and fine is not None:
        sys.exit(f"error: {ONE_NETWORK_ERROR}")
    try:
        runners = field_runners(coarse, fine, cfg.runtime, device)  # what renders: precision, compile
    except ValueError as err:
        sys.exit(f"error: {err}")
    set_compiled_compositing(cfg.runtime.compile)
    scaler = grad_scaler(cfg.runtime, device)
    warning = box_warning(sampler, scene) if sampler is not None else None
    if warning:
        print(warning)
    optimizer = build_optimizer(cfg, coarse, fine, device)
    start_step = 0
    if foreign is not None:
        # another implementation's run continues at the step after its last update, with its Adam moments
        # when they fit our parameters (our hyperparameters, e.g. eps 1e-7, replace the stored ones)
        start_step = foreign.step
        kept = import_optimizer_state(optimizer, ckpt.get("optimizer_state_dict"), cfg.optimizer)
        print(f"Starting from {foreign.description}; continuing at step {start_step} with "
              f"{'its Adam state' if kept else 'a fresh Adam state (the stored one does not fit)'}")
    elif ckpt is not None:
        try:
            start_step = restore_training_state(ckpt, args.load_checkpoint, coarse, fine, optimizer)
        except CheckpointError as err:
            sys.exit(f"error: {err}")
        print(f"Resumed from {args.load_checkpoint} at step {start_step}")
    if ckpt is not None and foreign is None:
        if sampler is not None and ckpt.get("occupancy_grid") is not None:
            try:
                sampler.grid.load_state_dict(ckpt["occupancy_grid"])
            except ValueError as err:
                sys.exit(f"error: {args.load_checkpoint}: {err}")
        if scaler.is_enabled() and ckpt.get("grad_scaler"):
            scaler.load_state_dict(ckpt["grad_scaler"])
        keep_configured_groups(optimizer, build_optimizer(cfg, coarse, fine, device))
    if isinstance(coarse, VoxelGridModel):
        sampler.fixed_step = coarse.marching_step  # from the (loaded) grid and box

    # --prune: a new pruning run, or the unfinished one stored in the checkpoint (resumed with or without the flag)
    stored = ckpt.get("pruning") if ckpt is not None and foreign is None else None
    pruning_run = PruningRun.from_dict(stored) if stored else None
    if pruning_run is not None and not pruning_run.finished:
        if args.prune and args.prune != pruning_run.which:
            sys.exit(f"error: {args.load_checkpoint}: holds an unfinished --prune {pruning_run.which} run; "
                     f"resume it (with --prune {pruning_run.which} or no --prune) before pruning {args.prune}")
        print(f"Continuing the --prune {pruning_run.which} run: {pruning_run.events_done}/{pruning_run.num_events} "
              "events done")
    elif args.prune:
        p = cfg.pruning
        pruning_run = PruningRun(args.prune, start_step, {}, p.amount, p.increment, p.every, lr_scale=p.lr_scale,
                                 norm=p.norm, excluded_layers=list(p.excluded_layers), end_step=exp.train_iters)
    elif pruning_run is not None and start_step >= pruning_run.end_step:
        pruning_run = None  # that pruning fine-tune is over: train on at the normal learning rate
    pruned_models = {}
    if pruning_run is not None and not pruning_run.finished:
        try:
            pruned_models = models_to_prune(pruning_run.which, coarse, fine, args.load_checkpoint,
                                            pruning_run.excluded_layers)
        except ValueError as err:
            sys.exit(f"error: {err}")
        if not pruning_run.start_widths:
            pruning_run.start_widths = {which: layer_widths(model) for which, model in pruned_models.items()}
        if pruning_run.last_step > exp.train_iters:
            sys.exit(f"error: the pruning schedule needs steps up to {pruning_run.last_step} ({pruning_run.num_events} "
                     f"events every {pruning_run.every} steps from {pruning_run.start_step}) but "
                     f"experiment.train_iters is {exp.train_iters}")
        print(f"Pruning {pruning_run.which}: {pruning_run.amount:.0%} of each prunable layer in "
              f"{pruning_run.num_events} events of {pruning_run.increment:.0%}, at steps "
              f"{pruning_run.start_step + pruning_run.every}..{pruning_run.last_step} (every {pruning_run.every})")

    run_dir = os.path.join(exp.logdir, exp.id)
    # checkpoints this run would overwrite: any, for a fresh run; those after the start step, for a resumed one
    earlier = sorted(name for name in os.listdir(run_dir) if name.endswith(".ckpt")) if os.path.isdir(run_dir) else []
    at_risk = [name for name in earlier if ckpt is None or checkpoint_step(name) > start_step]
    if at_risk and not args.overwrite:
        sys.exit(f"error: {run_dir} already holds checkpoints of another run ({at_risk[-1]}) that this run would "
                 "overwrite; pick another experiment.id (--set experiment.id=NAME), resume from its last "
                 "checkpoint, or pass --overwrite")
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yml"))
    config_dict = config_to_dict(cfg)

    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    writer = SummaryWriter(run_dir)
    num_train = cache.manifest["num_train"] if cfg.dataset.cachedir else len(scene.i_train)
    print(f"{scene.basedir}: {num_train} train / {len(scene.i_val)} val / {len(scene.i_test)} test views "
          f"at {scene.width}x{scene.height}, focal {scene.focal:.3f}, near {scene.near:g}, far {scene.far:g}"
          f"{', NDC' if scene.use_ndc else ''}; device {device}; run dir {run_dir}")

    metrics = {}
    start_time, validation_seconds = time.time(), 0.0
    # training seconds (validation excluded) before this run: the PSNR-vs-time axis continues across resumes
    earlier_seconds = float(ckpt.get("train_seconds") or 0.0) if ckpt is not None and foreign is None else 0.0
    # shrink_box: the cells seen holding content (weight >= seen_weight) in the steps before the first growth
    seen = None
    if isinstance(coarse, VoxelGridModel) and cfg.voxel_grid.shrink_box and cfg.voxel_grid.grow_steps \
            and start_step <= cfg.voxel_grid.grow_steps[0]:
        seen = torch.zeros_like(sampler.grid.occupied)
        if ckpt is not None and foreign is None and ckpt.get("voxel_grid_seen") is not None:
            seen = ckpt["voxel_grid_seen"].to(seen)  # resumed mid-way: keep what the earlier steps saw
    progress = tqdm(range(start_step, exp.train_iters), initial=start_step, total=exp.train_iters,
                    dynamic_ncols=True)
    for step in progress:
        lr = learning_rate(step, cfg.optimizer.lr, cfg.scheduler.lr_decay, cfg.scheduler.lr_decay_factor)
        if pruning_run is not None and step < pruning_run.end_step:
            lr *= pruning_run.lr_scale  # for the whole pruning fine-tune
        set_learning_rate(optimizer, lr)

        v = cfg.voxel_grid
        if isinstance(coarse, VoxelGridModel) and step in v.grow_steps:
            # coarse to fine; the first growth also moves the grids onto the occupied cells (plus one cell)
            cell = (sampler.grid.aabb[3:] - sampler.grid.aabb[:3]) / sampler.grid.resolution
            box = grown_box(coarse.aabb, sampler.grid.box_of(seen), cell) if seen is not None else None
            seen = None
            grow(coarse, v.grow_steps, v.num_voxels_start, v.num_voxels, step, box, v.aspect)
            # new grid tensors: a fresh Adam for all parameters (as DVGO at each scale)
            optimizer = build_optimizer(cfg, coarse, fine, device)
            sampler.fixed_step = coarse.marching_step
            tqdm.write(f"[step {step}] voxel grid {'x'.join(map(str, coarse.resolution))} over "
                       f"{[round(x, 3) for x in coarse.aabb.tolist()]}")
            set_learning_rate(optimizer, lr)

        if sampler is not None:
            occ = cfg.occupancy
            sampler.skipping = step >= occ.warmup_steps
            if step % occ.update_every == 0:
                sampler.grid.update(runners[0].density, sampler.step_size, all_cells=step < occ.warmup_steps)

        rays_o, rays_d, target = batcher.batch(step)  # [R, 3] each
        rays = prepare_rays(rays_o, rays_d, scene.near, scene.far, ndc)
        out = render_rays(*runners, rays, train_opts, sampler=sampler)
        if seen is not None and step >= v.grow_steps[0] // 2:
            with torch.no_grad():  # the cells where training rays put weight: the content the box must keep
                seen[sampler.grid.cells_along(rays.origins, rays.directions, out["t"])[
                    out["weights"] >= v.seen_weight]] = True
        loss_fine = F.mse_loss(out["rgb"], target)
        loss = (loss_fine + F.mse_loss(out["rgb0"], target)) if "rgb0" in out else loss_fine
        if isinstance(coarse, VoxelGridModel):
            if v.tv_weight > 0 and (v.tv_until == 0 or step < v.tv_until):
                loss = loss + v.tv_weight * coarse.total_variation()
            if v.distortion_weight > 0:
                loss = loss + v.distortion_weight * ray_distortion_loss(out["weights"], out["t"], out["dt"], rays).mean()
            if v.sample_rgb_weight > 0:
                loss = loss + v.sample_rgb_weight * sample_color_loss(out["weights"], out["sample_rgb"], target).mean()

        zero_gradients(optimizer, coarse)
        scaler.scale(loss).backward()  # the scaler is a pass-through except for fp16
        scaler.step(optimizer)
        scaler.update()

        completed = step + 1
        is_last = completed == exp.train_iters
        if pruned_models and pruning_run.due(completed):
            changes, models, lines = apply_pruning_event(pruning_run, pruned_models, cfg.models)
            for line in lines:
                tqdm.write(f"[step {completed}] {line}")
            optimizer = transfer_optimizer(optimizer, model_parameters(coarse, fine), changes)
            cfg = dataclasses.replace(cfg, models=models)
            runners = field_runners(coarse, fine, cfg.runtime, device)  # recompiled for the new layer sizes
            config_dict = config_to_dict(cfg)
            save_config(cfg, os.path.join(run_dir, "config.yml"))
            writer.add_scalar("pruning/parameters", sum(p.numel() for p in model_parameters(coarse, fine)), completed)
        if (exp.print_every and completed % exp.print_every == 0) or is_last:
            metrics["train_loss"] = loss.item()  # the only host sync of a logging step
            metrics["train_psnr"] = mse_to_psnr(loss_fine.item())  # fine MSE alone
            progress.set_postfix(loss=f"{metrics['train_loss']:.4f}", psnr=f"{metrics['train_psnr']:.2f}")
            writer.add_scalar("train/loss", metrics["train_loss"], completed)
            writer.add_scalar("train/psnr", metrics["train_psnr"], completed)
            if "rgb0" in out:
                writer.add_scalar("train/psnr_coarse", mse_to_psnr(F.mse_loss(out["rgb0"], target).item()),
                                  completed)
            writer.add_scalar("train/lr", lr, completed)
            if sampler is not None:
                writer.add_scalar("occupancy/occupied_fraction", sampler.grid.occupied_fraction(), completed)
                writer.add_scalar("occupancy/samples_per_ray", out["num_samples"].float().mean().item(), completed)
        if (exp.validate_every and completed % exp.validate_every == 0) or (is_last and exp.validate_every):
            val_start = time.time()
            val = validate(cfg, scene, *runners, sampler)
            validation_seconds += time.time() - val_start
            metrics["val_psnr"], metrics["val_step"] = val["psnr"], completed
            writer.add_scalar("validation/psnr", val["psnr"], completed)
            writer.add_scalar("validation/loss", val["mse"], completed)
            writer.add_image("validation/rgb", val["render"]["rgb"].clamp(0, 1), completed, dataformats="HWC")
            disp = val["render"]["disp"]
            writer.add_image("validation/disparity", (disp / disp.max().clamp(min=1e-10))[None], completed)
            if completed == exp.validate_every or step == start_step:
                writer.add_image("validation/target", val["target"], completed, dataformats="HWC")
            train_seconds = earlier_seconds + time.time() - start_time - validation_seconds
            writer.add_scalar("validation/psnr_vs_train_seconds", val["psnr"], round(train_seconds))
            tqdm.write(f"[step {completed}] validation PSNR {val['psnr']:.2f} dB "
                       f"({time.time() - start_time:.0f} s; {train_seconds:.0f} s training)")
        if (exp.save_every and completed % exp.save_every == 0) or is_last:
            save_checkpoint(os.path.join(run_dir, f"checkpoint{completed:06d}.ckpt"), completed, coarse, fine,
                            optimizer, config_dict, metrics,
                            {"pruning": pruning_run.to_dict()
                             if pruning_run is not None and completed <= pruning_run.end_step else None,
                             "occupancy_grid": sampler.grid.state_dict() if sampler is not None else None,
                             "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                             "voxel_grid_seen": seen,
                             "train_seconds": earlier_seconds + time.time() - start_time - validation_seconds})
    progress.close()
    writer.close()
    metrics["seconds"] = time.time() - start_time
    metrics["validation_seconds"] = validation_seconds
    steps_run = max(exp.train_iters - start_step, 0)
    if steps_run:
        summary = f"Trained steps {start_step}..{exp.train_iters} in {metrics['seconds']:.1f} s " \
                  f"({metrics['seconds'] / steps_run:.3f} s/step, validation included)"
        if "val_psnr" in metrics:
            summary += f"; validation PSNR {metrics['val_psnr']:.2f} dB at step {metrics['val_step']}"
        print(summary)
    metrics["run_dir"] = run_dir
    metrics["step"] = max(start_step, exp.train_iters)
    return metrics


if __name__ == "__main__":
    main()
