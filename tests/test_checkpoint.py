import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from nerf.checkpoint import (CheckpointError, atomic_torch_save, load_checkpoint, load_model_state,
                             nonfinite_tensors, restore_training_state, save_checkpoint)
from nerf.config import Config, ModelConfig, config_to_dict
from tests.conftest import ROOT
from nerf.models import build_model

SMALL = ModelConfig(type="FlexibleNeRFModel", num_layers=3, hidden_size=16, skip_connect_every=1,
                    hidden_size_dir=8, num_encoding_fn_xyz=3, num_encoding_fn_dir=2)


def _models_and_optimizer():
    coarse, fine = build_model(SMALL), build_model(SMALL)
    optimizer = torch.optim.Adam(list(coarse.parameters()) + list(fine.parameters()), lr=1e-3, eps=1e-7)
    loss = sum((m(torch.randn(5, 3), torch.randn(5, 3)) ** 2).sum() for m in (coarse, fine))
    loss.backward()
    optimizer.step()
    return coarse, fine, optimizer


def test_round_trip_restores_models_optimizer_and_rng(tmp_path):
    coarse, fine, optimizer = _models_and_optimizer()
    config = config_to_dict(Config())
    path = str(tmp_path / "checkpoint000007.ckpt")
    torch.manual_seed(123)
    save_checkpoint(path, 7, coarse, fine, optimizer, config, {"val_psnr": 21.5})
    expected_next = torch.rand(3)

    ckpt = load_checkpoint(path)
    assert ckpt["config"] == config and ckpt["metrics"]["val_psnr"] == 21.5
    coarse2, fine2 = build_model(SMALL), build_model(SMALL)
    optimizer2 = torch.optim.Adam(list(coarse2.parameters()) + list(fine2.parameters()), lr=1e-3, eps=1e-7)
    torch.manual_seed(999)
    step = restore_training_state(ckpt, path, coarse2, fine2, optimizer2)
    assert step == 7
    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(list(coarse.state_dict().values()) + list(fine.state_dict().values()),
                    list(coarse2.state_dict().values()) + list(fine2.state_dict().values())):
        assert torch.equal(a, b)
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_architecture_mismatch_is_a_clear_error(tmp_path):
    coarse, fine, optimizer = _models_and_optimizer()
    path = str(tmp_path / "c.ckpt")
    save_checkpoint(path, 1, coarse, fine, optimizer, {})
    bigger = build_model(ModelConfig(type="FlexibleNeRFModel", num_layers=3, hidden_size=32, skip_connect_every=1,
                                     hidden_size_dir=8, num_encoding_fn_xyz=3, num_encoding_fn_dir=2))
    with pytest.raises(CheckpointError, match=r"c.ckpt: the coarse model weights do not fit .*pts_linears.0.weight"):
        load_model_state(bigger, load_checkpoint(path)["model_coarse_state_dict"], path, "coarse model")
    with pytest.raises(CheckpointError, match="holds a fine model"):
        restore_training_state(load_checkpoint(path), path, build_model(SMALL), None, None)


def test_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_checkpoint(str(tmp_path / "none.ckpt"))
    with pytest.raises(CheckpointError, match="a folder, not a checkpoint file"):
        load_checkpoint(str(tmp_path))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="junk.ckpt: not a readable checkpoint"):
        load_checkpoint(str(junk))
    junk.write_text("a text file\n")  # torch.load fails with an IndexError on this one
    with pytest.raises(CheckpointError, match="junk.ckpt: not a readable checkpoint"):
        load_checkpoint(str(junk))
    foreign = str(tmp_path / "foreign.ckpt")
    torch.save({"iter": 3, "model_coarse_state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint written by this project"):
        restore_training_state(load_checkpoint(foreign), foreign, build_model(SMALL), None, None)


class Arbitrary:
    """Not allowed by weights_only loading."""


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    path = str(tmp_path / "arbitrary.ckpt")
    torch.save({"obj": Arbitrary()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "Re-running" not in str(err.value)  # not torch's advice to load it unsafely
    assert "holding objects other than tensors and plain data" in str(err.value)


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.ckpt")
    atomic_torch_save({"version": 1}, path)

    def failing_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"version": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert os.listdir(tmp_path) == ["ckpt.ckpt"]  # no temporary file left behind


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint000002.ckpt")
    atomic_torch_save({"version": 1}, path)

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as err:
        atomic_torch_save({"version": 2}, path)
    assert str(err.value) == f"[Errno 28] {path}: could not be written (No space left on device)"
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert os.listdir(tmp_path) == ["checkpoint000002.ckpt"]


SAVER = """
import sys, torch
sys.path.insert(0, {root!r})
from nerf.checkpoint import atomic_torch_save
big = torch.arange(8_000_000, dtype=torch.float32)
for k in range(1_000_000):
    atomic_torch_save({{"k": k, "big": big + k}}, {path!r})
    print(k, flush=True)
"""


def test_sigkill_during_saves_never_leaves_a_broken_checkpoint(tmp_path):
    """A process saving a 32 MB checkpoint again and again, killed at random moments (fixed seed): the file
    always loads, whole; kills inside a save leave temporary files, and the next save removes them."""
    path = str(tmp_path / "checkpoint.ckpt")
    script = SAVER.format(root=ROOT, path=path)
    rng, left = random.Random(7), []
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "0"  # one complete save, then kill somewhere in a later one
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        ckpt = load_checkpoint(path)
        assert torch.equal(ckpt["big"], torch.arange(8_000_000, dtype=torch.float32) + ckpt["k"]), attempt
        left.append(len([name for name in os.listdir(tmp_path) if name.startswith(".ckpt-")]))
    assert sum(left) >= 1 and max(left) <= 1  # kills landed inside saves; each next save removed the previous one
    atomic_torch_save({"k": -1}, path)
    assert os.listdir(tmp_path) == ["checkpoint.ckpt"]


def test_nonfinite_tensors_are_named():
    coarse, fine, _ = _models_and_optimizer()
    assert nonfinite_tensors({"coarse": coarse, "fine": fine}) == []
    with torch.no_grad():
        fine.pts_linears[1].weight[0, 0] = float("nan")
        coarse.rgb_linear.bias[0] = float("inf")
    assert nonfinite_tensors({"coarse": coarse, "fine": fine, "none": None}) == [
        "coarse.rgb_linear.bias", "fine.pts_linears.1.weight"]
