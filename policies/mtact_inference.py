"""A trained MT-ACT at a control rate: the kitchen's Dict observation (instruction included) in, one action out.

The model predicts a chunk of ``k`` future actions; the chunk scheduler (temporal ensembling or
executing ``n`` steps per query, ``policies/chunking.py``) turns chunks into one action per step
and keeps the chunks of past steps, so ``reset()`` starts every episode (or task) afresh. The
language vector is the frozen sentence embedding of ``obs["instruction"]``, computed once per
distinct instruction; the one-hot baseline reads a task id instead: the ``task`` option, else
the task whose wording (``envs/kitchen/instructions.py``) the instruction is. Shared by
evaluation, the BC trainer's closed-loop checks and the ROS policy node.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.kitchen.instructions import INSTRUCTIONS, instruction, task_of
from policies.chunking import ChunkExecutor, make_chunk_scheduler
from policies.language import SentenceEncoder, one_hot_task
from policies.mtact import MTACT, image_tensor
from policies.protocol import BatchedPolicy, Policy, PolicyError, PolicyMeta

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


class MTACTPolicy(Policy):
    """A stateful controller: ``reset()`` per episode (or task), then ``act(obs)`` per step."""

    def __init__(self, model: MTACT, meta: PolicyMeta, schedule: str = "ensemble", ensemble_m: float = 0.01,
                 execute_steps: int | None = None, task: str = ""):
        if schedule not in SCHEDULES:
            raise PolicyError(f"chunk schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.model = model.eval()
        self.meta = meta
        self.config = model.config
        tasks = meta.extra.get("tasks") or []
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise PolicyError(f"the MT-ACT bundle's extra.tasks must be a list of task names, got {str(tasks)[:80]}")
        self.tasks = list(tasks)
        self.language = LanguageVectors(self.config.language, self.tasks)
        self.schedule, self.ensemble_m = schedule, ensemble_m
        self.execute_steps = execute_steps or self.config.chunk
        if not 1 <= self.execute_steps <= self.config.chunk:
            raise PolicyError(f"execute_steps must be in 1..{self.config.chunk} (the chunk length), "
                              f"got {self.execute_steps}")
        if execute_steps and execute_steps != self.config.chunk and schedule != "execute":
            raise PolicyError(f"execute_steps={execute_steps} needs the execute schedule (this policy runs {schedule})")
        self.needs_task = self.config.language == "onehot"
        if self.needs_task and len(self.tasks) != self.config.lang_dim:
            raise PolicyError(f"this one-hot MT-ACT reads {self.config.lang_dim} task slots, and its bundle lists "
                              f"{len(self.tasks)} tasks")
        if task and self.needs_task and task not in self.tasks:
            raise PolicyError(f"task {task!r}: this one-hot MT-ACT was trained on {', '.join(self.tasks)} only")
        self.fixed_task = task
        self.task = self.instruction = ""  # of the last action, for diagnostics
        self.scheduler = self.new_scheduler()
        self.low = np.asarray(meta.action_low, dtype=np.float64)
        self.high = np.asarray(meta.action_high, dtype=np.float64)
        self.queries = 0
        self.resets = 0

    @classmethod
    def from_options(cls, model: MTACT, meta: PolicyMeta, options: dict) -> MTACTPolicy:
        """Chunk execution as trained (``meta.extra["inference"]``), with any of ``schedule``, ``execute_steps``
        and ``task`` overridden."""
        trained = dict(meta.extra.get("inference") or {})
        schedule = str(options.get("schedule") or trained.get("schedule", "ensemble"))
        steps = options.get("execute_steps")
        if steps is None and schedule == "execute":
            steps = min(int(trained.get("execute_steps") or model.config.chunk), model.config.chunk)
        try:
            steps = None if steps is None else int(steps)
        except (TypeError, ValueError):
            raise PolicyError(f"execute_steps must be an integer, got {steps!r}") from None
        return cls(model, meta, schedule, float(trained.get("ensemble_m", 0.01)), steps, str(options.get("task", "")))

    def new_scheduler(self):
        """A fresh chunk scheduler with this policy's schedule (one per episode running at once)."""
        return make_chunk_scheduler(self.schedule, self.config.chunk, self.config.action_dim, m=self.ensemble_m,
                                    n_steps=self.execute_steps)

    def reset(self) -> None:
        self.scheduler.reset()
        self.resets += 1

    def task_for(self, text: str) -> str:
        """The task the policy is told (one-hot) or that the words name ("" when unknown and not needed)."""
        if self.fixed_task:
            return self.fixed_task
        task = task_of(text)
        if not self.needs_task:
            return task or ""
        if task is None:
            raise PolicyError(f"instruction {text[:80]!r} is none of the known task wordings, and this one-hot "
                              "MT-ACT needs a task: set its task option (the node's task parameter)")
        if task not in self.tasks:
            raise PolicyError(f"instruction {text[:80]!r} asks for {task}, and this one-hot MT-ACT was trained on "
                              f"{', '.join(self.tasks)} only")
        return task

    def query_batch(self, observations: list[dict]) -> np.ndarray:
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
        texts = [str(obs["instruction"]) for obs in observations]
        lang = torch.as_tensor(np.stack([np.asarray(self.language(t, self.task_for(t)), dtype=np.float32)
                                         for t in texts]))
        self.queries += len(observations)
        return self.model.predict_chunk(images, proprio, obj, lang).numpy()

    def act(self, obs: dict) -> np.ndarray:
        self.instruction = str(obs["instruction"])
        self.task = self.task_for(self.instruction)
        action = self.scheduler.act(lambda: self.query_batch([obs])[0])
        return np.clip(action, self.low, self.high)

    def batched(self, slots: int) -> BatchedMTACT:
        return BatchedMTACT(self, slots)

    def warm_up(self, obs: dict) -> None:
        """One action on ``obs`` with a trained task's words (loads the sentence encoder now), then forget it."""
        task = self.fixed_task or (self.tasks[0] if self.tasks else "")
        text = instruction(task) if task in INSTRUCTIONS else "warm up"
        self.act({**obs, "instruction": text})
        self.scheduler.reset()
        self.task = self.instruction = ""

    @property
    def schedule_description(self) -> str:
        s, chunk = self.scheduler, self.config.chunk
        if isinstance(s, ChunkExecutor):
            return f"execute {s.n_steps} of {chunk} actions per query"
        return f"temporal ensembling of {chunk}-action chunks (m={s.m:g})"

    def diagnostics(self) -> dict[str, str]:
        return {"instruction": self.instruction, "task": self.task, "chunk_schedule": self.schedule_description, "chunk_queries": str(self.queries),
                "policy_resets": str(self.resets)}


