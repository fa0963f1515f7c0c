"""What a finished run reports: the one-line ``key=value`` summary, first crossings, the learning curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policies.atomic import atomic_write
from policies.run_dir import read_metrics

THRESHOLDS = (800, 850, 900, 950)  # returns whose first crossing the summary reports
CURVE_FILE = "learning_curve.png"


def summary_line(summary: dict[str, Any], keys: list[str]) -> str:
    """The one-line ``key=value`` summary every CLI ends with."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.2f}"
        return str(v)

    return " ".join(f"{k}={fmt(summary[k])}" for k in keys if k in summary)


def steps_to_reach(rows: list[dict], thresholds=THRESHOLDS) -> dict[str, int | None]:
    """The first evaluated step at which the return reached each threshold (None: never)."""
    out = {}
    for t in thresholds:
        out[str(t)] = next((int(r["steps"]) for r in rows if r["eval_return_mean"] >= t), None)
    return out


def plot_learning_curve(metrics_file: Path, out: Path, title: str,
                        references: dict[str, list[tuple[float, float]]] | None = None) -> Path:
    """Evaluation return against env steps, with optional reference curves (e.g. the MLP baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_file)
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
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color="C0",
                        alpha=0.2)
        train = [r.get("train_return_mean", float("nan")) for r in rows]
        ax.plot(steps, train, label="this run (training episodes, with exploration noise)", color="C0", ls=":",
                alpha=0.7)
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
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
