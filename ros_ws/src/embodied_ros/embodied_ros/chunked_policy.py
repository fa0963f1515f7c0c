"""MT-ACT in the policy node: the kitchen's Dict observation and instruction in, one joint target per sample.

The model predicts chunks of ``k`` actions; the chunk scheduler of :mod:`policies.mtact_inference`
(temporal ensembling, or ``n`` actions executed per query; by default as the run was trained and
evaluated) turns them into one action per control step. The scheduler keeps the chunks of past
steps, so the node resets it at every episode boundary it can see: its ``~/reset``, re-enabling,
the watchdog's recovery, and each ``instruction`` message (a robot says it at every episode start
and task change). A chunk never outlives its episode or task.

The language input is the instruction's frozen MiniLM embedding; the one-hot baseline needs a task
instead: the node's ``task`` parameter, else the task whose wording (``envs/kitchen/instructions.py``)
the instruction is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embodied_ros.adapters import InvalidMessage, RobotAdapter, adapter_class, make_adapter
from embodied_ros.process import StartupError
from envs.kitchen.instructions import INSTRUCTIONS, instruction, task_of
from policies.chunking import ChunkExecutor
from policies.language import LanguageModelMissing
from policies.mtact import META_FILE, MTACTConfig, read_mtact_meta
from policies.mtact_inference import SCHEDULES, MTACTPolicy, load_mtact_policy


class ChunkedPolicy:
    """``forward(obs) -> action`` for the node: the observation with the adapter's latest instruction."""

    def __init__(self, policy: MTACTPolicy, adapter: RobotAdapter, task: str = ""):
        self.policy = policy
        self.adapter = adapter
        self.tasks = list(policy.meta.get("tasks") or [])
        self.needs_task = policy.config.language == "onehot"
        self.fixed_task = task
        self.task = ""  # the task of the last action, for diagnostics
        self.resets = 0
        if self.needs_task and task and task not in self.tasks:
            raise StartupError(f"parameter task:={task!r}: this one-hot MT-ACT was trained on "
                               f"{', '.join(self.tasks)} only")

    @property
    def schedule(self) -> str:
        s, chunk = self.policy.scheduler, self.policy.config.chunk
        if isinstance(s, ChunkExecutor):
            return f"execute {s.n_steps} of {chunk} actions per query"
        return f"temporal ensembling of {chunk}-action chunks (m={s.m:g})"

    def task_for(self, text: str) -> str:
        """The task the policy is told (one-hot) or that the words name ("" when unknown and not needed)."""
        if self.fixed_task:
            return self.fixed_task
        task = task_of(text)
        if not self.needs_task:
            return task or ""
        if task is None:
            raise InvalidMessage(f"instruction {text[:80]!r} is none of the known task wordings, and this one-hot "
                                 "MT-ACT needs a task: set the policy's task parameter")
        if task not in self.tasks:
            raise InvalidMessage(f"instruction {text[:80]!r} asks for {task}, and this one-hot MT-ACT was trained on "
                                 f"{', '.join(self.tasks)} only")
        return task

    def __call__(self, obs: dict) -> np.ndarray:
        text = self.adapter.instruction
        self.task = self.task_for(text)
        return self.policy.act(obs, text, self.task)

    def reset(self) -> None:
        """A new episode (or task): drop every chunk predicted so far."""
        self.policy.reset()
        self.resets += 1

    def warm_up(self, obs: dict) -> None:
        """One action on ``obs`` with a trained task's words (loads the sentence encoder now), then forget it."""
        task = self.fixed_task or (self.tasks[0] if self.tasks else "")
        text = instruction(task) if task in INSTRUCTIONS else "warm up"
        try:
            self.policy.act(obs, text, task)
        except LanguageModelMissing as e:
            raise StartupError(str(e)) from None
        self.policy.reset()

    def diagnostics(self) -> dict[str, str]:
        return {"instruction": self.adapter.instruction, "task": self.task, "chunk_schedule": self.schedule,
                "chunk_queries": str(self.policy.queries), "policy_resets": str(self.resets)}


