"""Stopping a training run cleanly: SIGTERM or SIGINT asks the loop to save a resumable state and end.

A cluster scheduler (SLURM's preemption, a container's stop) sends SIGTERM, a user presses
Ctrl-C: both set a flag the training loop reads at its next safe point (after an update), where it
writes ``checkpoints/last`` and raises :class:`TrainingStopped`. A second SIGINT, for a user who
will not wait, interrupts at once (and nothing is saved).
"""

from __future__ import annotations

import signal
import threading


class TrainingStopped(Exception):
    """A run stopped by a signal after saving its resumable state."""

    def __init__(self, signame: str, step: int):
        super().__init__(f"stopped by {signame} at step {step}")
        self.signame, self.step = signame, step

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signame))


class StopRequests:
    """Context manager: while inside, SIGTERM/SIGINT set :attr:`requested` instead of killing the process."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
