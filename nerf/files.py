"""Atomic file writes: a temporary file in the target's folder, renamed over the target when complete.

A crash, a kill or a full disk during a write never damages the file already at the target. Killed
writes leave their temporary file behind; `remove_stale_temporaries` deletes those (this project's
naming patterns only).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import socket
import tempfile
from typing import Callable, Iterator

# The temporary files of this project's atomic writes: checkpoints and saved configs.
TEMPORARY_PATTERNS = (".ckpt-*.tmp", ".config-*.tmp")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """0666 less the process umask: the mode open() would have given a new file."""
    return 0o666 & ~_umask()


def default_folder_mode() -> int:
    """0777 less the process umask: the mode os.makedirs would have given a new folder."""
    return 0o777 & ~_umask()


def _writer_alive(name: str) -> bool:
    """Whether the process that named a temporary file (".ckpt-<pid>-....tmp") is still running on this
    machine: its file may be a write in progress."""
    match = re.match(r"\.(?:ckpt|config)-(\d+)-", name)
    return match is not None and _process_alive(int(match.group(1)))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files that interrupted atomic writes of this project left in `folder` (its own
    naming patterns only, not below it, and not those of a process still running); returns their names.
    A killed checkpoint save leaves one as large as a checkpoint."""
    if not os.path.isdir(folder):
        return []
    stale = sorted(name for name in os.listdir(folder)
                   if any(fnmatch.fnmatchcase(name, pattern) for pattern in TEMPORARY_PATTERNS)
                   and not _writer_alive(name))
    for name in stale:
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    return stale


class _WriteErrors:
    """A file wrapper that remembers the OSError of a failed write: torch.save's zip writer reports a write
    that failed (a full disk) as a RuntimeError of its own, without the cause."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def write_error(path: str, err: OSError) -> OSError:
    """The OSError to raise for a failed write of `path`: one line that names it, with the reason."""
    return OSError(err.errno, f"{path}: could not be written ({err.strerror or err})")


def atomic_write_file(path: str, write_to: Callable[[str], None], prefix: str, suffix: str = ".tmp",
                      cause: Callable[[BaseException], BaseException] = lambda err: err) -> None:
    """write_to(name) fills `prefix`<pid>-XXXX`suffix` beside `path` (for writers that take a file name,
    such as a video encoder, which picks its format from the suffix), which is then renamed to `path`.

    On any failure the temporary file is removed and `path` is unchanged; an OSError (a full disk), or the
    one that cause(error) finds behind another error, is raised again as write_error(path, ...).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{prefix}{os.getpid()}-", suffix=suffix)
        os.close(fd)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; give the usual permissions
        write_to(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        reason = cause(err)
        if isinstance(reason, OSError) and not isinstance(reason, FileNotFoundError):
            raise write_error(path, reason) from None
        raise


def atomic_write(path: str, write: Callable, binary: bool, prefix: str) -> None:
    """write(file) into `prefix`-XXXX.tmp beside `path`, flushed to disk, then renamed to `path`
    (atomic_write_file). An OSError that the writer reported as another error (torch.save's zip writer) is
    found behind it, so that the message names `path` and the reason."""
    wrapped = []

    def write_to(tmp: str) -> None:
        with os.fdopen(os.open(tmp, os.O_WRONLY), "wb" if binary else "w",
                       **({} if binary else {"encoding": "utf-8"})) as f:
            wrapped.append(_WriteErrors(f))
            write(wrapped[0])
            f.flush()
            os.fsync(f.fileno())

    atomic_write_file(path, write_to, prefix,
                      cause=lambda err: wrapped[0].error if wrapped and wrapped[0].error is not None else err)


def os_error_line(err: OSError) -> str:
    """An OSError as one line that names its file: 'path: reason' (atomic_write's errors name it already)."""
    if err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return err.strerror or str(err)


def stays_below(name: str) -> bool:
    """Whether `name`, joined to a folder, names a folder below it: relative, without '..', not '.' or empty
    (what a run name or an evaluation's TRIAL may be, since --overwrite deletes files there)."""
    parts = os.path.normpath(name).split(os.sep)
    return not os.path.isabs(name) and ".." not in parts and parts != ["."]


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _build_folder_prefix(prefix: str) -> str:
    """`prefix`<host>-<pid>-: the host too, since on a file system that several machines share a process id
    says nothing about another machine's builds."""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-"


def remove_stale_folders(parent: str, prefix: str) -> list[str]:
    """Delete the folders `prefix`<host>-<pid>-XXXX in `parent` that a build on this machine left when it was
    killed (its process has ended); returns their names."""
    if not os.path.isdir(parent):
        return []
    ours = re.compile(re.escape(f"{prefix}{socket.gethostname()}-") + r"(\d+)-")
    stale = sorted(name for name in os.listdir(parent) if (match := ours.match(name))
                   and not _process_alive(int(match.group(1))) and os.path.isdir(os.path.join(parent, name)))
    for name in stale:
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return stale


@contextlib.contextmanager
def folder_replaced_on_success(path: str, prefix: str, old_prefix: str = ".old-") -> Iterator[str]:
    """Yield a new hidden folder `prefix`<host>-<pid>-XXXX beside `path` (with the usual permissions) to build into;
    when the block ends without an error it replaces `path`, else it is deleted. So a failure never leaves a
    folder at `path` that looks complete; the folders of builds that were killed (which could not delete
    theirs) are deleted when the next one starts. An existing `path` is moved aside (old_prefix) until the
    new folder is in place, so that an interruption between the two renames loses neither."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    remove_stale_folders(parent, prefix)
    tmp = tempfile.mkdtemp(dir=parent, prefix=_build_folder_prefix(prefix))
    try:
        os.chmod(tmp, default_folder_mode())  # mkdtemp creates 0700
        yield tmp
        if os.path.exists(path):
            backup = tempfile.mkdtemp(dir=parent, prefix=old_prefix)
            os.rmdir(backup)
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
