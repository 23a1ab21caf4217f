"""nerf/device.py: `experiment.device` resolved to a torch device, an unavailable one refused by name."""

import pytest
import torch

from nerf.device import DeviceError, select_device


def _machine(monkeypatch, cuda_devices: int, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda_devices, mps, expected", [(0, False, "cpu"), (0, True, "mps"), (2, True, "cuda")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda_devices, mps, expected):
    _machine(monkeypatch, cuda_devices, mps)
    assert select_device("auto") == torch.device(expected)
    assert select_device("cpu") == torch.device("cpu")  # a named device is taken as it is


def test_a_named_device_that_is_missing_is_an_error_naming_the_key(monkeypatch):
    _machine(monkeypatch, cuda_devices=0, mps=False)
    with pytest.raises(DeviceError, match=r"experiment.device: 'cuda' requested but CUDA is not available"):
        select_device("cuda")
    with pytest.raises(DeviceError, match=r"experiment.device: 'mps' requested but MPS is not available"):
        select_device("mps")
    _machine(monkeypatch, cuda_devices=2, mps=False)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"'cuda:2' requested but only 2 CUDA device\(s\) exist"):
        select_device("cuda:2")
