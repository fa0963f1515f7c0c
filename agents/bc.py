"""``algo=bc``: behaviour cloning of an action-chunking policy (MT-ACT) from a demonstration dataset.

``python -m agents.train env=kitchen policy=mtact algo=bc dataset=<dir>``

- Samples: chunk windows over the selected demonstrations (``agents/bc_data.py``), images
  augmented by random shift and colour jitter (``agents/image_augment.py``).
- Optimiser: AdamW, weight decay 1e-4 and gradient clipping at 10 as ACT/RoboAgent; their
  learning rate (1e-5 for 2000 epochs on a GPU) is far too slow for a CPU budget of a couple of
  hours, so the default is 1e-4 with a linear warm-up and a cosine decay, and the backbone has
  its own rate (``algo.backbone_learning_rate``). ``algo.precision=bf16`` runs the forward pass
  under CPU bfloat16 autocast (weights, gradients and AdamW stay fp32); its speed and closed-loop
  success against fp32 are in ``benchmarks/results/kitchen_mtact.md``.
- Every ``eval_every`` steps: the validation L1 (held-out demonstrations, no augmentation, z = 0)
  and closed-loop success on every task (``eval_episodes`` each, L0), a deployable checkpoint
  ``checkpoints/last`` with the trainer's state beside it; ``metrics.csv`` and the loggers get
  the row. SIGTERM or SIGINT saves ``last`` and stops; rerunning the same command with
  ``hydra.run.dir=<this run>`` resumes from ``last``.
- The end: the ``final`` checkpoint and a final closed-loop evaluation (``final_eval_episodes``).
"""

from __future__ import annotations

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

from agents.bc_data import Selection, load_windows, select_files
from agents.builders import make_env
from agents.dataset import DatasetError, read_manifest
from agents.errors import UserError
from agents.image_augment import augment_images
from agents.kitchen_eval import SuccessReport, evaluate_success
from agents.resources import require
from agents.schema import MAX_STEPS, check, setting
from agents.trainer import GradientTrainer
from policies.atomic import atomic_write
from policies.bundle import save_bundle
from policies.mtact import MTACT, MTACTConfig, observation_description
from policies.mtact_inference import SCHEDULES, LanguageVectors
from policies.protocol import PolicyMeta
from policies.run_dir import FINAL, LAST, RunDir

log = logging.getLogger(__name__)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
CURVE_FILE = "training_curve.png"


def check_precision(precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise UserError(f"algo.precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def autocast(precision: str):
    """The context the training forward pass runs in: plain fp32, or CPU autocast to bfloat16."""
    dtype = check_precision(precision)
    return torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)


def policy_options(algo: DictConfig) -> dict:
    """How the trained chunks are executed in closed loop (also written into the checkpoint)."""
    return {"schedule": str(algo.schedule), "ensemble_m": float(algo.ensemble_m),
            "execute_steps": int(algo.execute_steps)}


def model_config(cfg: DictConfig, manifest: dict, tasks: list[str]) -> MTACTConfig:
    """The policy's YAML switches plus what the dataset dictates (cameras, sizes, language width)."""
    switches = OmegaConf.to_container(cfg.policy.actor, resolve=True)
    spec = manifest["spec"]
    cameras = [] if cfg.policy.get("state_only", False) else list(manifest["cameras"])
    if not cameras and not cfg.policy.get("state_only", False):
        raise UserError(f"dataset {cfg.dataset} has no camera images; use policy.state_only=true")
    image_size = spec[f"obs/{cameras[0]}"]["shape"][0] if cameras else manifest["env"].get("image_size", 96)
    lang_dim = 384 if switches.get("language", "minilm") == "minilm" else len(tasks)
    try:
        return MTACTConfig.from_dict({
            **switches, "cameras": tuple(cameras), "image_size": int(image_size),
            "proprio_dim": spec["obs/proprio"]["shape"][0], "object_dim": spec["obs/object_state"]["shape"][0],
            "action_dim": spec["actions"]["shape"][0], "lang_dim": lang_dim,
        })
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"bad policy config: {e}") from None


