"""The optimizer: Adam over a method's parameter groups, with per-group learning-rate scales."""

from __future__ import annotations

import torch

from .config import OptimizerConfig


def build_optimizer(groups: list[dict], cfg: OptimizerConfig, device: torch.device,
                    fused: bool = False) -> torch.optim.Adam:
    """Adam (optimizer: section) over parameter groups ({"params": [...], "lr_scale": s}; see
    Method.parameter_groups). `set_learning_rate` gives each group the schedule's lr * lr_scale.

    fused: use Adam's fused kernel where there is one (CUDA; CPU from torch 2.4), which updates millions
    of grid values several times faster than the default kernel.
    """
    hyper = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if fused:
        hyper["fused"] = _fused_available(device)
    return torch.optim.Adam(groups, **hyper)


def _fused_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def keep_configured_groups(optimizer: torch.optim.Optimizer, configured: torch.optim.Optimizer) -> None:
    """After loading a checkpoint's optimizer state: take lr_scale and the kernel choice (fused) from the
    configured optimizer, not the stored ones (a changed voxel_grid.grid_lr or another device applies)."""
    for group, fresh in zip(optimizer.param_groups, configured.param_groups):
        for key in ("lr_scale", "fused"):
            if key in fresh:
                group[key] = fresh[key]


def zero_gradients(optimizer: torch.optim.Optimizer, keep_buffers: bool) -> None:
    """Clear the gradients before a backward pass. keep_buffers (Method.keeps_gradient_buffers): zero the
    .grad buffers and keep them, not free them: a voxel grid's gathers (voxel_grid._GatherRows) add into
    grid.grad, so a step allocates no new dense gradient of millions of values. Otherwise free them
    (set_to_none, PyTorch's default)."""
    optimizer.zero_grad(set_to_none=not keep_buffers)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each parameter group's lr = lr * its lr_scale (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
