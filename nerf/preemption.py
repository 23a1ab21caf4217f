"""Preemption: SIGTERM or SIGUSR1 asks training to save a checkpoint at the next step boundary and exit 0.

Cluster schedulers announce the end of a job with a signal (SLURM: SIGTERM before the kill, or the signal
chosen with --signal; torchrun passes SIGTERM on to its workers). The handler only records the request;
the training loop reads it between steps, when every tensor is consistent, so the checkpoint it writes
resumes exactly (`--load-checkpoint auto`).
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class PreemptionRequest:
    """A context manager that catches STOP_SIGNALS while it is open (and restores the earlier handlers).

    `requested` is the name of the first signal received, or None. Outside the main thread (where Python
    cannot install handlers) it catches nothing.
    """

    def __init__(self):
        self.requested: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
