"""Deterministic evaluation episodes: returns and the env's task metrics, optionally a video."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from policies.protocol import Policy

EVAL_SEED_BASE = 10_000  # evaluation seeds never overlap training seeds
METRIC_KEYS = (
    "forward_speed", "distance_travelled", "distance_to_target", "is_success",  # swimmer
    "hover_rmse", "position_error", "crash", "out_of_bounds", "waypoints_reached", "time_to_complete",  # uav
    "control_effort",
    "distance_to_goal", "crashed",  # the find envs
)


@dataclass
class EvalResult:
    returns: list[float]
    metrics: dict[str, list[float]] = field(default_factory=dict)

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_std(self) -> float:
        return float(np.std(self.returns))

    def metric_means(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.metrics.items()}


def run_episodes(env: gym.Env, policy: Policy, episodes: int, seed: int = EVAL_SEED_BASE,
                 video: str | Path | None = None) -> EvalResult:
    """Run ``episodes`` episodes with seeds ``seed, seed+1, ...``; record the first to ``video``.

    The policy is reset before each episode (a PID forgets its integrators).
    """
    result = EvalResult(returns=[])
    frames = []
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        policy.reset()
        total, speeds, done = 0.0, [], False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy.act(obs))
            total += float(reward)
            speeds.append(info.get("forward_speed", np.nan))
            done = terminated or truncated
            if video is not None and ep == 0:
                frames.append(env.render())
        result.returns.append(total)
        for key in METRIC_KEYS:
            if key == "forward_speed" and speeds and not np.all(np.isnan(speeds)):
                result.metrics.setdefault(key, []).append(float(np.nanmean(speeds)))
            elif key in info and key != "forward_speed":
                result.metrics.setdefault(key, []).append(float(info[key]))
    if video is not None:
        write_video(frames, video, fps=env.metadata.get("render_fps", 30))
    return result


def write_video(frames: list[np.ndarray], path: str | Path, fps: int) -> None:
    import imageio.v2 as imageio

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    tmp.replace(path)
