"""``algo=scaffold``, ``algo=specialize`` and ``algo=joint``: the spatial brain's supervised stages (ACE-Brain-0's
SSR 1-2, and the joint baseline).

``python -m agents.train policy=spatial_brain algo=scaffold``
``python -m agents.train policy=spatial_brain algo=specialize env=uav_find init_from=<scaffold run>``
``python -m agents.train policy=spatial_brain algo=joint [algo.envs=[uav_find,swimmer_find]] [init_from=<scaffold>]``

- Scaffold: spatial question answering on generic arenas and on every embodiment's find scenes
  (``algo.qa_sources``); the env group is not used.
- Specialize: from the scaffold's final weights, behaviour cloning of the expert's goal (the named
  landmark's goal point, as the offset the goal head emits) on the env's embodiment, at the
  decision points of the expert's own flights, mixed batch by batch with that embodiment's QA
  (``algo.qa_weight``); from scratch when ``init_from`` is null (the baseline without a scaffold).
- Joint: the specialist's recipe on every env of ``algo.envs`` at once (one find task per embodiment, each
  batch one task's, drawn uniformly), the baseline a merge of specialists is measured against. A
  specialist started from another specialist (sequential fine-tuning) keeps a record of the
  embodiments that one had trained (``meta.extra["embodiments"]``), so it can be evaluated on them all.
- Data: QA datasets (``agents/qa_data.py``) and goal demonstrations are generated from the
  simulators on first use into ``algo.data_dir``, keyed by what made them, so the stages and seeds
  of one benchmark share them, and reruns reuse them.
- Loss: cross-entropy over the answer vocabulary; the goal Gaussian's negative log-likelihood.
  AdamW with a linear warm-up and a cosine decay. Batches hold one embodiment each (their
  proprioception differs in length), drawn in proportion to the data.
- Every ``eval_every`` steps: QA accuracy on held-out question templates and, when specialising,
  closed-loop success over ``eval_episodes`` episodes; ``checkpoints/last`` with the trainer state
  (SIGTERM or SIGINT saves it and stops; rerunning with ``hydra.run.dir=<run>`` resumes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from agents.builders import make_env
from agents.dataset import DatasetError
from agents.errors import UserError
from agents.overrides import CONFIG_DIR
from agents.qa_data import EnvSource, QADataset, collect_qa, load_qa
from agents.rollout import EVAL_SEED_BASE, run_episodes
from agents.schema import MAX_STEPS, check, setting
from agents.trainer import GradientTrainer
from envs.spatial_qa import ANSWERS
from policies import registry
from policies.atomic import atomic_write
from policies.brain_policy import (
    EMBODIMENT_OF_ENV,
    BrainPolicy,
    brain_batch,
    brain_follower,
    decision_schedule,
    embodiment_of,
    follower_for,
    trained_envs,
)
from policies.bundle import BundleError, read_bundle, save_bundle
from policies.language import token_states
from policies.protocol import EnvInterface, PolicyError, PolicyMeta
from policies.run_dir import FINAL, LAST, RunDir
from policies.spatial_brain import PointingHead, SpatialBrainConfig, default_embodiments

log = logging.getLogger(__name__)

START_VIEW_SEEDS = 20_000  # start views: seeds s * 100_000 + 20_000 + i, between the flights' and the validation's
VALIDATION_SEED_BASE = 90_000  # validation flights: above every seed's demonstration seeds' range below
VALIDATION_EPISODES = 10_000  # ... and below the next seed's (seed s flies s * 100_000 + episode)

SCAFFOLD_SOURCES_BEFORE = ("generic", "uav")  # what scaffold bundles asked about before they recorded it
FIND_ENVS = ("uav_find", "swimmer_find", "kitchen_point")  # the find envs' config names (configs/env), one per body
QA_SEEDS = {"seen": 0, "held_out": 1}  # one fixed QA set per source and split: every stage, seed and evaluation share it

# A QA source name -> the env that draws its scenes (None: the generic arenas) and the embodiment it feeds
QA_SOURCES = {"generic": (None, "generic"), "uav": ("embodied/UAVFind-v0", "uav"),
              "swimmer": ("embodied/SwimmerFind-v0", "swimmer"), "kitchen": ("embodied/KitchenPoint-v0", "kitchen")}


@dataclass
class BrainSettings:
    """The algo group of ``algo=scaffold``, ``algo=specialize`` and ``algo=joint``."""

    name: str = "scaffold"
    total_steps: int = setting(3000, low=1, high=MAX_STEPS)  # gradient steps
    batch_size: int = setting(64, low=1, high=65536)
    learning_rate: float = setting(3e-4, above=0.0, high=1.0)
    weight_decay: float = setting(1e-4, low=0.0, high=1.0)
    warmup_steps: int = setting(100, low=0, high=MAX_STEPS)
    max_grad_norm: float = setting(1.0, above=0.0)
    qa_sources: list[str] = setting(factory=lambda: list(QA_SOURCES))  # scaffold: where QA scenes come from
    qa_scenes: int = setting(4000, low=1, high=10**7)  # scenes per QA source (8 questions each)
    qa_eval_scenes: int = setting(200, low=1, high=10**6)  # scenes per source for held-out-template accuracy
    qa_weight: float = setting(1.0, low=0.0)  # specialize: weight of the QA loss beside the goal loss
    demos: int = setting(400, low=1, high=EVAL_SEED_BASE)  # specialize: expert episodes (seeds below the eval seeds)
    decide_every: int | None = setting(None, low=1, high=10**6)  # control steps between decisions; None: the body's
    decisions: int | None = setting(None, low=1, high=1000)  # decisions per episode, then the goal is held; None: idem
    goal_noise: float = setting(0.0, low=0.0, high=100.0)  # m, std of the noise on the goal the expert flies to (DART)
    val_demos: int = setting(50, low=0, high=VALIDATION_EPISODES)  # specialize: held-out expert flights for val_goal_err
    start_views: int = setting(0, low=0, high=VALIDATION_SEED_BASE - START_VIEW_SEEDS)  # specialize: extra scenes seen
    # from the start pose only (one reset and one image each, no flight): cheap variety for grounding
    data_dir: str = "data/brain"  # where generated QA data and demonstrations are cached (shared by runs)
    eval_every: int = setting(1000, low=1, high=MAX_STEPS)
    eval_episodes: int = setting(20, low=0, high=10**6)  # specialize: closed-loop episodes per evaluation
    final_eval_episodes: int = setting(100, low=0, high=10**6)
    log_every: int = setting(100, low=0, high=MAX_STEPS)
    # joint: the find envs (configs/env/<name>.yaml, one per embodiment) whose goals one model learns together
    envs: list[str] = setting(factory=lambda: list(FIND_ENVS))


@dataclass
class FindTask:
    """One find env a run learns goals in: its config, the body acting there, when it decides, the expert data."""

    env_cfg: dict
    embodiment: str
    schedule: tuple[int, int]  # (decide_every, decisions)
    demos: dict | None = None
    val_demos: dict | None = None


def find_env_config(name: str) -> dict:
    """The env config ``configs/env/<name>.yaml`` of a find env (joint training names several)."""
    path = CONFIG_DIR / "env" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"algo.envs: unknown env {name!r} (choose from: {', '.join(FIND_ENVS)})")
    env_cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    try:
        embodiment_of(env_cfg.get("id", ""))
    except PolicyError as e:
        raise UserError(f"algo.envs: {name}: {e}") from None
    return env_cfg


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def qa_dataset(data_dir: Path, source: str, scenes: int, split: str, seed: int | None = None) -> QADataset:
    """The QA dataset of one source, generated on first use (resumable, validated on load); seeded by the split."""
    seed = QA_SEEDS[split] if seed is None else seed
    from envs.generic_scene import GenericSceneSampler

    env_id, _ = QA_SOURCES[source]
    root = data_dir / f"qa_{source}_{split}_{scenes}_{_key(source=source, split=split, scenes=scenes, seed=seed)}"
    sampler = GenericSceneSampler(seed=seed) if env_id is None else EnvSource(env_id, warmup_steps=20)
    try:
        if not (root / "manifest.json").is_file() or len(load_qa(root).sample) < scenes:
            log.info("generating %d %s QA scenes (%s templates) into %s", scenes, source, split, root)
            collect_qa([sampler], root, scenes, seed=seed, split=split)
        return load_qa(root)
    except DatasetError as e:
        raise UserError(str(e)) from None
    finally:
        if hasattr(sampler, "close"):
            sampler.close()


def qa_batch(config: SpatialBrainConfig, source: str, data: QADataset, rows: np.ndarray) -> tuple[dict, torch.Tensor]:
    """A brain batch of the questions ``rows`` of one source's dataset, and their answers."""
    embodiment = QA_SOURCES[source][1]
    scenes = data.scene[rows]
    p = config.embodiments[embodiment]["proprio_dim"]
    text, mask = token_states(list(data.question[rows]), config.max_text_tokens)
    depth = np.where(data.has_depth[scenes, None, None], data.depth[scenes].astype(np.float32), np.nan)
    batch = {"embodiment": embodiment, "image": torch.as_tensor(data.image[scenes]),
             "depth": torch.as_tensor(depth), "proprio": torch.as_tensor(data.state[scenes, :p]),
             "text": torch.as_tensor(text), "text_mask": torch.as_tensor(mask)}
    return batch, torch.as_tensor(data.answer[rows].astype(np.int64))