@dataclass
class BCSettings:
    """The keys of ``algo=bc`` (configs/algo/bc.yaml says what each is for)."""

    name: str = "bc"
    total_steps: int = setting(20_000, low=1, high=MAX_STEPS)  # gradient steps
    time_budget_s: float = setting(0.0, low=0.0)  # stop once training took this long; 0: no limit
    batch_size: int = setting(64, low=1, high=65_536)  # chunk windows per gradient step
    learning_rate: float = setting(1e-4, low=0.0)
    backbone_learning_rate: float = setting(1e-4, low=0.0)
    weight_decay: float = setting(1e-4, low=0.0)
    warmup_steps: int = setting(500, low=0)
    lr_schedule: str = setting("cosine", choices=("cosine", "constant"))
    max_grad_norm: float = setting(10.0, above=0.0)
    precision: str = setting("fp32", choices=tuple(PRECISIONS))
    demos_per_task: int = setting(50, low=1)
    augmentations: int = setting(0, low=0)
    val_fraction: float = setting(0.1, low=0.0, high=0.9)
    successful_only: bool = True
    tasks: list[str] | None = None
    image_shift: int = setting(4, low=0, high=64)  # px
    color_jitter: float = setting(0.2, low=0.0, high=1.0)
    schedule: str = setting("ensemble", choices=SCHEDULES)
    ensemble_m: float = setting(0.01, low=0.0)
    execute_steps: int = setting(20, low=1)
    eval_every: int = setting(2000, low=1)
    eval_episodes: int = setting(2, low=0)
    final_eval_episodes: int = setting(10, low=0)
    eval_workers: int = setting(2, low=1, high=256)
    eval_batch: int = setting(8, low=1, high=256)
    log_every: int = setting(100, low=0)


ACTIVATIONS_PER_INPUT = 40  # the backbone's activations kept for the backward pass, per input float (ResNet-18)


def memory_estimate(manifest: dict, config: MTACTConfig, episodes: int, batch_size: int) -> dict[str, float]:
    """Bytes of the demonstrations held in memory (their frames, at the longest an episode can be) and of a
    training batch's images with the backbone's activations."""
    spec = manifest["spec"]
    frames = int(manifest["env"].get("steps_per_task", 200)) + 1
    keys = [f"obs/{c}" for c in config.cameras] + ["obs/proprio", "obs/object_state", "actions"]
    per_frame = sum(np.prod(spec[k]["shape"]) * np.dtype(spec[k]["dtype"]).itemsize for k in keys if k in spec)
    image = len(config.cameras) * 3 * config.image_size ** 2 * 4  # float32, channels first
    return {"the dataset (algo.demos_per_task)": episodes * frames * per_frame,
            "algo.batch_size": batch_size * (image * (1 + ACTIVATIONS_PER_INPUT) + config.chunk * config.action_dim * 4)}


