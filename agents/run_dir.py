"""The run directory: config, metrics, plots and summary, each written atomically."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from policies.checkpoint import atomic_write

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CURVE_FILE = "learning_curve.png"
THRESHOLDS = (800, 850, 900, 950)  # returns whose first crossing the summary reports
CHECKPOINTS = "checkpoints"
FINAL = "final"


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def summary_line(summary: dict[str, Any], keys: list[str]) -> str:
    """The one-line ``key=value`` summary every CLI ends with."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.2f}"
        return str(v)

    return " ".join(f"{k}={fmt(summary[k])}" for k in keys if k in summary)


class MetricsLog:
    """Append-only CSV whose columns are fixed by the first row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fields: list[str] | None = None

    def resume(self, up_to_steps: int) -> None:
        """Keep appending to an existing file (a resumed run) under its own header.

        Rows logged after the checkpoint the run resumes from are dropped: they are redone.
        """
        if not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        self.fields = rows[0]
        column = self.fields.index("steps")
        kept = [rows[0], *(r for r in rows[1:] if r and float(r[column]) <= up_to_steps)]
        if len(kept) < len(rows):
            text = "".join(",".join(r) + "\n" for r in kept)  # the values are numbers: no quoting needed
            atomic_write_text(self.path, text)

    def append(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
            f.flush()
            os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()} for row in csv.DictReader(f)]


def steps_to_reach(rows: list[dict], thresholds=THRESHOLDS) -> dict[str, int | None]:
    out = {}
    for t in thresholds:
        hit = next((int(r["steps"]) for r in rows if r["eval_return_mean"] >= t), None)
        out[str(t)] = hit
    return out


def checkpoint_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / CHECKPOINTS / name


def write_checkpoint(run_dir: Path, name: str, write) -> Path:
    """``write(tmp_dir)`` fills a temporary directory that then replaces ``checkpoints/<name>`` whole."""
    final = checkpoint_dir(run_dir, name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    publish_dir(tmp, final)
    return final


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temporary directory into place, replacing an older one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def plot_learning_curve(run_dir: Path, title: str, references: dict[str, list[tuple[float, float]]] | None = None) -> Path:
    """Evaluation return against env steps, with optional reference curves (e.g. the MLP baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir / METRICS_FILE)
    references = {k: v for k, v in (references or {}).items() if v}
    # Beside a longer reference run, a log axis keeps this run's early steps readable.
    floor = 1000 if references else 0

    def xs(values):
        return [max(v, floor) for v in values]

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    if rows:
        steps = xs([r["steps"] for r in rows])
        mean = [r["eval_return_mean"] for r in rows]
        std = [r["eval_return_std"] for r in rows]
        ax.plot(steps, mean, label="this run (deterministic eval)", color="C0")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color="C0", alpha=0.2)
        train = [r.get("train_return_mean", float("nan")) for r in rows]
        ax.plot(steps, train, label="this run (training episodes, with exploration noise)", color="C0", ls=":", alpha=0.7)
    for i, (label, curve) in enumerate(references.items()):
        x, y = zip(*curve)
        ax.plot(xs(x), y, label=label, color=f"C{i + 1}", ls="--")
    if references:
        ax.set_xscale("log")
    ax.set_xlabel("env steps (log)" if references else "env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / CURVE_FILE
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
