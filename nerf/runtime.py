"""How the networks run: mixed precision, torch.compile, and chunked evaluation (the CPU-friendly network chunk).

`FieldRunner` wraps a model for rendering and training: it evaluates the model under autocast (bf16 on CPU
and CUDA, fp16 on CUDA) and returns fp32 raw outputs, so that the positional encoding (computed from fp32
inputs) and the volume rendering stay in fp32. Parameters, gradients and Adam state stay fp32 (the wrapped
model is the one the optimizer and the checkpoints see). fp16 needs a `torch.amp.GradScaler`
(see `grad_scaler`) because its gradients underflow; bf16 has fp32's exponent range and needs none.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .config import RuntimeConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Points per network call on the CPU. The activations of a 4096-point chunk (4096 x 256 x 4 B = 4 MiB per
# layer) stay in the cache; 65536-point calls run the paper MLP ~30 % slower (bench/bench_nerf.py).
CPU_NETWORK_CHUNK = 4096


def network_chunk(netchunk: int, device: torch.device) -> int:
    """Points per network call: `netchunk` (the memory bound), capped at CPU_NETWORK_CHUNK on the CPU."""
    return min(netchunk, CPU_NETWORK_CHUNK) if device.type == "cpu" else netchunk


def evaluate_points(model: nn.Module, points: torch.Tensor, viewdirs: torch.Tensor, netchunk: int) -> torch.Tensor:
    """model(points [P, 3], viewdirs [P, 3]) -> raw [P, 4], in calls of at most network_chunk(netchunk) points."""
    chunk = network_chunk(netchunk, points.device)
    if points.shape[0] <= chunk:
        return model(points, viewdirs)
    return torch.cat([model(points[k:k + chunk], viewdirs[k:k + chunk])
                      for k in range(0, points.shape[0], chunk)], dim=0)


def run_network(model: nn.Module, points: torch.Tensor, viewdirs: torch.Tensor, netchunk: int) -> torch.Tensor:
    """Evaluate the field at points: [R, S, 3] with per-ray viewdirs [R, 3] -> raw [R, S, 4],
    in chunks of at most `netchunk` points (a memory knob that does not change the result; on the CPU
    smaller chunks are used, see network_chunk)."""
    num_rays, num_samples = points.shape[:2]
    flat_points = points.reshape(-1, 3)  # [P, 3]
    flat_dirs = viewdirs[:, None, :].expand(points.shape).reshape(-1, 3)  # [P, 3]
    return evaluate_points(model, flat_points, flat_dirs, netchunk).reshape(num_rays, num_samples, -1)  # [R, S, 4]


@torch.no_grad()
def evaluate_density(density_fn: Callable, points: torch.Tensor, netchunk: int) -> torch.Tensor:
    """sigma = ReLU(density_fn(points)): [P], without gradients, in calls of at most network_chunk(netchunk)."""
    chunk = network_chunk(netchunk, points.device)
    if points.shape[0] <= chunk:
        return torch.relu(density_fn(points))
    return torch.cat([torch.relu(density_fn(points[k:k + chunk])) for k in range(0, points.shape[0], chunk)])


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `precision` on `device`; None for fp32. ValueError where unsupported."""
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"runtime.precision fp16 needs a CUDA device, not {device.type} (use bf16)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("runtime.precision bf16: this GPU has no bf16 support (use fp16)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"runtime.precision {precision}: autocast is supported on cpu and cuda, not {device.type}")
    return DTYPES[precision]


def try_compile(fn: Callable, what: str) -> Callable:
    """torch.compile(fn), or fn itself (with a warning) where compilation is unavailable.

    Compilation happens at the first call; an error there also falls back to eager (dynamo's
    suppress_errors), so a missing C++ compiler or an unsupported Python only costs speed.
    """
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        return torch.compile(fn)
    except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
        warnings.warn(f"torch.compile unavailable for {what} ({type(err).__name__}: {err}); running eagerly")
        return fn


class FieldRunner(nn.Module):
    """Runs `model(points, viewdirs) -> raw [P, 4]` in the configured precision, optionally compiled.

    Returns fp32 raw outputs. `density(points) -> sigma_raw [P]` is the density-only evaluation the
    occupancy grid uses (the trunk without the view branch, where the model has one).
    """

    def __init__(self, model: nn.Module, dtype: Optional[torch.dtype] = None, compile: bool = False):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self._forward = try_compile(model.forward, type(model).__name__) if compile else model.forward
        density = getattr(model, "density", None)
        self._density = (try_compile(density, type(model).__name__ + ".density") if compile and density
                         else density)

    @property
    def has_color(self) -> bool:
        """True for a model with a separate colour branch `color(points, viewdirs) -> rgb_raw [P, 3]`."""
        return hasattr(self.model, "color")

    def color(self, points: torch.Tensor, viewdirs: torch.Tensor) -> torch.Tensor:
        with self._autocast(points.device):
            rgb_raw = self.model.color(points, viewdirs)
        return rgb_raw.float()

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def forward(self, points: torch.Tensor, viewdirs: Optional[torch.Tensor]) -> torch.Tensor:
        with self._autocast(points.device):
            raw = self._forward(points, viewdirs)
        return raw.float()

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points: [P, 3] -> sigma_raw: [P] (before the ReLU)."""
        with self._autocast(points.device):
            if self._density is not None:
                sigma_raw = self._density(points)
            else:  # a model whose density depends on the view: take it for a fixed direction
                viewdirs = torch.zeros_like(points)
                viewdirs[:, 2] = -1.0
                sigma_raw = self._forward(points, viewdirs)[:, 3]
        return sigma_raw.float()


def field_runners(coarse: nn.Module, fine: Optional[nn.Module], runtime: RuntimeConfig,
                  device: torch.device) -> tuple[FieldRunner, Optional[FieldRunner]]:
    """FieldRunners for the coarse and fine models under `runtime` (ValueError if its precision is unsupported)."""
    dtype = autocast_dtype(runtime.precision, device)
    return (FieldRunner(coarse, dtype, runtime.compile),
            FieldRunner(fine, dtype, runtime.compile) if fine is not None else None)


def grad_scaler(runtime: RuntimeConfig, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (disabled, i.e. a pass-through, for fp32 and bf16)."""
    return torch.amp.GradScaler(device.type, enabled=runtime.precision == "fp16")
