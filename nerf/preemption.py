"""Preemption: SIGTERM, SIGUSR1 or Ctrl-C (SIGINT) asks training to save a checkpoint at the next step
boundary and exit 0.

Cluster schedulers announce the end of a job with a signal (SLURM: SIGTERM before the kill, or the signal
chosen with --signal; torchrun passes SIGTERM on to its workers); a person at the terminal presses Ctrl-C.
The handler only records the request; the training loop reads it between steps, when every tensor is
consistent, so the checkpoint it writes resumes exactly (`--load-checkpoint auto`). Outside torchrun a
second Ctrl-C stops at once, without saving, as Ctrl-C does elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

from .distributed import launched_by_torchrun

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


class PreemptionRequest:
    """A context manager that catches STOP_SIGNALS while it is open (and restores the earlier handlers).

    `requested` is the name of the first signal received, or None. Outside the main thread (where Python
    cannot install handlers) it catches nothing. under_launcher (default: whether torchrun started this
    process): a second Ctrl-C is caught too, as one press can reach a worker twice.
    """

    def __init__(self, under_launcher: Optional[bool] = None):
        self.requested: Optional[str] = None
        self._previous = {}
        self.under_launcher = launched_by_torchrun() if under_launcher is None else under_launcher

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and not self.under_launcher:
            # the next Ctrl-C acts as Ctrl-C does (KeyboardInterrupt: no save). Under torchrun a worker can get
            # two for one press (the terminal's and the one torchrun passes on): it keeps saving, and torchrun
            # ends it after its shutdown timeout when the save takes longer
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))
            if self.requested is None:  # os.write: no Python-level lock that tqdm's writes to stderr could hold
                os.write(2, b"\nCtrl-C: saving a checkpoint at the end of this step (Ctrl-C again: stop without "
                            b"saving)\n")
        if self.requested is None:
            self.requested = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                    continue  # a job started in the background ignores Ctrl-C: it still does
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the block runs (in the main thread), so that a script killed by
    a scheduler or `kill` cleans up as after Ctrl-C (its partial outputs removed by their own handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
