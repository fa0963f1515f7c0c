"""Turning predicted action chunks into one action per control step.

An action-chunking policy predicts the next ``k`` actions at once. Two ways to execute them:
temporal ensembling (ACT, RoboAgent's evaluation) queries the model every step and averages every
chunk's prediction for the current step; the executor queries every ``n`` steps and plays the
first ``n`` actions open loop (LeRobot's ``n_action_steps``). Both take the model call as a
``query`` callable, so the model only runs when the schedule needs a new chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

Query = Callable[[], np.ndarray]


class ChunkScheduler(Protocol):
    def reset(self) -> None: ...

    def needs_query(self) -> bool:
        """Whether the next ``act`` calls its query (lets a batch of episodes share one model call)."""
        ...

    def act(self, query: Query) -> np.ndarray: ...


def _chunk(query: Query, rows: int, action_dim: int | None) -> np.ndarray:
    chunk = np.asarray(query(), dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[0] < rows or (action_dim is not None and chunk.shape[1] != action_dim):
        want = f"({rows}, {action_dim})" if action_dim is not None else f"(>={rows}, A)"
        raise ValueError(f"query() returned a chunk of shape {chunk.shape}, expected {want}")
    return chunk


class TemporalEnsembler:
    """ACT's temporal ensembling: query every step, average all predictions for the current step.

    The action at step t averages chunk_s[t - s] over the chunks issued at s = t-k+1..t, with
    weights exp(-m*i) normalised over the predictions present, i = 0 for the oldest chunk. A small
    ``m`` (0.01, ACT and RoboAgent) weights old and new nearly equally, which smooths the motion.
    The last ``k`` chunks live in a ring buffer, so a step costs O(k*A).
    """

    def __init__(self, chunk: int, action_dim: int, m: float = 0.01):
        if chunk < 1 or action_dim < 1:
            raise ValueError(f"chunk and action_dim must be positive, got {chunk} and {action_dim}")
        self.chunk, self.action_dim, self.m = chunk, action_dim, float(m)
        self.weights = np.exp(-self.m * np.arange(chunk))
        self.buffer = np.zeros((chunk, chunk, action_dim))  # slot s % k holds the chunk issued at step s
        self.reset()

    def reset(self) -> None:
        """Forget all chunks (call at the start of each episode)."""
        self.t = 0

    def needs_query(self) -> bool:
        return True

    def act(self, query: Query) -> np.ndarray:
        k, t = self.chunk, self.t
        self.buffer[t % k] = _chunk(query, k, self.action_dim)[:k]
        n = min(t + 1, k)
        issued = np.arange(t - n + 1, t + 1)  # oldest first, so weights[i] pairs with the i-th oldest
        preds = self.buffer[issued % k, t - issued]  # (n, A)
        w = self.weights[:n]
        self.t += 1
        return (w @ preds / w.sum()).astype(np.float32)


class ChunkExecutor:
    """Query once every ``n_steps`` and execute the first ``n_steps`` actions of that chunk in order."""

    def __init__(self, n_steps: int, action_dim: int | None = None):
        if n_steps < 1:
            raise ValueError(f"n_steps must be positive, got {n_steps}")
        self.n_steps, self.action_dim = n_steps, action_dim
        self.reset()

    def reset(self) -> None:
        """Drop the current chunk (call at the start of each episode)."""
        self.plan: np.ndarray | None = None
        self.index = 0

    def needs_query(self) -> bool:
        return self.plan is None or self.index >= self.n_steps

    def act(self, query: Query) -> np.ndarray:
        if self.needs_query():
            self.plan = _chunk(query, self.n_steps, self.action_dim)
            self.index = 0
        action = self.plan[self.index]
        self.index += 1
        return action.astype(np.float32)


def make_chunk_scheduler(mode: str, chunk: int, action_dim: int, m: float = 0.01,
                         n_steps: int | None = None) -> ChunkScheduler:
    """``"ensemble"`` (temporal ensembling with ``m``) or ``"execute"`` (``n_steps`` per query, default ``chunk``)."""
    if mode == "ensemble":
        return TemporalEnsembler(chunk, action_dim, m)
    if mode == "execute":
        n = chunk if n_steps is None else n_steps
        if not 1 <= n <= chunk:
            raise ValueError(f"n_steps must be in 1..{chunk} (the chunk length), got {n}")
        return ChunkExecutor(n, action_dim)
    raise ValueError(f"unknown chunk schedule {mode!r}; choose 'ensemble' or 'execute'")
