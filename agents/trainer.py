"""One training entry per algorithm, as SB3's ``learn()``: configure a trainer, then call :meth:`Trainer.learn`.

Every trainer fills a :class:`~policies.run_dir.RunDir` the same way (metrics, checkpoints, a
summary), saves a resumable state in ``checkpoints/last`` at each checkpoint and when SIGTERM or
SIGINT asks it to stop, and continues from that state when it is started again in the same
directory. Its per-algorithm checks live in :meth:`Trainer.validate`, run before anything is
written. ``TRAINERS`` maps ``algo.name`` to the class; ``POLICY_TRAINERS`` names the few pairs of an
algorithm and a policy kind that one algo file serves with another trainer.
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
    "joint": "agents.brain_trainer:BrainTrainer",
}
# (algo, policy kind) -> its trainer, where it is not the algo's own: GRPO on the brain's goals, not its actions
POLICY_TRAINERS = {
    ("grpo", "spatial_brain"): "agents.brain_grpo:BrainGRPOTrainer",
}


def trainer_class(algo: str, policy_kind: str | None = None) -> type[Trainer]:
    if algo not in TRAINERS:
        raise UserError(f"algo {algo!r} has no trainer (have: {', '.join(TRAINERS)})")
    module, name = POLICY_TRAINERS.get((algo, policy_kind), TRAINERS[algo]).split(":")
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


class GradientTrainer(Trainer):
    """A trainer of one torch module by gradient steps (behaviour cloning, the spatial brain's stages).

    Its resumable state: the step, the training time, the optimiser, the learning-rate schedule and the
    random generators (``extra_state``/``restore_extra`` add a subclass's own); the weights are the
    bundle in ``checkpoints/last`` beside it.
    """

    model: object
    optimizer: object
    scheduler: object
    rng: object  # numpy Generator
    step: int = 0
    train_s: float = 0.0

    def apply(self, loss, max_grad_norm: float) -> None:
        """One optimiser step on ``loss``: gradients clipped to ``max_grad_norm``, the schedule advanced."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1

    def extra_state(self) -> dict:
        return {}

    def restore_extra(self, state: dict) -> None:
        """Restore what :meth:`extra_state` saved."""

    def state(self) -> dict:
        import torch

        return {"step": self.step, "train_s": self.train_s, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), **self.extra_state()}

    def try_resume(self) -> bool:
        """Continue from ``checkpoints/last`` when this run directory holds a resumable one."""
        import torch

        from policies.bundle import BundleError, read_bundle

        state = self.resume_state()
        if state is None:
            return False
        last = self.run.checkpoint_dir(LAST)
        try:
            self.model.load_state_dict(read_bundle(last).tensors)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            self.restore_extra(state)
        except (BundleError, RuntimeError, KeyError, ValueError, TypeError) as e:
            raise UserError(f"cannot resume from {last}: {' '.join(str(e).split())[:200]} (a changed config? "
                            "start a new run directory)") from None
        self.step, self.train_s = int(state["step"]), float(state["train_s"])
        return True