@torch.inference_mode()
def qa_accuracy(model, source: str, data: QADataset, limit: int = 2000) -> float:
    """The brain's accuracy on (the first ``limit``) questions of one source's dataset."""
    rows = np.arange(min(len(data), limit))
    correct = 0
    for lo in range(0, len(rows), 256):
        batch, answer = qa_batch(model.config, source, data, rows[lo:lo + 256])
        correct += int((model.qa_logits(batch).argmax(-1) == answer).sum())
    return correct / max(len(rows), 1)


# decision: its index in the episode; target_mask: the camera pixels that show the named object (the env's geom map)
DEMO_KEYS = ("image", "depth", "state", "instruction", "goal_world", "decision", "target_mask")


def goal_demonstrations(data_dir: Path, env_cfg: dict, episodes: int, decide_every: int, decisions: int,
                        seed: int, goal_noise: float = 0.0, first_seed: int | None = None) -> dict[str, np.ndarray]:
    """Observations at the brain's decision points along the expert's flights, with the true goal (world).

    The expert is the goal follower itself; each decision point's label is the true goal, which
    :func:`goal_labels` puts in the frame a brain's goal head speaks. With ``goal_noise`` the expert flies, between decision
    points, to the true goal plus fresh Gaussian noise of that std (m): DART-style noise injection
    (Laskey et al., 2017), so the later decision points see the off-course states the brain's own
    imperfect goals lead to, still labelled with the true goal. Episode ``i`` is seeded
    ``first_seed + i`` (default ``seed * 100_000``).
    """
    first_seed = seed * 100_000 if first_seed is None else int(first_seed)
    key = _key(env=env_cfg, episodes=episodes, every=decide_every, decisions=decisions, seed=seed,
               **({"noise": goal_noise} if goal_noise else {}),
               **({"first": first_seed} if first_seed != seed * 100_000 else {}))
    path = data_dir / f"goals_{env_cfg['name']}_{episodes}_{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
            if set(data) == set(DEMO_KEYS):
                return data
            log.warning("regenerating %s: it holds %s, not %s", path, sorted(data), sorted(DEMO_KEYS))
        except (OSError, ValueError) as e:
            log.warning("regenerating %s: %s", path, e)
    embodiment = embodiment_of(env_cfg["id"])
    follower = follower_for(embodiment, env_cfg, "native")  # the expert: it only flies and clips, in world frame
    env = make_env(env_cfg)
    rows: dict[str, list] = {k: [] for k in DEMO_KEYS}
    noise = np.random.default_rng(first_seed)
    try:
        for episode in tqdm(range(episodes), desc="expert goals", disable=not sys.stderr.isatty()):
            obs, info = env.reset(seed=first_seed + episode)
            follower.reset()
            for step in range(decide_every * (decisions - 1) + 1):
                if step % decide_every == 0:
                    for k in ("image", "depth", "state", "instruction"):
                        rows[k].append(obs[k])
                    rows["goal_world"].append(np.asarray(info["goal"], np.float64))
                    rows["decision"].append(step // decide_every)
                    rows["target_mask"].append(target_mask(env, info["target"]))
                    goal = np.asarray(info["goal"], np.float64)
                    flown = follower.clip(goal + goal_noise * noise.standard_normal(goal.shape))
                obs, _, terminated, truncated, info = env.step(follower.act(obs, flown))
                if terminated or truncated:
                    break
    finally:
        env.close()
    data = {"image": np.stack(rows["image"]).astype(np.uint8), "depth": np.stack(rows["depth"]).astype(np.float32),
            "state": np.stack(rows["state"]).astype(np.float32), "instruction": np.array(rows["instruction"]),
            "goal_world": np.stack(rows["goal_world"]).astype(np.float64), "decision": np.array(rows["decision"], np.int64),
            "target_mask": np.stack(rows["target_mask"]).astype(bool)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: _save_npz(tmp, data))
    return data


def target_mask(env, target: str) -> np.ndarray:
    """The pixels of the env's last camera frame that see the object named ``target`` (bool H x W)."""
    unwrapped = env.unwrapped
    ids = next((o.geom_ids for o in unwrapped.scene().objects if o.name == target), ())
    return np.isin(unwrapped.frame.geom, np.asarray(ids, dtype=np.int64))


def goal_labels(demos: dict[str, np.ndarray], follower) -> np.ndarray:
    """Each decision point's true goal in the frame of ``follower`` (the brain's goal frame): float32 (N, G)."""
    return np.stack([follower.label({"state": state}, goal)
                     for state, goal in zip(demos["state"], demos["goal_world"], strict=True)]).astype(np.float32)


def pointing_target(mask: np.ndarray, patch: torch.Tensor, grid: int) -> torch.Tensor:
    """Where a pointing head should point, a distribution over the patches (B, grid^2): in proportion to
    the named object's pixels in each patch (its segmentation from the env's camera); where the object
    is out of view, the patch the goal projects into; all zeros where neither is in view."""
    b, h, w = mask.shape
    share = torch.as_tensor(mask, dtype=torch.float32).reshape(b, grid, h // grid, grid, w // grid).mean((2, 4))
    share = share.reshape(b, grid * grid)
    total = share.sum(-1, keepdim=True)
    fallback = torch.nn.functional.one_hot(patch.clamp_min(0), grid * grid).float() * (patch >= 0)[:, None]
    return torch.where(total > 0, share / total.clamp_min(1e-12), fallback)


def pointing_losses(logits: torch.Tensor, points: torch.Tensor, goal: torch.Tensor,
                    target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dense supervision of a pointing head (``target`` from :func:`pointing_target`): cross-entropy of its
    pointing against the target distribution, and the squared error (m^2) of the goal proposed by the
    patches it should point at. The goal's likelihood alone trains the pointing only through the
    attention-weighted mean, slowly when the attention starts spread over every patch, and never says
    which pixels are the named object: a referring-segmentation signal for free from the simulator."""
    seen = target.sum(-1) > 0
    if not bool(seen.any()):
        return {"point_ce": logits.sum() * 0.0, "point_l2": logits.sum() * 0.0}
    t = target[seen]
    ce = -(t * torch.log_softmax(logits[seen], -1)).sum(-1).mean()
    l2 = (t * ((points[seen] - goal[seen, None]) ** 2).sum(-1)).sum(-1).mean()
    return {"point_ce": ce, "point_l2": l2}


def _save_npz(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(f, **arrays)


class BrainTrainer(GradientTrainer):
    """Both supervised stages; ``algo.name`` says which."""

    Settings = BrainSettings

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        check(cfg.algo, BrainSettings, "algo")
        unknown = sorted(set(cfg.algo.qa_sources) - set(QA_SOURCES))
        if unknown:
            raise UserError(f"algo.qa_sources: unknown {', '.join(unknown)} (have {', '.join(QA_SOURCES)})")
        if cfg.algo.name == "specialize":
            try:
                embodiment_of(cfg.env.id)
            except PolicyError as e:
                raise UserError(f"algo=specialize needs a find env (env=uav_find): {e}") from None
        if cfg.algo.name == "joint":
            bodies = [embodiment_of(find_env_config(name)["id"]) for name in cfg.algo.envs]
            if not bodies or len(set(bodies)) != len(bodies):
                raise UserError(f"algo.envs: one find env per embodiment, got {list(cfg.algo.envs)}")

    def __init__(self, cfg: DictConfig, run: RunDir, loggers: list):
        super().__init__(cfg, run, loggers)
        algo = cfg.algo
        torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(int(cfg.seed))
        self.rng = np.random.default_rng(int(cfg.seed))
        self.env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
        self.data_dir = Path(str(algo.data_dir))
        env_cfgs = {"specialize": lambda: [self.env_cfg], "joint": lambda: [find_env_config(n) for n in algo.envs]}
        self.tasks = [self.find_task(c) for c in env_cfgs.get(str(algo.name), list)()]  # none: the scaffold
        self.inherited: dict[str, dict] = {}  # embodiment -> env config the init_from run had trained goals for
        self.config = self.model_config(cfg)
        try:
            self.model = registry.build_module("spatial_brain", self.config.to_dict())
        except PolicyError as e:
            raise UserError(str(e)) from None
        if cfg.get("init_from"):
            self.start_from(str(cfg.init_from))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(algo.learning_rate),
                                           weight_decay=float(algo.weight_decay))
        total, warmup = int(algo.total_steps), int(algo.warmup_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.step, self.train_s = 0, 0.0
        self.load_data()

    # --- model and data -------------------------------------------------------------------------
    def find_task(self, env_cfg: dict) -> FindTask:
        embodiment = embodiment_of(env_cfg["id"])
        every, decisions = decision_schedule(None, embodiment)
        algo = self.cfg.algo
        return FindTask(env_cfg, embodiment, (int(algo.decide_every or every), int(algo.decisions or decisions)))

    def model_config(self, cfg: DictConfig) -> SpatialBrainConfig:
        switches = OmegaConf.to_container(cfg.policy.actor, resolve=True) or {}
        embodiments = default_embodiments()
        embodiments.update(switches.pop("embodiments", None) or {})
        try:
            return SpatialBrainConfig.from_dict({**switches, "n_answers": len(ANSWERS), "embodiments": embodiments})
        except (TypeError, ValueError) as e:
            raise UserError(f"bad policy.actor: {e}") from None

    def start_from(self, source: str) -> None:
        """The scaffold's final weights (or any brain run's): same sizes, any algo."""
        try:
            bundle = read_bundle(RunDir(source).policy(FINAL))
            if bundle.meta.kind != "spatial_brain":
                raise UserError(f"init_from={source}: a {bundle.meta.kind} run, not a spatial brain")
            tensors = dict(bundle.tensors)
            self.inherited = trained_envs(bundle.meta)
            if bundle.meta.extra.get("stage") == "scaffold":
                # A scaffold trains the shared parts, and the proprio projectors and embodiment tokens of the
                # bodies it asked questions about; never a goal head. Everything it did not train is this
                # run's own, freshly initialised (whatever kind of head or proprio size its config asks for).
                trained = {QA_SOURCES[s][1] for s in bundle.meta.extra.get("qa_sources") or SCAFFOLD_SOURCES_BEFORE}
                own = self.model.state_dict()
                untrained = [k for k in own if k.startswith("heads.")
                             or (self.model.owner_of(k) is not None and self.model.owner_of(k) not in trained)]
                tensors = {k: v for k, v in tensors.items() if k not in untrained and not k.startswith("heads.")}
                tensors.update({k: own[k] for k in untrained})
            self.model.load_state_dict(tensors)
        except (BundleError, PolicyError, FileNotFoundError) as e:
            raise UserError(f"init_from={source}: {e}") from None
        except RuntimeError as e:
            raise UserError(f"init_from={source}: its sizes differ from policy.actor "
                            f"({' '.join(str(e).split())[:160]})") from None
        log.info("initialised from %s", source)

    def load_data(self) -> None:
        algo, seed = self.cfg.algo, int(self.cfg.seed)
        sources = [t.embodiment for t in self.tasks] if self.tasks else list(algo.qa_sources)
        self.qa = {s: qa_dataset(self.data_dir, s, int(algo.qa_scenes), "seen") for s in sources}
        self.qa_eval = {s: qa_dataset(self.data_dir, s, int(algo.qa_eval_scenes), "held_out") for s in sources}
        if not self.tasks and not self.cfg.get("init_from"):  # a goal learner standardises by its demos below
            for source, data in self.qa.items():
                embodiment = QA_SOURCES[source][1]
                states = data.state[:, :self.config.embodiments[embodiment]["proprio_dim"]]
                self.model.set_proprio_normalization(embodiment, states.mean(0), states.std(0))
        for task in self.tasks:
            every, decisions = task.schedule
            task.demos = goal_demonstrations(self.data_dir, task.env_cfg, int(algo.demos), every, decisions, seed,
                                             float(algo.goal_noise))
            if int(algo.start_views):
                views = goal_demonstrations(self.data_dir, task.env_cfg, int(algo.start_views), every, 1, seed,
                                            first_seed=seed * 100_000 + START_VIEW_SEEDS)
                task.demos = {k: np.concatenate([task.demos[k], views[k]]) for k in DEMO_KEYS}
            if int(algo.val_demos):  # noise-free episodes on seeds no run trains or is evaluated on
                task.val_demos = goal_demonstrations(self.data_dir, task.env_cfg, int(algo.val_demos), every,
                                                     decisions, seed, first_seed=VALIDATION_SEED_BASE)
            follower = brain_follower(self.model, task.embodiment, task.env_cfg)
            for demos in (task.demos, task.val_demos):
                if demos is not None:
                    demos["goal"] = goal_labels(demos, follower)
            if not self.cfg.get("init_from"):
                self.model.set_proprio_normalization(task.embodiment, task.demos["state"].mean(0),
                                                     task.demos["state"].std(0))
        log.info("data: %s QA questions%s", ", ".join(f"{k} {len(v)}" for k, v in self.qa.items()),
                 "".join(f", {t.embodiment} {len(t.demos['goal'])} goal samples" for t in self.tasks))

    def qa_batch(self, source: str, rows: np.ndarray, data: QADataset | None = None) -> tuple[dict, torch.Tensor]:
        return qa_batch(self.config, source, data if data is not None else self.qa[source], rows)

    def goal_batch(self, task: FindTask, rows: np.ndarray, demos: dict | None = None) -> tuple[dict, torch.Tensor]:
        d = task.demos if demos is None else demos
        obs = [{"image": d["image"][i], "depth": d["depth"][i], "state": d["state"][i],
                "instruction": str(d["instruction"][i])} for i in rows]
        return brain_batch(task.embodiment, obs, self.config.max_text_tokens), torch.as_tensor(d["goal"][rows])

    def losses(self) -> dict[str, torch.Tensor]:
        """One batch's losses: a goal batch of one find task (drawn uniformly where there are several) and its
        embodiment's QA batch, or (the scaffold) a QA batch of one source."""
        b = int(self.cfg.algo.batch_size)
        out: dict[str, torch.Tensor] = {}
        if self.tasks:
            task = self.tasks[int(self.rng.integers(len(self.tasks)))] if len(self.tasks) > 1 else self.tasks[0]
            rows = self.rng.integers(len(task.demos["goal"]), size=b)
            batch, goal = self.goal_batch(task, rows)
            if isinstance(self.model.heads[task.embodiment], PointingHead):
                dist, logits, points, head = self.model.pointing(batch)
                target = pointing_target(task.demos["target_mask"][rows], head.patch_of(goal), head.grid)
                out.update(pointing_losses(logits, points, goal, target))
            else:
                dist = self.model.goal_distribution(batch)
            out["goal_nll"] = -dist.log_prob(goal).sum(-1).mean()
            out["goal_err"] = (dist.mean - goal).norm(dim=-1).mean().detach()
            source = task.embodiment
        else:
            sizes = np.array([len(self.qa[s]) for s in self.qa], dtype=np.float64)
            source = list(self.qa)[self.rng.choice(len(sizes), p=sizes / sizes.sum())]
        if not self.tasks or float(self.cfg.algo.qa_weight) > 0:
            batch, answer = self.qa_batch(source, self.rng.integers(len(self.qa[source]), size=b))
            out["qa_ce"] = torch.nn.functional.cross_entropy(self.model.qa_logits(batch), answer)
        out["loss"] = out.get("goal_nll", 0.0) + out.get("point_ce", 0.0) + out.get("point_l2", 0.0) + float(self.cfg.algo.qa_weight if self.tasks else 1.0) * out.get(
            "qa_ce", torch.zeros(()))
        return out

    # --- evaluation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def qa_accuracy(self, which: str = "held_out") -> dict[str, float]:
        """Accuracy per source on the held-out templates (``which="held_out"``) or on training questions."""
        self.model.eval()
        result = {source: qa_accuracy(self.model, source, self.qa_eval[source] if which == "held_out" else data)
                  for source, data in self.qa.items()}
        self.model.train()
        return result

    @torch.inference_mode()
    def val_goal_error(self) -> dict[str, float]:
        """Mean goal error (m) on the validation episodes, overall and per decision point (0 = the start);
        with several find tasks, each key is prefixed by the embodiment."""
        self.model.eval()
        out = {}
        for task in self.tasks:
            if task.val_demos is None:
                continue
            errors = []
            n = len(task.val_demos["goal"])
            for lo in range(0, n, 256):
                batch, goal = self.goal_batch(task, np.arange(lo, min(n, lo + 256)), task.val_demos)
                errors.append((self.model.goal_distribution(batch).mean - goal).norm(dim=-1))
            err, decision = torch.cat(errors).numpy(), task.val_demos["decision"]
            prefix = self.prefix(task)
            out.update({f"{prefix}val_goal_err": float(err.mean()),
                        **{f"{prefix}val_goal_err_{k}": float(err[decision == k].mean()) for k in np.unique(decision)}})
        self.model.train()
        return out

    def prefix(self, task: FindTask) -> str:
        """How a find task's metrics are named: bare for a specialist's one, by the embodiment for a joint run's."""
        return "" if len(self.tasks) == 1 else f"{task.embodiment}_"

    def closed_loop(self, task: FindTask, episodes: int, held_out: bool = False) -> dict[str, float]:
        """Success of the brain steering its controller on evaluation seeds (seen or held-out wordings)."""
        if episodes <= 0:
            return {}
        self.model.eval()
        policy = BrainPolicy(self.model, self.meta(), brain_follower(self.model, task.embodiment, task.env_cfg),
                             task.embodiment, *task.schedule)
        env_cfg = task.env_cfg
        env = make_env({**env_cfg, "held_out": held_out, "paraphrase": None} if held_out else env_cfg)
        try:
            result = run_episodes(env, policy, episodes, seed=EVAL_SEED_BASE)
        finally:
            env.close()
            self.model.train()
        metrics = result.metric_means()
        return {"success": float(metrics.get("is_success", math.nan)),
                "distance_to_goal": float(metrics.get("distance_to_goal", math.nan))}

    # --- checkpoints ----------------------------------------------------------------------------
    def acting_task(self) -> FindTask:
        """Where the bundle acts as deployed: the run's (first) find task, else (a scaffold) the first find env
        it asked about, so every stage deploys alike (a scaffold with its untrained goal head)."""
        if self.tasks:
            return self.tasks[0]
        if self.env_cfg["id"] in EMBODIMENT_OF_ENV:
            return self.find_task(self.env_cfg)
        source = next((s for s in self.cfg.algo.qa_sources if QA_SOURCES[s][0] is not None), "uav")
        env_id = QA_SOURCES[source][0]
        return self.find_task({"name": next(n for n in FIND_ENVS
                                            if find_env_config(n)["id"] == env_id), "id": env_id})

    def meta(self) -> PolicyMeta:
        task = self.acting_task()
        env = make_env(task.env_cfg)
        try:
            interface = EnvInterface.of(env)
        finally:
            env.close()
        extra = {"stage": str(self.cfg.algo.name), "embodiment": task.embodiment,
                 "decide_every": task.schedule[0], "decisions": task.schedule[1],
                 "answers": list(ANSWERS), "init_from": self.cfg.get("init_from"),
                 "qa_sources": [t.embodiment for t in self.tasks] if self.tasks else list(self.cfg.algo.qa_sources)}
        if self.tasks:  # every embodiment with a trained goal head: this run's, and what init_from had trained
            extra["embodiments"] = {**self.inherited, **{t.embodiment: t.env_cfg for t in self.tasks}}
            if len(self.tasks) > 1:
                extra["experts"] = [{"embodiment": t.embodiment, "decide_every": t.schedule[0],
                                     "decisions": t.schedule[1]} for t in self.tasks]
        return PolicyMeta.for_env("spatial_brain", self.config.to_dict(), task.env_cfg, interface, steps=self.step,
                                  extra=extra)

    def write_bundle(self, directory: Path) -> None:
        save_bundle(directory, self._meta, self.model.state_dict())

    def record(self, losses: dict, episodes: int) -> dict:
        started = time.time()
        self.save_checkpoint(LAST, self.write_bundle, self.state())
        qa = self.qa_accuracy()
        val = self.val_goal_error()
        loops = {self.prefix(t): self.closed_loop(t, episodes) for t in self.tasks} or {"": {}}
        row = {"steps": self.step, "train_s": round(self.train_s, 1), "lr": self.scheduler.get_last_lr()[0],
               **{f"train_{k}": v for k, v in losses.items()},
               **{f"qa_heldout_{k}": v for k, v in qa.items()}, **val,
               **{f"{p}eval_success": loop.get("success", math.nan) for p, loop in loops.items()},
               "eval_s": round(time.time() - started, 1)}
        self.metrics.append(row)
        for logger in self.loggers:
            logger.log_metrics(row, self.step)
        goal_errors = " ".join(f"{k.removesuffix('val_goal_err') or ''}{v:.3f} m" for k, v in val.items()
                               if k.endswith("val_goal_err"))
        log.info("step %d: loss %.4f | held-out QA %s |%s success %s", self.step, losses.get("loss", math.nan),
                 " ".join(f"{k} {v:.3f}" for k, v in qa.items()),
                 f" val goal error {goal_errors} |" if val else "",
                 " ".join(f"{p}{loop['success']:.2f}" for p, loop in loops.items() if loop) or "-")
        return row

    # --- the loop -------------------------------------------------------------------------------
    def learn(self) -> dict:
        algo = self.cfg.algo
        total, eval_every, log_every = int(algo.total_steps), int(algo.eval_every), int(algo.log_every)
        self._meta = self.meta()
        resumed = self.try_resume()
        log.info("%s: spatial brain (%d parameters), %d steps of batch %d%s", algo.name,
                 self.model.parameter_count(), total, int(algo.batch_size),
                 f", resuming at {self.step}" if resumed else "")
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(total=total, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (sys.stderr.isatty() and bool(self.cfg.progress_bar)))
        with self.stop, bar:
            while self.step < total:
                if self.stop.requested:
                    self._meta.steps = self.step
                    raise self.stopped(self.step, self.write_bundle, self.state())
                t0 = time.time()
                losses = self.losses()
                self.apply(losses["loss"], float(algo.max_grad_norm))
                self.train_s += time.time() - t0
                values = {k: float(v.detach()) for k, v in losses.items()}
                if not np.isfinite(values["loss"]):
                    raise UserError(f"the loss became {values['loss']} at step {self.step}; lower algo.learning_rate")
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                bar.update(1)
                self._meta.steps = self.step
                if self.step % eval_every == 0 and self.step < total:
                    self.record({k: v / n for k, v in sums.items()}, int(algo.eval_episodes))
                    sums, n = {}, 0
                elif log_every and self.step % log_every == 0:
                    log.info("step %d: loss %.4f (%.0f ms/step)", self.step, sums["loss"] / n,
                             1e3 * self.train_s / self.step)
        if n:
            self.record({k: v / n for k, v in sums.items()}, 0)
        self.save_checkpoint(FINAL, self.write_bundle)
        seen, held_out = self.qa_accuracy("seen"), self.qa_accuracy("held_out")
        episodes = int(algo.final_eval_episodes)
        per_env = {}
        for task in self.tasks:
            loop, held = self.closed_loop(task, episodes), self.closed_loop(task, episodes, held_out=True)
            per_env[task.env_cfg["name"]] = {
                "success_rate": loop.get("success"), "distance_to_goal": loop.get("distance_to_goal"),
                "success_rate_held_out_wordings": held.get("success"), "train_goal_samples": len(task.demos["goal"])}
        summary = {
            "qa_seen": seen, "qa_held_out": held_out,
            "qa_held_out_mean": float(np.mean(list(held_out.values()))),
            "steps": self.step, "params": self.model.parameter_count(), "train_time_s": round(self.train_s, 1),
            "ms_per_step": round(1e3 * self.train_s / max(self.step, 1), 1),
            "env": ",".join(per_env) or None, "policy": "spatial_brain",
            "algo": str(algo.name), "seed": int(self.cfg.seed), "init_from": self.cfg.get("init_from"),
        }
        if per_env:  # one env: its numbers; several: each env's, and their means
            only = next(iter(per_env.values())) if len(per_env) == 1 else None
            keys = next(iter(per_env.values()))
            summary.update(only or {k: _mean_or_none([e[k] for e in per_env.values()]) for k in keys})
            summary["eval_episodes"] = episodes
            if len(per_env) > 1:
                summary["per_env"] = per_env
        return summary


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None