class BCTrainer(GradientTrainer):
    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        check(cfg.algo, BCSettings, "algo")
        if not cfg.get("dataset"):
            raise UserError("algo=bc needs dataset=<directory> (collect one with python -m agents.collect)")

    def __init__(self, cfg: DictConfig, run: RunDir, loggers: list):
        super().__init__(cfg, run, loggers)
        algo = cfg.algo
        root = Path(str(cfg.dataset)).expanduser()
        try:
            manifest = read_manifest(root)
            if cfg.env.name != manifest["env"].get("name"):
                raise UserError(f"dataset {root} was collected on env {manifest['env'].get('name')!r}, "
                                f"not {cfg.env.name!r}")
            sel = Selection(int(algo.demos_per_task), int(algo.augmentations), float(algo.val_fraction),
                            bool(algo.successful_only), list(algo.tasks) if algo.get("tasks") else None)
            train_files, val_files = select_files(root, sel)
            self.tasks = sorted({f.parent.name for f in train_files})
            self.config = model_config(cfg, manifest, self.tasks)
            language = LanguageVectors(self.config.language, self.tasks)
            require(memory_estimate(manifest, self.config, len(train_files) + len(val_files), int(algo.batch_size)))
            started = time.time()
            self.train_data = load_windows(train_files, manifest["spec"], list(self.config.cameras),
                                           self.config.chunk, language)
            self.val_data = (load_windows(val_files, manifest["spec"], list(self.config.cameras), self.config.chunk,
                                          language) if val_files else None)
        except DatasetError as e:
            raise UserError(str(e)) from None
        log.info("dataset %s: %d train episodes (%d frames), %d validation episodes, loaded in %.0f s", root,
                 len(train_files), len(self.train_data), len(val_files), time.time() - started)
        self.dataset_root = root
        # The policy's env is the one the demonstrations came from, showing what the model reads:
        # its cameras, and the object state only for the state-only variant.
        self.env_cfg = {**manifest["env"], "cameras": list(self.config.cameras), "object_state": not self.config.cameras}
        env = make_env({**self.env_cfg, "cameras": []})  # no renderer: only the action bounds are wanted
        self.action_low, self.action_high = env.action_space.low.tolist(), env.action_space.high.tolist()
        self.control_dt = float(env.unwrapped.dt)
        env.close()
        self.n_train_episodes, self.n_val_episodes = len(train_files), len(val_files)
        torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(int(cfg.seed))
        self.rng = np.random.default_rng(int(cfg.seed))
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self.model = MTACT(self.config)
        self.model.set_normalization(self.train_data.stats())
        backbone = [p for n, p in self.model.named_parameters() if n.startswith("backbone.")]
        rest = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.")]
        groups = [{"params": rest, "lr": float(algo.learning_rate)}]
        if backbone:
            groups.append({"params": backbone, "lr": float(algo.backbone_learning_rate)})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=float(algo.weight_decay))
        total, warmup = int(algo.total_steps), int(algo.warmup_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress)) if algo.lr_schedule == "cosine" else 1.0

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.step = 0
        self.train_s = 0.0

    # --- pieces -----------------------------------------------------------------------------
    def inputs(self, batch: dict, augment: bool) -> dict:
        images = batch.get("images")
        if images is not None:
            images = images.permute(0, 1, 4, 2, 3).float().div_(255.0)
            if augment:
                a = self.cfg.algo
                images = augment_images(images, int(a.image_shift), float(a.color_jitter), float(a.color_jitter),
                                        float(a.color_jitter), self.generator)
        return {"images": images, "proprio": batch["proprio"], "object_state": batch["object_state"],
                "lang": batch["lang"], "actions": batch["actions"], "pad": batch["pad"]}

    def validation_l1(self, max_frames: int = 4096) -> float:
        if self.val_data is None:
            return math.nan
        frames = np.linspace(0, len(self.val_data) - 1, min(max_frames, len(self.val_data))).astype(int)
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(frames), 256):
                x = self.inputs(self.val_data.batch(frames[i:i + 256]), augment=False)
                pred, _, _ = self.model(x["images"], x["proprio"], x["object_state"], x["lang"])  # normalised, z = 0
                err = (pred - self.model.normalize_actions(x["actions"])).abs().mean(-1)
                keep = ~x["pad"]
                total += float(err[keep].sum())
                count += int(keep.sum())
        self.model.train()
        return total / max(count, 1)

    def meta(self) -> PolicyMeta:
        return PolicyMeta(kind=str(self.cfg.policy.kind), config=self.config.to_dict(), env=self.env_cfg,
                          observation=observation_description(self.config), action_low=self.action_low,
                          action_high=self.action_high, control_dt=self.control_dt, steps=self.step,
                          extra={"tasks": self.tasks, "dataset": str(self.dataset_root),
                                 "inference": policy_options(self.cfg.algo)})

    def write_bundle(self, directory: Path) -> None:
        save_bundle(directory, self.meta(), self.model.state_dict())

    def extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}  # the image augmentation's torch generator

    def restore_extra(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def closed_loop(self, policy_dir: Path, episodes: int) -> SuccessReport:
        return evaluate_success(self.env_cfg, self.tasks, episodes, level="L0", seed=int(self.cfg.seed),
                                policy_dir=policy_dir, workers=int(self.cfg.algo.eval_workers),
                                batch=int(self.cfg.algo.eval_batch))

    def record(self, losses: dict, episodes: int) -> dict:
        started = time.time()
        val = self.validation_l1()
        policy_dir = self.save_checkpoint(LAST, self.write_bundle, self.state())
        report = self.closed_loop(policy_dir, episodes) if episodes > 0 else None
        row = {
            "steps": self.step,
            "train_s": round(self.train_s, 1),
            "lr": self.scheduler.get_last_lr()[0],
            **{f"train_{k}": v for k, v in losses.items()},
            "val_l1": val,
            "eval_success": report.mean_success if report else math.nan,
            **{f"eval_success_{t}": (report.rate(t) if report else math.nan) for t in self.tasks},
            "eval_s": round(time.time() - started, 1),
        }
        self.metrics.append(row)
        for logger in self.loggers:
            logger.log_metrics(row, self.step)
        # The last step has no closed-loop evaluation here: the final one, with more episodes, follows.
        success = f"success {report.mean_success:.2f}" if report else "no closed-loop evaluation"
        log.info("step %d: loss %.4f l1 %.4f kl %.4f | val l1 %.4f | %s (%.0f s of evaluation)", self.step,
                 losses.get("loss", math.nan), losses.get("l1", math.nan), losses.get("kl", math.nan), val,
                 success, row["eval_s"])
        return row

    # --- the loop ---------------------------------------------------------------------------
    def learn(self) -> dict:
        algo = self.cfg.algo
        total, batch_size = int(algo.total_steps), int(algo.batch_size)
        eval_every, log_every = int(algo.eval_every), int(algo.log_every)
        budget = float(algo.time_budget_s)
        params = self.model.parameter_count()
        resumed = self.try_resume()
        log.info("training mtact (%d parameters) on %d tasks, %d steps of batch %d%s", params, len(self.tasks), total,
                 batch_size, f", resuming at {self.step}" if resumed else "")
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        stopped_by = "steps"
        bar = tqdm(total=total, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (sys.stderr.isatty() and bool(self.cfg.progress_bar)))
        with self.stop, bar:
            while self.step < total:
                if self.stop.requested:
                    raise self.stopped(self.step, self.write_bundle, self.state())
                if budget and self.train_s >= budget:
                    stopped_by = "time_budget_s"
                    log.warning("algo.time_budget_s=%g reached at step %d of %d: stopping there", budget, self.step, total)
                    break
                t0 = time.time()
                x = self.inputs(self.train_data.sample(batch_size, self.rng), augment=True)
                with autocast(str(algo.precision)):
                    losses = self.model.loss(**x)
                self.apply(losses["loss"], float(algo.max_grad_norm))
                self.train_s += time.time() - t0
                values = {k: float(v.detach()) for k, v in losses.items()}
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
                if not np.isfinite(values["loss"]):
                    raise UserError(f"the loss became {values['loss']} at step {self.step}; lower algo.learning_rate")
                if self.step % eval_every == 0 or self.step == total:
                    self.record({k: v / n for k, v in sums.items()},
                                int(algo.eval_episodes) if self.step < total else 0)
                    sums, n = {}, 0
                elif log_every and self.step % log_every == 0:
                    log.info("step %d: loss %.4f (%.0f ms/step)", self.step, sums["loss"] / n,
                             1e3 * self.train_s / self.step)
        if n:
            self.record({k: v / n for k, v in sums.items()}, 0)
        log.info("training stopped at step %d of %d: %s", self.step, total,
                 "the time budget (algo.time_budget_s) ran out" if stopped_by == "time_budget_s"
                 else "algo.total_steps reached")
        final_dir = self.save_checkpoint(FINAL, self.write_bundle)
        report = evaluate_success(self.env_cfg, self.tasks, int(algo.final_eval_episodes), level="L0",
                                  seed=int(self.cfg.seed), policy_dir=final_dir, workers=int(algo.eval_workers),
                                  batch=int(algo.eval_batch))
        for line in report.lines():
            log.info(line)
        self.plot()
        lo, hi = report.interval()
        return {
            "success_rate": report.mean_success,
            "success_ci95": [lo, hi],
            "success_per_task": {t: report.rate(t) for t in self.tasks},
            "eval_episodes_per_task": int(algo.final_eval_episodes),
            "val_l1": self.validation_l1(),
            "steps": self.step,
            "stopped_by": stopped_by,
            "params": params,
            "train_time_s": round(self.train_s, 1),
            "ms_per_step": round(1e3 * self.train_s / max(self.step, 1), 1),
            "train_episodes": self.n_train_episodes,
            "train_frames": len(self.train_data),
            "env": self.cfg.env.name,
            "policy": self.cfg.policy.kind,
            "algo": "bc",
            "seed": int(self.cfg.seed),
        }

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.run.metrics_rows()
        if not rows:
            return
        steps = [r["steps"] for r in rows]
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
        a.plot(steps, [r.get("train_l1", math.nan) for r in rows], label="train L1 (augmented)")
        a.plot(steps, [r["val_l1"] for r in rows], label="validation L1")
        a.set_yscale("log")
        a.set_xlabel("gradient steps")
        a.legend(fontsize=8)
        b.plot(steps, [r["eval_success"] for r in rows], marker="o")
        b.set_ylim(-0.02, 1.02)
        b.set_xlabel("gradient steps")
        b.set_ylabel("closed-loop success (L0)")
        for ax in (a, b):
            ax.grid(alpha=0.3)
        fig.suptitle(f"{self.cfg.policy.kind} + bc on {self.cfg.env.name} (seed {self.cfg.seed})")
        fig.tight_layout()
        atomic_write(self.run.path / CURVE_FILE, lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)
