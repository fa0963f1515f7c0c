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
        chunk = self.config.chunk
        n = execute_steps or chunk
        self.scheduler = make_chunk_scheduler(schedule, chunk, self.config.action_dim, m=ensemble_m, n_steps=n)
        self.low = np.asarray(meta["action_low"], dtype=np.float64)
        self.high = np.asarray(meta["action_high"], dtype=np.float64)
        self.queries = 0

    def reset(self) -> None:
        self.scheduler.reset()

    def query(self, obs: dict, instruction: str, task: str) -> np.ndarray:
        """One chunk (k, A) in env units for this observation."""
        cfg = self.config
        images = None
        if cfg.cameras:
            images = torch.stack([image_tensor(np.asarray(obs[c])) for c in cfg.cameras])[None]
        proprio = torch.as_tensor(np.asarray(obs["proprio"], dtype=np.float32))[None]
        obj = torch.as_tensor(np.asarray(obs["object_state"], dtype=np.float32))[None] if "object_state" in obs else None
        lang = torch.tensor(self.language(instruction, task), dtype=torch.float32)[None]
        self.queries += 1
        return self.model.predict_chunk(images, proprio, obj, lang)[0].numpy()

    def act(self, obs: dict, instruction: str, task: str) -> np.ndarray:
        action = self.scheduler.act(lambda: self.query(obs, instruction, task))
        return np.clip(action, self.low, self.high)


def load_mtact_policy(directory: str | Path, schedule: str = "ensemble", ensemble_m: float = 0.01,
                      execute_steps: int | None = None) -> MTACTPolicy:
    model, meta = load_mtact(directory)
    return MTACTPolicy(model, meta, schedule, ensemble_m, execute_steps)
