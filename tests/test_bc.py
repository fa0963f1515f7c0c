"""Behaviour cloning: chunk windows, demonstration selection, image augmentation, success intervals, the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.bc_data import ChunkWindows, Selection, load_windows, select_files
from agents.dataset import DatasetError, read_manifest
from agents.image_augment import augment_images, color_jitter, random_shift
from agents.kitchen_eval import SuccessReport, wilson_interval
from envs.kitchen.instructions import task_of
from policies.protocol import Policy, PolicyMeta
from policies.run_dir import RunDir

from conftest import SIZE, TINY_MTACT, assert_one_line_error, fake_episode, write_fake_dataset

# --- chunk windows ----------------------------------------------------------------------------------

def test_windows_pad_past_the_episode_end_and_mask_it():
    eps = [fake_episode("kettle", 5, seed=1), fake_episode("kettle", 3, seed=2)]
    first_frame_of_second = eps[1].obs["scene"][0].copy()
    w = ChunkWindows(eps, ["scene"], chunk=4, lang=[np.zeros(2), np.ones(2)])
    assert len(w) == 8
    assert "scene" not in eps[1].obs  # the images moved into the windows (one copy in memory, not three)
    b = w.batch(np.array([0, 3, 5, 7]))
    # Frame 3 of episode 1 (length 5): actions 3, 4 then two padded copies of the last action.
    assert b["actions"][1, :, 0].tolist() == [3, 4, 4, 4] and b["pad"][1].tolist() == [False, False, True, True]
    # Frame 0 of episode 2 (length 3): its own actions, never the first episode's.
    assert b["actions"][2, :, 0].tolist() == [0, 1, 2, 2] and b["actions"][2, :, 1].tolist() == [2, 2, 2, 2]
    assert b["pad"][2].tolist() == [False, False, False, True]
    assert b["pad"][3].tolist() == [False, True, True, True]
    assert b["images"].shape == (4, 1, SIZE, SIZE, 3) and b["images"].dtype == torch.uint8
    assert torch.equal(b["images"][2, 0], torch.from_numpy(first_frame_of_second))
    assert torch.equal(b["proprio"][1], torch.from_numpy(eps[0].obs["proprio"][3]))
    assert b["lang"][2].tolist() == [1, 1]


def test_windows_keep_every_camera_of_every_frame_in_order():
    eps = [fake_episode("kettle", 5, seed=1), fake_episode("kettle", 3, seed=2)]
    want = {c: np.concatenate([e.obs[c][:-1] for e in eps]) for c in ("wrist", "scene")}
    w = ChunkWindows(eps, ["wrist", "scene"], chunk=2, lang=[np.zeros(1)] * 2)
    images = w.batch(np.arange(len(w)))["images"].numpy()
    assert images.shape[:2] == (len(w), 2)
    np.testing.assert_array_equal(images[:, 0], want["wrist"])
    np.testing.assert_array_equal(images[:, 1], want["scene"])


def test_windows_statistics_are_over_the_selected_frames():
    eps = [fake_episode("kettle", 5, seed=1), fake_episode("kettle", 3, seed=2)]
    stats = ChunkWindows(eps, [], chunk=2, lang=[np.zeros(1)] * 2).stats()
    actions = np.concatenate([e.actions for e in eps])
    np.testing.assert_allclose(stats["action_mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["proprio_std"], np.concatenate([e.obs["proprio"][:-1] for e in eps]).std(0),
                               rtol=1e-5)


# --- which demonstrations ---------------------------------------------------------------------------

def test_selection_takes_successful_originals_and_keeps_validation_apart(tmp_path):
    root = write_fake_dataset(tmp_path / "d", {"kettle": 5, "microwave": 4}, augment=2, failures={"kettle": [1]})
    train, val = select_files(root, Selection(demos_per_task=4, augmentations=1, val_fraction=0.25))
    names = sorted(f"{p.parent.name}/{p.name}" for p in train)
    # kettle: 00001 failed, so originals 0, 2, 3, 4; the last one is validation; a1 copies only.
    assert names == ["kettle/00000-a1.npz", "kettle/00000.npz", "kettle/00002-a1.npz", "kettle/00002.npz",
                     "kettle/00003-a1.npz", "kettle/00003.npz",
                     "microwave/00000-a1.npz", "microwave/00000.npz", "microwave/00001-a1.npz", "microwave/00001.npz",
                     "microwave/00002-a1.npz", "microwave/00002.npz"]
    assert sorted(f"{p.parent.name}/{p.name}" for p in val) == ["kettle/00004.npz", "microwave/00003.npz"]


@pytest.mark.parametrize("sel, needle", [
    (Selection(demos_per_task=9), "has 4 usable demonstrations"),
    (Selection(demos_per_task=2, augmentations=3), "no augmentation a1"),
    (Selection(demos_per_task=2, tasks=["kettle", "oven"]), "no episodes of oven"),
])
def test_selection_errors_name_the_problem(tmp_path, sel, needle):
    root = write_fake_dataset(tmp_path / "d", {"kettle": 4})
    with pytest.raises(DatasetError, match=needle):
        select_files(root, sel)


def test_load_windows_checks_the_cameras(tmp_path):
    root = write_fake_dataset(tmp_path / "d", {"kettle": 2})
    train, _ = select_files(root, Selection(demos_per_task=2, val_fraction=0))
    spec = read_manifest(root)["spec"]
    w = load_windows(train, spec, ["wrist", "scene"], 3, lambda instruction, task: np.array([len(instruction)]))
    assert w.images.shape[1] == 2 and w.lang[0].item() == len("do the kettle")
    with pytest.raises(DatasetError, match="no images from camera"):
        load_windows(train, spec, ["top"], 3, lambda i, t: np.zeros(1))


# --- image augmentation -----------------------------------------------------------------------------

def test_random_shift_moves_whole_images_by_at_most_pad_pixels():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(3, 2, 3, 12, 12)
    img[..., 5, 7] = 1.0  # one bright pixel
    out = random_shift(img, 2, g)
    assert out.shape == img.shape
    for b in range(3):
        for c in range(2):
            ys, xs = torch.nonzero(out[b, c, 0], as_tuple=True)
            assert len(ys) == 1 and abs(int(ys[0]) - 5) <= 2 and abs(int(xs[0]) - 7) <= 2
            assert torch.equal(out[b, c, 0], out[b, c, 1])  # channels shift together
    assert not all(torch.equal(out[b, 0], out[0, 0]) for b in range(3))  # offsets differ per image


def test_color_jitter_stays_in_range_and_changes_colours():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(4, 2, 3, 8, 8, generator=g)
    out = color_jitter(img, 0.3, 0.3, 0.3, g)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert (out - img).abs().mean() > 0.01
    assert torch.equal(augment_images(img, 0, 0, 0, 0), img)


# --- success statistics -----------------------------------------------------------------------------

def test_wilson_interval_matches_hand_values():
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and abs(hi - 0.1611) < 1e-3
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_success_report_averages_tasks_equally():
    r = SuccessReport(level="L1", episodes={"a": [True] * 4, "b": [False, True]}, lengths={"a": [5] * 4, "b": [9, 9]})
    assert r.mean_success == pytest.approx(0.75)
    d = r.to_dict()
    assert d["tasks"]["b"]["success_rate"] == 0.5 and d["episodes"] == 6 and d["level"] == "L1"
    assert r.lines()[-1].split()[:2] == ["overall", "75.0%"]


class _ExpertPolicy(Policy):
    """The scripted experts behind the policy interface evaluation drives (an expert per task, copied per slot)."""

    meta = None

    def __init__(self):
        self.experts: dict[str, object] = {}
        self.fresh = True

    def reset(self) -> None:
        self.fresh = True

    def act(self, obs):
        from agents.builders import make_env
        from envs.kitchen.experts import make_expert

        task = task_of(obs["instruction"])
        if task not in self.experts:
            env = make_env({"name": "kitchen", "id": "embodied/Kitchen-v0", "task": task, "cameras": []})
            self.experts[task] = make_expert(env)
        if self.fresh:
            self.fresh = False
            self.experts[task].reset()
        return self.experts[task].act(obs)


def test_batched_evaluation_runs_the_same_episodes_as_one_at_a_time():
    """Slots refill as episodes end; each episode keeps its own seed, env and controller state."""
    from agents.kitchen_eval import evaluate_success

    env_cfg = {"name": "kitchen", "id": "embodied/Kitchen-v0", "cameras": [], "steps_per_task": 120}
    tasks = ["light_switch", "slide_cabinet"]
    one = evaluate_success(env_cfg, tasks, 3, level="L1", policy=_ExpertPolicy())
    side_by_side = evaluate_success(env_cfg, tasks, 3, level="L1", policy=_ExpertPolicy(), batch=2)
    assert side_by_side.episodes == one.episodes and side_by_side.lengths == one.lengths
    assert sum(map(sum, one.episodes.values())) >= 4  # the experts succeed: the episodes are real ones
    assert len(set(one.lengths["light_switch"] + one.lengths["slide_cabinet"])) > 1  # and not all alike


@pytest.mark.parametrize("cameras", [(), ("scene",)], ids=["state_only", "images"])
def test_evaluation_renders_only_for_a_policy_that_reads_images(cameras, monkeypatch):
    """The policy's env (its bundle's ``env``) shows what it reads: no camera is rendered for a state-only one."""
    import mujoco

    from agents.kitchen_eval import evaluate_success
    from policies.mtact import MTACT, MTACTConfig, observation_description
    from policies.mtact_inference import MTACTPolicy

    env_cfg = {"name": "kitchen", "id": "embodied/Kitchen-v0", "cameras": list(cameras), "image_size": 32,
               "steps_per_task": 3, "object_state": not cameras}
    config = MTACTConfig(cameras=cameras, image_size=32, proprio_dim=8, object_dim=17, action_dim=8, chunk=2,
                         hidden=16, heads=2, ffn=16, enc_layers=1, dec_layers=1, cvae_layers=1, latent=2,
                         backbone_width=4, language="onehot", lang_dim=1)
    torch.manual_seed(0)
    meta = PolicyMeta(kind="mtact", config=config.to_dict(), env=env_cfg, observation=observation_description(config),
                      action_low=[-1] * 8, action_high=[1] * 8, extra={"tasks": ["light_switch"]})
    policy = MTACTPolicy(MTACT(config), meta)
    renderers = []
    real = mujoco.Renderer
    monkeypatch.setattr(mujoco, "Renderer", lambda *a, **k: renderers.append(1) or real(*a, **k))
    report = evaluate_success(env_cfg, ["light_switch"], 2, policy=policy, batch=2)
    assert report.lengths["light_switch"] == [3, 3]
    assert len(renderers) == (2 if cameras else 0)  # one per env for the image policy; none without images


# --- the CLI ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_dataset(tmp_path_factory) -> Path:
    return write_fake_dataset(tmp_path_factory.mktemp("bc") / "data", {"light_switch": 2, "microwave": 2})


@pytest.fixture(scope="module")
def bc_run(fake_dataset, tmp_path_factory):
    """A tiny MT-ACT trained for 6 steps through the CLI, with one closed-loop check per task."""
    import subprocess
    import sys

    from conftest import cli_env

    run = tmp_path_factory.mktemp("bc") / "run"
    result = subprocess.run([sys.executable, "-m", "agents.train", "env=kitchen", "policy=mtact", "algo=bc",
                             f"dataset={fake_dataset}", "algo.total_steps=6", "algo.eval_every=3",
                             "algo.eval_episodes=1", "algo.final_eval_episodes=1", f"hydra.run.dir={run}", *TINY_MTACT],
                            cwd=run.parent, env=cli_env(), capture_output=True, text=True, timeout=600)
    return run, result


def test_bc_cli_trains_checkpoints_and_reports(bc_run):
    run, result = bc_run
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert re.search(r"success_rate=\S+ val_l1=\S+ steps=6 params=\d+", last), last
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "steps" and set(summary["success_per_task"]) == {"light_switch", "microwave"}
    assert RunDir(run).has_policy("final") and RunDir(run).resumable() is not None
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_l1" in rows[0] and "eval_success_microwave" in rows[0]
    assert (run / "training_curve.png").is_file()
    log = result.stdout + result.stderr  # step 3 evaluates in closed loop; step 6 leaves it to the final evaluation
    assert re.search(r"step 3: .*\| success \d\.\d\d \(", log) and "step 6: " in log, log[-3000:]
    assert "success nan" not in log and re.search(r"step 6: .*\| no closed-loop evaluation \(", log), log[-3000:]
    assert "training stopped at step 6 of 6: algo.total_steps reached" in log  # and why


def test_bc_resumes_from_the_last_checkpoint(bc_run, fake_dataset, tmp_path, run_cli):
    import shutil

    run, result = bc_run
    assert result.returncode == 0
    copy = tmp_path / "resumed"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "final")
    (copy / "summary.json").unlink()  # as if it had stopped before the end
    resumed = run_cli("agents.train", "env=kitchen", "policy=mtact", "algo=bc", f"dataset={fake_dataset}",
                      "algo.total_steps=9", "algo.eval_every=3", "algo.eval_episodes=1", "algo.final_eval_episodes=1",
                      f"hydra.run.dir={copy}", *TINY_MTACT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr and "steps=9" in resumed.stdout.splitlines()[-1]
    steps = [line.split(",")[0] for line in (copy / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["3", "6", "9"]


def test_evaluate_prints_success_per_task_with_intervals(bc_run, run_cli, tmp_path):
    run, result = bc_run
    assert result.returncode == 0
    out = run_cli("agents.evaluate", f"run={run}", "episodes=1", "level=L2", "tasks=[light_switch]")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("level L2") and "light_switch" in lines[1]
    assert re.fullmatch(r"success_rate=\S+ ci95_low=\S+ ci95_high=\S+ episodes=1 level=L2", lines[-1]), lines[-1]


@pytest.mark.parametrize("args, needle", [
    (["algo=bc"], "needs dataset="),
    (["algo=ppo", "dataset=x"], "trained by algo=bc"),
    (["algo=bc", "dataset=/nonexistent"], "is not a dataset"),
    (["algo=bc", "algo.demos_per_task=5"], "usable demonstrations"),
    (["algo=bc", "dataset=x", "algo.precision=fp16"], "'algo.precision' must be one of fp32, bf16, got 'fp16'"),
])
def test_bc_bad_input_is_one_line(fake_dataset, run_cli, tmp_path, args, needle):
    args = [a.replace("dataset=x", f"dataset={fake_dataset}") for a in args]
    if args == ["algo=bc", "algo.demos_per_task=5"]:
        args.append(f"dataset={fake_dataset}")
    result = run_cli("agents.train", "env=kitchen", "policy=mtact", *args)
    assert_one_line_error(result, needle)


def test_evaluate_untrained_mtact_is_one_line(run_cli):
    assert_one_line_error(run_cli("agents.evaluate", "env=kitchen", "policy=mtact"), "train one")
