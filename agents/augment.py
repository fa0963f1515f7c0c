"""Semantic augmentation (RoboAgent's idea, done in simulation): re-render recorded demonstrations
under new appearances, multiplying the data without running the expert again.

RoboAgent inpaints new objects and textures into real frames with a diffusion model; in
simulation the scene itself can be changed. Each demonstration stores the simulator's ``qpos`` at
every observation (:mod:`agents.dataset`), so re-rendering is: draw an appearance (textures and
colours of every scene material, lighting, distractor objects on the counter; the L2 edits of
:mod:`envs.kitchen.variation` without its pose changes, which would no longer match the recorded
motion), put each recorded ``qpos`` back and render the cameras. Actions, states, rewards and
instructions are copied unchanged; only the images differ. Augmented copy k of episode i is
written as ``<i>-a<k>.npz`` beside the original, with ``augmentation = k``.
"""

from __future__ import annotations

import numpy as np

from agents.dataset import DatasetWriter, Episode

AUGMENT_SEED = 7_919  # augmentation k of an episode with seed s draws from default_rng([AUGMENT_SEED, s, k])


def augmented_name(index: int, k: int) -> str:
    return f"{index:05d}-a{k}"


def rerender(env, episode: Episode, k: int) -> Episode:
    """Copy ``k`` of ``episode`` under a new appearance, rendered by ``env`` (the kitchen, with cameras)."""
    core = env.unwrapped
    rng = np.random.default_rng([AUGMENT_SEED, episode.seed, k])
    core.variation.restore_nominal(core.data)
    core.variation.vary_lighting(rng)
    core.variation.vary_appearance(rng)
    core.variation.place_distractors(rng, core.data)
    frames: dict[str, list[np.ndarray]] = {cam: [] for cam in core.cameras}
    for qpos in episode.qpos:
        core.data.qpos[:] = qpos
        for cam, image in core.render_cameras().items():
            frames[cam].append(image)
    core.variation.restore_nominal(core.data)
    obs = dict(episode.obs)
    obs.update({cam: np.stack(images) for cam, images in frames.items()})
    return Episode(actions=episode.actions, obs=obs, qpos=episode.qpos, rewards=episode.rewards, success=episode.success,
                   seed=episode.seed, task=episode.task, instruction=episode.instruction,
                   paraphrase=episode.paraphrase, expert_noise=episode.expert_noise, augmentation=k)


def augment_episode(env, writer: DatasetWriter, task: str, index: int, episode: Episode, copies: int) -> int:
    """Write the missing augmented copies 1..``copies`` of one episode; returns how many were written."""
    written = 0
    for k in range(1, copies + 1):
        name = augmented_name(index, k)
        if writer.has(task, name):
            continue
        writer.write(task, name, rerender(env, episode, k))
        written += 1
    return written
