"""One training entry per algorithm, as SB3's ``learn()``: configure a trainer, then call :meth:`Trainer.learn`.

Every trainer fills a :class:`~policies.run_dir.RunDir` the same way (metrics, checkpoints, a
summary), saves a resumable state in ``checkpoints/last`` at each checkpoint and when SIGTERM or
SIGINT asks it to stop, and continues from that state when it is started again in the same
directory. Its per-algorithm checks live in :meth:`Trainer.validate`, run before anything is
written. ``TRAINERS`` maps ``algo.name`` to the class.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from pathlib import Path

from omegaconf import DictConfig

from agents.errors import UserError
from agents.stopping import StopRequests, TrainingStopped
from agents.trainer_state import TrainerStateError, load_state, save_state
from policies.run_dir import LAST, RunDir

log = logging.getLogger(__name__)

TRAINERS = {
    "ppo": "agents.sb3_trainer:SB3Trainer",
    "sac": "agents.sb3_trainer:SB3Trainer",
    "grpo": "agents.grpo:GRPOTrainer",
    "es": "agents.es:ESTrainer",
    "bc": "agents.bc:BCTrainer",
    "scaffold": "agents.brain_trainer:BrainTrainer",
    "specialize": "agents.brain_trainer:BrainTrainer",
}


def trainer_class(algo: str) -> type[Trainer]:
    if algo not in TRAINERS:
        raise UserError(f"algo {algo!r} has no trainer (have: {', '.join(TRAINERS)})")
    module, name = TRAINERS[algo].split(":")
    return getattr(importlib.import_module(module), name)


class Trainer(ABC):
    """Shell of every trainer: the run directory, the loggers, stop requests and the resumable state."""

    def __init__(self, cfg: DictConfig, run: RunDir, loggers: list):
        self.cfg, self.run, self.loggers = cfg, run, loggers
        self.metrics = run.metrics()
        self.stop = StopRequests()

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        """Reject a config this algorithm cannot run, before any file is written (UserError, one line)."""

    @abstractmethod
    def learn(self) -> dict:
        """Train (from scratch, or on from ``checkpoints/last``) and return the summary."""

    # --- resumable state ------------------------------------------------------------------
    def resume_state(self) -> dict | None:
        """The state in ``checkpoints/last`` when the run directory holds one, else None.

        Metrics rows and ``step_<N>`` snapshots written after that state belong to a future that
        will be redone, so they are dropped.
        """
        last = self.run.resumable()
        if last is None:
            return None
        try:
            state = load_state(last)
            step = int(state["step"])
        except (TrainerStateError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"cannot resume from {last}: {e}") from None
        self.metrics.resume(step)
        self.run.drop_checkpoints_after(step)
        log.info("resuming from %s at step %d", last, step)
        return state

    def save_checkpoint(self, name: str, write_bundle, state: dict | None = None) -> Path:
        """A checkpoint: the policy bundle ``write_bundle(dir)`` writes, and the trainer state when given."""

        def write(tmp: Path) -> None:
            write_bundle(tmp)
            if state is not None:
                save_state(tmp, state)

        return self.run.write_checkpoint(name, write)

    def stopped(self, step: int, write_bundle, state: dict) -> TrainingStopped:
        """Save ``checkpoints/last`` after a stop request; the caller raises the returned exception."""
        self.save_checkpoint(LAST, write_bundle, state)
        return TrainingStopped(self.stop.requested or "SIGTERM", step)
