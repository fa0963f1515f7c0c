"""Run a trained MT-ACT at a control rate: observation dict + instruction in, one joint target out.

The model predicts a chunk of ``k`` future actions; the chunk scheduler (temporal ensembling or
executing ``n`` steps per query, ``policies/chunking.py``) turns chunks into one action per step.
The language vector is the frozen sentence embedding of the instruction the env (or a ROS topic)
gives, computed once per distinct instruction; a one-hot task id for the no-language baseline.
Shared by evaluation, the BC trainer's closed-loop checks and the ROS policy node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from policies.chunking import make_chunk_scheduler
from policies.language import SentenceEncoder, one_hot_task
from policies.mtact import MTACT, image_tensor, load_mtact

SCHEDULES = ("ensemble", "execute")


class LanguageVectors:
    """The model's language input for an instruction (MiniLM) or a task name (one-hot).

    The sentence encoder keeps one embedding per instruction (``policies/language.py``), so a
    controller asking every step costs a dictionary lookup.
    """

    def __init__(self, mode: str, tasks: list[str] | None):
        self.mode = mode
        self.tasks = list(tasks or [])

    def __call__(self, instruction: str, task: str) -> np.ndarray:
        if self.mode == "minilm":
            return SentenceEncoder().embed(instruction)
        return one_hot_task(task, self.tasks)


class MTACTPolicy:
    """A stateful controller: ``reset()`` per episode, then ``act(obs, instruction, task)`` per step."""

    def __init__(self, model: MTACT, meta: dict, schedule: str = "ensemble", ensemble_m: float = 0.01,
                 execute_steps: int | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
        self.model = model.eval()
        self.meta = meta
        self.config = model.config
        self.language = LanguageVectors(self.config.language, meta.get("tasks"))
        self.schedule, self.ensemble_m = schedule, ensemble_m
        self.execute_steps = execute_steps or self.config.chunk
        self.scheduler = self.new_scheduler()
        self.low = np.asarray(meta["action_low"], dtype=np.float64)
        self.high = np.asarray(meta["action_high"], dtype=np.float64)
        self.queries = 0

    def new_scheduler(self):
        """A fresh chunk scheduler with this policy's schedule (one per episode running at once)."""
        return make_chunk_scheduler(self.schedule, self.config.chunk, self.config.action_dim, m=self.ensemble_m,
                                    n_steps=self.execute_steps)

    def reset(self) -> None:
        self.scheduler.reset()

    def query_batch(self, observations: list[dict], instructions: list[str], tasks: list[str]) -> np.ndarray:
        """Chunks (B, k, A) in env units for B observations, in one forward pass."""
        cfg = self.config
        images = None
        if cfg.cameras:
            images = torch.stack([torch.stack([image_tensor(np.asarray(obs[c])) for c in cfg.cameras])
                                  for obs in observations])
        proprio = torch.as_tensor(np.stack([np.asarray(obs["proprio"], dtype=np.float32) for obs in observations]))
        obj = None
        if all("object_state" in obs for obs in observations):
            obj = torch.as_tensor(np.stack([np.asarray(o["object_state"], dtype=np.float32) for o in observations]))
        lang = torch.as_tensor(np.stack([np.asarray(self.language(i, t), dtype=np.float32)
                                         for i, t in zip(instructions, tasks, strict=True)]))
        self.queries += len(observations)
        return self.model.predict_chunk(images, proprio, obj, lang).numpy()

    def query(self, obs: dict, instruction: str, task: str) -> np.ndarray:
        """One chunk (k, A) in env units for this observation."""
        return self.query_batch([obs], [instruction], [task])[0]

    def act(self, obs: dict, instruction: str, task: str) -> np.ndarray:
        action = self.scheduler.act(lambda: self.query(obs, instruction, task))
        return np.clip(action, self.low, self.high)

    def batch(self, slots: int) -> BatchedMTACT:
        """A controller for ``slots`` episodes at once that shares this policy's model."""
        return BatchedMTACT(self, slots)


class BatchedMTACT:
    """``slots`` independent episodes driven by one model, one batched chunk query per control step.

    About half of a single-observation query is per-call overhead of small convolutions and
    attention (21.0 ms alone against 10.4 ms per observation in a batch of 8, on one thread;
    ``benchmarks/results/kitchen_mtact.md``), so evaluation runs episodes side by side to share
    it. Each slot keeps its own chunk scheduler, so every episode sees exactly the schedule a lone
    ``MTACTPolicy`` would give it.
    """

    def __init__(self, policy: MTACTPolicy, slots: int):
        if slots < 1:
            raise ValueError(f"slots must be positive, got {slots}")
        self.policy = policy
        self.schedulers = [policy.new_scheduler() for _ in range(slots)]

    def reset(self, slot: int) -> None:
        self.schedulers[slot].reset()

    def act(self, requests: dict[int, tuple[dict, str, str]]) -> dict[int, np.ndarray]:
        """``{slot: (obs, instruction, task)}`` -> ``{slot: action}``; slots between queries run no model."""
        due = [slot for slot in requests if self.schedulers[slot].needs_query()]
        chunks = {}
        if due:
            obs, instructions, tasks = zip(*(requests[slot] for slot in due), strict=True)
            chunks = dict(zip(due, self.policy.query_batch(list(obs), list(instructions), list(tasks)), strict=True))

        def chunk_of(slot: int):
            if slot not in chunks:
                raise RuntimeError(f"slot {slot}'s scheduler asked for a chunk it said it did not need")
            return chunks[slot]

        return {slot: np.clip(self.schedulers[slot].act(lambda s=slot: chunk_of(s)), self.policy.low, self.policy.high)
                for slot in requests}


def load_mtact_policy(directory: str | Path, schedule: str = "ensemble", ensemble_m: float = 0.01,
                      execute_steps: int | None = None) -> MTACTPolicy:
    model, meta = load_mtact(directory)
    return MTACTPolicy(model, meta, schedule, ensemble_m, execute_steps)