def _check_env(directory: Path, config, full: RobotAdapter) -> None:
    """The policy's cameras, image size and widths against the robot of the env it was trained on."""
    missing = [cam for cam in config.cameras if cam not in full.cameras]
    if missing:
        raise StartupError(f"the MT-ACT policy in {directory} needs camera(s) {', '.join(missing)}, and the robot's "
                           f"env config (its {META_FILE} env) has {', '.join(full.cameras) or 'none'}")
    if config.cameras and tuple(full.image_shape) != (config.image_size, config.image_size):
        h, w = full.image_shape
        raise StartupError(f"the MT-ACT policy in {directory} sees {config.image_size}x{config.image_size} images, "
                           f"and the robot's env config (its {META_FILE} env) gives {h}x{w}")
    sizes = {"proprio": config.proprio_dim, "object_state": config.object_dim}
    for name, size in sizes.items():
        if name in full.layout and full.layout[name] != [size]:
            raise StartupError(f"the MT-ACT policy in {directory} reads {size} {name} values, the robot gives "
                               f"{full.layout[name][0]}")
    if config.action_dim != full.command_size:
        raise StartupError(f"the MT-ACT policy in {directory} outputs {config.action_dim} actions, robot "
                           f"{full.robot} takes {full.command_size}")


def mtact_adapter(directory: str | Path, robot: str) -> tuple[MTACTConfig, dict, RobotAdapter]:
    """(model config, meta, the adapter the policy reads through) of an MT-ACT run; StartupError on any mismatch.

    The adapter subscribes to the policy's cameras only, and to the object state only for the
    state-only variant (the image model never reads it). The sim asks too, to know whom to wait for.
    """
    directory = Path(directory)
    if not adapter_class(robot).dict_observation:
        raise StartupError(f"{directory} holds an MT-ACT policy (images, proprio and an instruction in), which runs "
                           f"on robot:=kitchen; robot {robot} takes a vector policy (mlp, ncap)")
    config, meta = read_mtact_meta(directory)
    env = meta.get("env")
    if not isinstance(env, dict):
        raise StartupError(f"{directory / META_FILE} has no env config (the env the policy was trained on)")
    _check_env(directory, config, make_adapter(robot, env))
    return config, meta, make_adapter(robot, {**env, "cameras": list(config.cameras)}, object_state=not config.cameras)


def load_chunked_policy(directory: str | Path, robot: str, schedule: str = "", execute_steps: int = 0,
                        task: str = "") -> tuple[ChunkedPolicy, RobotAdapter]:
    """The node's MT-ACT forward and its adapter; ``schedule``/``execute_steps`` "" and 0 keep the trained ones."""
    config, meta, adapter = mtact_adapter(directory, robot)
    trained = dict(meta.get("inference") or {})
    schedule = schedule or str(trained.get("schedule", "ensemble"))
    if schedule not in SCHEDULES:
        raise StartupError(f"parameter chunk_schedule must be one of {', '.join(SCHEDULES)} (empty: as trained), "
                           f"got {schedule!r}")
    if execute_steps < 0 or execute_steps > config.chunk:
        raise StartupError(f"parameter execute_steps must be in 1..{config.chunk} (the policy's chunk length), or 0 "
                           f"for the trained value, got {execute_steps}")
    if execute_steps and schedule != "execute":
        raise StartupError(f"parameter execute_steps:={execute_steps} needs chunk_schedule:=execute (this policy "
                           f"runs {schedule})")
    steps = execute_steps or min(int(trained.get("execute_steps") or config.chunk), config.chunk)
    policy = load_mtact_policy(directory, schedule, float(trained.get("ensemble_m", 0.01)), steps)
    return ChunkedPolicy(policy, adapter, task), adapter
