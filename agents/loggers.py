"""Experiment loggers chosen by ``logger=``: none, or wandb (offline unless an account is set up).

SB3's own training statistics reach wandb through a ``KVWriter`` added to SB3's logger: wandb's
``WandbCallback`` only forwards them through TensorBoard, which would be a heavy extra
dependency for the same numbers.
"""

from __future__ import annotations

import logging
import netrc
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.logger import KVWriter, Logger

from agents.errors import UserError
from agents.schema import setting

log = logging.getLogger(__name__)
KINDS = ("none", "wandb")


@dataclass
class LoggerSettings:
    """The keys of the ``logger`` group."""

    kind: str = setting("none", choices=KINDS)
    project: str = "embodied-stack"  # wandb project
    entity: str | None = None  # wandb entity (user or team); null: the account's default
    group: str | None = None  # wandb run group
    mode: str | None = setting(None, choices=(None, "online", "offline", "disabled"))  # null: decide from the setup


def wandb_mode(requested: str | None) -> str:
    """``online`` only when the user configured wandb (key or login); ``offline`` otherwise."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


class _WandbWriter(KVWriter):
    def __init__(self, run):
        self.run = run

    def write(self, key_values, key_excluded, step=0):
        numeric = {k: v for k, v in key_values.items() if isinstance(v, (int, float))}
        if numeric:
            self.run.log(numeric, step=step)

    def close(self):
        pass


class WandbLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        try:
            import wandb
        except ImportError:
            raise UserError("logger=wandb needs the wandb package (pip install wandb)") from None
        mode = wandb_mode(cfg.logger.mode)
        self.run = wandb.init(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            name=run_dir.name,
            group=cfg.logger.group,
            dir=str(run_dir),
            mode=mode,
            config=OmegaConf.to_container(cfg, resolve=True),
            reinit="finish_previous",
        )
        log.info("wandb run %s (%s mode)", self.run.id, mode)

    def attach(self, model) -> None:
        model.set_logger(Logger(folder=None, output_formats=[_WandbWriter(self.run)]))

    def log_metrics(self, row: dict, step: int) -> None:
        # eval_* are the deterministic evaluations; the rest (returns while exploring, GRPO's
        # frac_zero_spread, clip fractions, wall clock) describe training.
        self.run.log({f"{'eval' if k.startswith('eval_') else 'train'}/{k}": v for k, v in row.items() if k != "steps"},
                     step=step)

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish()


def make_loggers(cfg: DictConfig, run_dir: Path) -> list:
    kind = cfg.logger.kind
    if kind == "none":
        return []
    if kind == "wandb":
        return [WandbLogger(cfg, run_dir)]
    raise UserError(f"unknown logger {kind!r} (choose from: none, wandb)")