class BatchedMTACT(BatchedPolicy):
    """``slots`` independent episodes driven by one model, one batched chunk query per control step.

    A single-observation query is dominated by per-call overhead of small convolutions and
    attention (``benchmarks/results/kitchen_mtact.md`` measures it), so evaluation runs episodes
    side by side to share it. Each slot keeps its own chunk scheduler, so every episode sees
    exactly the schedule a lone ``MTACTPolicy`` would give it.
    """

    def __init__(self, policy: MTACTPolicy, slots: int):
        if slots < 1:
            raise ValueError(f"slots must be positive, got {slots}")
        self.policy = policy
        self.schedulers = [policy.new_scheduler() for _ in range(slots)]

    def reset(self, slot: int) -> None:
        self.schedulers[slot].reset()

    def act(self, observations: dict[int, dict]) -> dict[int, np.ndarray]:
        """``{slot: obs}`` -> ``{slot: action}``; slots between queries run no model."""
        due = [slot for slot in observations if self.schedulers[slot].needs_query()]
        chunks = {}
        if due:
            chunks = dict(zip(due, self.policy.query_batch([observations[slot] for slot in due]), strict=True))

        def chunk_of(slot: int):
            if slot not in chunks:
                raise RuntimeError(f"slot {slot}'s scheduler asked for a chunk it said it did not need")
            return chunks[slot]

        return {slot: np.clip(self.schedulers[slot].act(lambda s=slot: chunk_of(s)), self.policy.low, self.policy.high)
                for slot in observations}
