"""Device selection: CUDA, then Apple MPS, then CPU, unless the config names one."""

from __future__ import annotations

import torch


class DeviceError(RuntimeError):
    """The configured device (experiment.device) is not available here."""


def select_device(name: str = "auto") -> torch.device:
    """`experiment.device`: auto | cpu | cuda | cuda:N | mps. An unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"experiment.device: {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"experiment.device: {name!r} requested but only {torch.cuda.device_count()} "
                           "CUDA device(s) exist")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"experiment.device: {name!r} requested but MPS is not available")
    return device
