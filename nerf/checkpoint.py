"""Checkpoints: atomic writes, `weights_only` loads, and clear errors for files that do not fit.

A checkpoint is a dict of plain data: format_version, step (optimizer steps completed),
model_coarse_state_dict, model_fine_state_dict (or None), optimizer_state_dict, config (the resolved
config as nested dicts), rng_state (torch CPU and CUDA generator states) and metrics.
"""

from __future__ import annotations

import os
import pickle
from typing import Optional

import torch
from torch import nn

from .files import atomic_write, first_line, remove_stale_temporaries

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def rng_state() -> dict:
    """The generators training draws from: CPU, every CUDA device, and MPS."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
        state["cuda_current"] = torch.cuda.get_rng_state()  # the device torch.cuda.set_device chose (torchrun)
    if _mps_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    try:
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if "mps" in state and _mps_available():
            torch.mps.set_rng_state(state["mps"])
    except (RuntimeError, IndexError) as err:  # e.g. resumed on a machine with another GPU count
        print(f"warning: device RNG state not restored ({err}); the resumed run is not bit-exact")


def set_process_device_rng_state(state: dict, device: torch.device) -> None:
    """Under torchrun: give this rank's GPU (cuda:LOCAL_RANK) the generator state of the GPU that trained the
    saved run (every rank's generator is the same: same seed, same draws), not that of the GPU of the same
    index in the saving process, which rank 0 never drew from."""
    if device.type != "cuda":
        return
    saved = state.get("cuda_current", (state.get("cuda") or [None])[0])  # older checkpoints: the first GPU's
    if saved is not None:
        torch.cuda.set_rng_state(saved, device)


def atomic_torch_save(obj: object, path: str) -> None:
    """torch.save through files.atomic_write: a crash never leaves a partial file, a full disk names the
    file. Stale temporaries of earlier, killed saves in that folder are removed first."""
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
    atomic_write(path, lambda f: torch.save(obj, f), binary=True, prefix=".ckpt-")


def save_checkpoint(path: str, step: int, coarse: nn.Module, fine: Optional[nn.Module],
                    optimizer: torch.optim.Optimizer, config: dict, metrics: Optional[dict] = None,
                    extra: Optional[dict] = None) -> None:
    atomic_torch_save({
        **(extra or {}),
        "format_version": FORMAT_VERSION,
        "step": step,
        "model_coarse_state_dict": coarse.state_dict(),
        "model_fine_state_dict": fine.state_dict() if fine is not None else None,
        "optimizer_state_dict": optimizer.state_dict(),
        "config": config,
        "rng_state": rng_state(),
        "metrics": dict(metrics or {}),
    }, path)


def nonfinite_tensors(modules: dict) -> list[str]:
    """Names ("coarse.pts_linears.0.weight", ...) of the floating-point tensors of {name: module} that hold
    NaN or infinite values."""
    return [f"{key}.{name}" for key, module in modules.items() if module is not None
            for name, tensor in module.state_dict().items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint onto the CPU with weights_only=True (no arbitrary code runs)."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a file that is not a checkpoint fails in many ways (an IndexError for plain text)
        reason = first_line(err)
        if isinstance(err, pickle.UnpicklingError) and reason.startswith("Weights only load failed"):
            # torch's advice (weights_only=False) would run whatever code the file holds: not ours to give
            reason = "not a checkpoint, or one holding objects other than tensors and plain data"
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(data).__name__}")
    return data


def _describe_mismatch(model: nn.Module, state: dict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        return f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            return f"{key}: checkpoint {list(state[key].shape)}, model {list(value.shape)}"
    return "incompatible tensors"


def load_model_state(model: nn.Module, state: Optional[dict], path: str, name: str) -> None:
    """Load `state` into `model` strictly; an architecture mismatch is a CheckpointError naming the tensor."""
    if state is None:
        raise CheckpointError(f"{path}: has no {name} weights but the config defines that model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {name} weights are not a state dict")
    if hasattr(model, "resize_like"):  # a grid model grown during training: take the stored grid shapes
        model.resize_like(state)
    own = model.state_dict()
    if set(own) != set(state) or any(tuple(state[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise CheckpointError(f"{path}: the {name} weights do not fit the configured model "
                              f"({_describe_mismatch(model, state)}); it was trained with another architecture "
                              "(the config.yml saved beside it describes that one)")
    model.load_state_dict(state)


def restore_training_state(ckpt: dict, path: str, coarse: nn.Module, fine: Optional[nn.Module],
                           optimizer: Optional[torch.optim.Optimizer]) -> int:
    """Restore models, optimizer and RNG from a checkpoint of ours; return the step to continue from."""
    if ckpt.get("format_version") != FORMAT_VERSION or "step" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint written by this project (no format_version "
                              f"{FORMAT_VERSION})")
    load_model_state(coarse, ckpt.get("model_coarse_state_dict"), path, "coarse model")
    if fine is not None:
        load_model_state(fine, ckpt.get("model_fine_state_dict"), path, "fine model")
    elif ckpt.get("model_fine_state_dict") is not None:
        raise CheckpointError(f"{path}: holds a fine model but the config has models.fine: null")
    if optimizer is not None and ckpt.get("optimizer_state_dict") is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: optimizer state does not fit ({err})") from None
    if "rng_state" in ckpt:
        set_rng_state(ckpt["rng_state"])
    return int(ckpt["step"])


def import_optimizer_state(optimizer: torch.optim.Optimizer, state: Optional[dict], hyper) -> bool:
    """Load another implementation's Adam state if every moment tensor fits our parameters, then put our
    own hyperparameters (lr, betas, eps) back; leave the optimizer fresh and return False otherwise."""
    if not isinstance(state, dict) or not state.get("state"):
        return False
    fresh = optimizer.state_dict()
    ours = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        fits = all(optimizer.state[p][key].shape == p.shape for p in params if p in optimizer.state
                   for key in ("exp_avg", "exp_avg_sq"))
    except (ValueError, KeyError, RuntimeError, TypeError):
        fits = False
    if not fits:
        optimizer.load_state_dict(fresh)
        return False
    for group, settings in zip(optimizer.param_groups, ours):
        group.update(settings)  # our Adam variant (no weight decay, no amsgrad, ...) and hyperparameters
        group.update(lr=hyper.lr, betas=(hyper.beta1, hyper.beta2), eps=hyper.eps)
    for param_state in optimizer.state.values():
        param_state.pop("max_exp_avg_sq", None)  # amsgrad state, meaningless for our plain Adam
    return True
