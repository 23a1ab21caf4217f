"""The optimizer: Adam over a method's parameter groups, with per-group learning-rate scales."""

from __future__ import annotations

import math

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
    if any(group.get("masked_rows") for group in groups):
        return MaskedAdam(groups, **hyper)
    return torch.optim.Adam(groups, **hyper)


class MaskedAdam(torch.optim.Adam):
    """Adam in which the parameters of a group with "masked_rows" (one row count N per parameter: the rows
    of its leading lattice axes, a grid [X, Y, Z, C] has X Y Z) update only the rows that this step's
    gradient reached, as DVGO's masked Adam. The mask, `param.gradient_rows` [N] bool, is made here and set
    by the lookups' backward pass (voxel_grid._Interpolate); zero_grad clears it with the rows' gradients.

    For a flagged row r, with the step count t of the parameter (every step, as Adam's):
        m_r <- beta1 m_r + (1 - beta1) g_r,   v_r <- beta2 v_r + (1 - beta2) g_r^2,
        p_r <- p_r - lr / (1 - beta1^t) * m_r / (sqrt(v_r / (1 - beta2^t)) + eps);
    the other rows keep their values and moments (lazy moments). Its state is Adam's (checkpoints load
    either way). The other parameters take Adam's own step (the fused kernel when asked for). Only gradients
    that come through the lookups may reach a masked parameter: one added elsewhere (a TV term, a compiled
    gather) would be dropped where no lookup flagged its row (config validation refuses both)."""

    def __init__(self, groups: list[dict], **hyper):
        super().__init__(groups, **hyper)
        for group in self.param_groups:
            rows = group.get("masked_rows") or []
            if rows and (group["weight_decay"] or group["amsgrad"] or group["maximize"]):
                raise ValueError("MaskedAdam: masked_rows needs weight_decay 0, amsgrad and maximize off")
            for param, count in zip(group["params"], rows):
                if param.numel() % count:
                    raise ValueError(f"MaskedAdam: a parameter of shape {tuple(param.shape)} has no {count} rows")
                param.gradient_rows = torch.zeros(count, dtype=torch.bool, device=param.device)

    def _masked(self) -> list[tuple[torch.Tensor, dict]]:
        return [(p, group) for group in self.param_groups for p in group["params"]
                if getattr(p, "gradient_rows", None) is not None and p.grad is not None]

    @staticmethod
    def _without_grads(masked: list[tuple[torch.Tensor, dict]], action) -> None:
        """Run Adam's own `action` with the masked parameters' gradients out of its sight, then put them back."""
        grads = [p.grad for p, _ in masked]
        for p, _ in masked:
            p.grad = None
        try:
            action()
        finally:
            for (p, _), grad in zip(masked, grads):
                p.grad = grad

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MaskedAdam.step takes no closure")
        masked = self._masked()
        self._without_grads(masked, super().step)  # Adam's own step for the other parameters only
        for p, group in masked:
            self._masked_update(p, group)

    def _masked_update(self, param: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:
            step_device = param.device if group.get("fused") else torch.device("cpu")
            state["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        rows = param.gradient_rows.nonzero().squeeze(1)  # [U]
        if rows.numel() == 0:
            return
        (beta1, beta2), lr, eps, t = group["betas"], group["lr"], group["eps"], float(state["step"])
        count = param.gradient_rows.numel()
        value, grad, m, v = (x.view(count, -1) for x in (param, param.grad, state["exp_avg"], state["exp_avg_sq"]))
        g = grad.index_select(0, rows)  # [U, C]
        m_rows = m.index_select(0, rows).lerp_(g, 1 - beta1)
        v_rows = v.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v_rows.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
        value_rows = value.index_select(0, rows).addcdiv_(m_rows, denom, value=-lr / (1 - beta1 ** t))
        value.index_copy_(0, rows, value_rows)
        m.index_copy_(0, rows, m_rows)
        v.index_copy_(0, rows, v_rows)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Adam's zero_grad; a masked parameter's gradient is zeroed in its flagged rows only (the others
        are zero already: only lookups write it) and the mask cleared."""
        masked = self._masked()
        for p, _ in masked:
            if not set_to_none:
                count = p.gradient_rows.numel()
                p.grad.view(count, -1).index_fill_(0, p.gradient_rows.nonzero().squeeze(1), 0.0)
            p.gradient_rows.zero_()
        if set_to_none:  # every gradient goes, the masked ones too: nothing to hide from Adam
            super().zero_grad(set_to_none=True)
        else:
            self._without_grads(masked, lambda: super(MaskedAdam, self).zero_grad(set_to_none=False))


def _fused_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def keep_configured_groups(optimizer: torch.optim.Optimizer, configured: torch.optim.Optimizer) -> None:
    """After loading a checkpoint's optimizer state: take the hyperparameters (betas, eps, weight decay),
    lr_scale, the kernel choice (fused) and the masked rows from the configured optimizer, not the stored ones
    (a changed optimizer.eps, voxel_grid.grid_lr or masked_adam, or another device, applies)."""
    for group, fresh in zip(optimizer.param_groups, configured.param_groups):
        for key in ("betas", "eps", "weight_decay", "lr_scale", "fused", "masked_rows"):
            if key in fresh:
                group[key] = fresh[key]
            elif key == "masked_rows":  # stored by a run with voxel_grid.masked_adam, resumed without it
                group.pop(key, None)


def zero_gradients(optimizer: torch.optim.Optimizer, keep_buffers: bool) -> None:
    """Clear the gradients before a backward pass. keep_buffers (Method.keeps_gradient_buffers): zero the
    .grad buffers and keep them, not free them: a voxel grid's gathers (voxel_grid._Interpolate) add into
    grid.grad, so a step allocates no new dense gradient of millions of values. Otherwise free them
    (set_to_none, PyTorch's default)."""
    optimizer.zero_grad(set_to_none=not keep_buffers)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each parameter group's lr = lr * its lr_scale (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
