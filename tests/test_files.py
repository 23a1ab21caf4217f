import dataclasses
import errno
import os

import pytest

from nerf.config import Config, ExperimentConfig, save_config
from nerf.files import atomic_write, default_file_mode, remove_stale_temporaries


def test_atomic_write_replaces_the_file_with_the_usual_mode(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(str(path), lambda f: f.write("one"), binary=False, prefix=".config-")
    atomic_write(str(path), lambda f: f.write(b"two"), binary=True, prefix=".ckpt-")
    assert path.read_text() == "two"
    assert os.stat(path).st_mode & 0o777 == default_file_mode()  # not mkstemp's 0600
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "config.yml"
    save_config(Config(), str(path))
    before = path.read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    cfg = dataclasses.replace(Config(), experiment=ExperimentConfig(train_iters=7))
    with pytest.raises(OSError) as err:
        save_config(cfg, str(path))
    assert str(err.value) == f"[Errno 28] {path}: could not be written (No space left on device)"
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["config.yml"]


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    def interrupted(f):
        f.write("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "x.yml"), interrupted, binary=False, prefix=".config-")
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_are_removed_and_only_ours(tmp_path):
    for name in (".ckpt-abc.tmp", ".config-x1.tmp", "notes.tmp", ".ckpt-abc.tmp.keep", "checkpoint000001.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".ckpt-deep.tmp").write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path)) == [".ckpt-abc.tmp", ".config-x1.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".ckpt-abc.tmp.keep", "checkpoint000001.ckpt", "notes.tmp", "sub"]
    assert os.listdir(tmp_path / "sub") == [".ckpt-deep.tmp"]  # only the folder itself
    assert remove_stale_temporaries(str(tmp_path / "missing")) == []


def test_a_full_disk_that_the_writer_reports_as_another_error_still_names_the_file(tmp_path, monkeypatch):
    """torch.save's zip writer turns a failed write into a RuntimeError ("unexpected pos ..."): the OSError
    underneath is what gets reported."""
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, *args, **kwargs):
            self.file = real_fdopen(*args, **kwargs)

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

    def zip_writer(f):
        try:
            f.write(b"PK")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 58944 vs 58896")

    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(OSError, match=r"x.ckpt: could not be written \(No space left on device\)"):
        atomic_write(str(tmp_path / "x.ckpt"), zip_writer, binary=True, prefix=".ckpt-")
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors stay what they are
        atomic_write(str(tmp_path / "y.ckpt"), lambda f: (_ for _ in ()).throw(RuntimeError("unrelated")),
                     binary=True, prefix=".ckpt-")
    assert os.listdir(tmp_path) == []


def test_a_live_writer_keeps_its_temporary_file(tmp_path):
    """A temporary file named by a running process (this one) may be a save in progress: it stays; one of a
    process that no longer exists is removed."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    live = f".ckpt-{os.getpid()}-abc.tmp"
    dead = f".ckpt-{dead_pid}-abc.tmp"
    for name in (live, dead):
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path)) == [dead]
    assert os.listdir(tmp_path) == [live]


def test_a_folder_built_beside_replaces_the_old_one_only_on_success(tmp_path):
    import pytest

    from nerf.files import folder_replaced_on_success

    target = tmp_path / "scene"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with folder_replaced_on_success(str(target), ".build-") as tmp:
            (tmp_path / tmp / "half.txt").write_text("half")
            raise RuntimeError("failed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"] and (target / "old.txt").exists()
    with folder_replaced_on_success(str(target), ".build-") as tmp:
        (tmp_path / tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # the old folder, moved aside, is gone
    from nerf.files import default_folder_mode

    assert target.stat().st_mode & 0o777 == default_folder_mode()  # not mkdtemp's 0700


def test_the_folder_of_a_killed_build_is_deleted_when_the_next_one_starts(tmp_path):
    import socket
    import subprocess
    import sys

    from nerf.files import folder_replaced_on_success

    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that has ended
    (tmp_path / f".build-{host}-{dead.pid}-abc").mkdir()
    (tmp_path / f".build-{host}-{dead.pid}-abc" / "half.npy").write_bytes(b"x" * 100)
    kept = [f".build-{host}-{os.getpid()}-live",  # a build still running
            f".build-other-machine-{dead.pid}-abc",  # another machine's, on a shared file system: may be running
            ".build-notes",  # not a build folder's name
            ".old-1-x"]  # a cache moved aside: may be the only copy, never deleted
    for name in kept:
        (tmp_path / name).mkdir()
    with folder_replaced_on_success(str(tmp_path / "scene"), ".build-") as tmp:
        assert os.path.basename(tmp).startswith(f".build-{host}-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["scene"])
