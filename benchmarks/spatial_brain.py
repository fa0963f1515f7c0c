"""The spatial brain's Scaffold -> Specialize -> Reconcile -> GRPO recipe against its baselines, at CPU scale;
regenerates benchmarks/results/spatial_brain.{md,json,png}.

    python benchmarks/spatial_brain.py [--seeds 0,1] [--embodiments uav,swimmer,kitchen] [--budgets 200,2000]
        [--views 10] [--steps 1000] [--scaffold-steps 2000] [--episodes 100] [--qa-scenes 3000] [--jobs 2]
        [--merges avg,task_arithmetic,ties,wudi] [--grpo-env uav_find] [--grpo-steps 200000]
        [--only train|table|latency]

Rows (each a normal run directory made by the project's CLIs, cached in benchmarks/.work/spatial_brain/<row>_seed<s>):

- ``scaffold``: ``algo=scaffold``, spatial QA on the generic arenas and every body's find scenes;
- ``scratch_<e>_<D>`` / ``ssr_<e>_<D>``: ``algo=specialize`` on embodiment e's find env with D expert episodes
  (DART noise 0.5 m) and ``--views`` x D start views, from random weights / from the scaffold; the
  budgets are the small and the full one;
- ``joint``: ``algo=joint`` on every embodiment's env at the full budget, from the scaffold;
- ``sequential``: the full-budget SSR expert of the first embodiment, fine-tuned on the second, then the third;
- ``merge_<m>``: ``agents.merge method=<m> base=<scaffold> experts=<the full-budget SSR experts>``;
- ``merge_wudi_grpo``: ``algo=grpo init_from=<merge_wudi>`` on ``--grpo-env`` (the other bodies ride along).

Columns per embodiment: accuracy on held-out question templates (200 scenes), closed-loop success on
seen and on held-out wordings (``--episodes`` episodes, seeds 10,000 + i: ``agents.evaluate``'s, the same
for every row), then the means over the embodiments and each row's change of those means against the
isolated experts (the full-budget SSR rows): ACE-Brain-0's forgetting table. A row is measured on the
embodiments it has a trained goal head for; a specialist's own numbers come from its run's final
evaluation (the same seeds), every other body's from ``agents.evaluate``, cached in the run directory.

Cells run ``--jobs`` at a time, each on one torch thread; the results file is rewritten after every
finished row, so an interrupted benchmark resumes where it stopped (a half-trained cell resumes from
its last checkpoint).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, mean_std, write_json_atomic  # noqa: E402
from policies.run_dir import RunDir  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "spatial_brain"
RESULTS = ROOT / "benchmarks" / "results"
ENV_OF = {"uav": "uav_find", "swimmer": "swimmer_find", "kitchen": "kitchen_point"}
DART_NOISE = 0.5  # m, std of the noise on the goal the expert follows between decision points while collecting


def run_cli(module: str, args: list[str], log: Path) -> str:
    """One project CLI as a subprocess, its output appended to ``log``; its stdout's last lines."""
    cmd = [sys.executable, "-m", module, *args]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def train(run: Path, args: list[str], log: Path) -> dict:
    """Train one cell (or finish it: a rerun resumes from its last checkpoint); its summary."""
    if not RunDir(run).finished:
        run_cli("agents.train", ["policy=spatial_brain", *args, f"hydra.run.dir={run}", "progress_bar=false",
                                 "threads=1"], log)
    return json.loads((run / "summary.json").read_text())


def merge(run: Path, method: str, base: Path, experts: list[Path], log: Path) -> dict:
    if not (run / "summary.json").is_file():
        run_cli("agents.merge", [f"method={method}", f"base={base}", f"experts=[{','.join(map(str, experts))}]",
                                 f"hydra.run.dir={run}"], log)
    return json.loads((run / "summary.json").read_text())


def trained_embodiments(run: Path) -> list[str]:
    from policies.brain_policy import trained_envs
    from policies.bundle import read_meta

    return list(trained_envs(read_meta(RunDir(run).policy())))


def measure(run: Path, embodiment: str, args: argparse.Namespace, log: Path) -> dict:
    """QA (held-out templates) and closed-loop success (seen, held-out wordings) of a brain run on one body;
    from the run's own final evaluation where it was trained there alone, else by agents.evaluate (cached)."""
    env = ENV_OF[embodiment]
    s = json.loads((run / "summary.json").read_text())
    if s.get("env") == env and s.get("success_rate") is not None:
        return {"qa": s["qa_held_out"].get(embodiment), "success": s["success_rate"],
                "held_out": s.get("success_rate_held_out_wordings")}
    cache = run / f"bench_{embodiment}_{args.episodes}.json"
    if cache.is_file():
        return json.loads(cache.read_text())

    def last_json(out: str) -> dict:
        return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))

    common = [f"run={run}", f"env={env}", "threads=1"]
    seen = last_json(run_cli("agents.evaluate", [*common, f"episodes={args.episodes}"], log))
    held = last_json(run_cli("agents.evaluate", [*common, f"episodes={args.episodes}", "env.held_out=true"], log))
    qa_line = run_cli("agents.evaluate", [*common, f"qa={embodiment}", f"qa_scenes={args.qa_eval_scenes}",
                                          f"data_dir={args.work / 'data'}"], log).strip().splitlines()[-1]
    qa = float(dict(f.split("=", 1) for f in qa_line.split())["qa_accuracy"])
    result = {"qa": qa, "success": seen.get("is_success"), "held_out": held.get("is_success")}
    write_json_atomic(cache, result)
    return result


# --------------------------------------------------------------------------------------------- the table


def cell(values, fmt="{:.2f}", signed=False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m = mean_std(values)
    f = fmt.replace("{:", "{:+") if signed else fmt
    return f.format(m["mean"]) + (f" ± {fmt.format(m['std'])}" if len(values) > 1 else "")


def with_means(cells: list[dict], embodiments: list[str]) -> list[dict]:
    """Each cell with its means over the embodiments and their change against the isolated experts' (same seed)."""
    full = max(int(b) for b in cells[0]["budgets"]) if cells else 0
    experts = {(c["seed"], e): c["by_body"].get(e, {}) for c in cells for e in embodiments
               if c["row"] == f"ssr_{e}_{full}"}
    out = []
    for c in cells:
        row = dict(c)
        for key in ("success", "qa"):
            values = [c["by_body"].get(e, {}).get(key) for e in embodiments]
            row[f"mean_{key}"] = (sum(values) / len(values)) if all(v is not None for v in values) else None
            ref = [experts.get((c["seed"], e), {}).get(key) for e in embodiments]
            row[f"delta_{key}"] = (row[f"mean_{key}"] - sum(ref) / len(ref)
                                   if row[f"mean_{key}"] is not None and all(r is not None for r in ref) else None)
        out.append(row)
    return out


def table(results: dict) -> str:
    embodiments = results["embodiments"]
    cells = with_means(results["cells"], embodiments)
    names = [r for r in results["rows"] if any(c["row"] == r for c in cells)]
    lines = [
        "# Spatial brain: Scaffold -> Specialize -> Reconcile -> GRPO against its baselines (CPU scale)",
        "",
        f"Generated by `python benchmarks/spatial_brain.py {results['args']}` on {results['date']}; machine: "
        f"{results['machine']['cpu']}, {results['machine']['cores']} cores (shared; load {results['load']}). "
        f"Seeds: {results['seeds']} (mean ± std over seeds). Per body: QA = accuracy on held-out question "
        f"templates (200 scenes, ~1,600 questions); seen / held-out = closed-loop success on seen / held-out "
        f"wordings, {results['episodes']} episodes each on seeds 10,000 + i, the same for every row. Means over "
        f"{', '.join(embodiments)}; delta = the row's mean minus the isolated experts' (ssr at the full budget), "
        "ACE-Brain-0's forgetting table. '-': not measured (no trained goal head for that body).",
        "",
        "| row | " + " | ".join(f"{e} QA | {e} seen | {e} held-out" for e in embodiments)
        + " | mean success | mean QA | delta success | delta QA | train s |",
        "|---|" + "---|" * (3 * len(embodiments) + 5),
    ]
    for name in names:
        rs = [c for c in cells if c["row"] == name]
        body = " | ".join(f"{cell(r['by_body'].get(e, {}).get('qa') for r in rs)} | "
                          f"{cell(r['by_body'].get(e, {}).get('success') for r in rs)} | "
                          f"{cell(r['by_body'].get(e, {}).get('held_out') for r in rs)}" for e in embodiments)
        lines.append(f"| {name} | {body} | {cell(r['mean_success'] for r in rs)} | {cell(r['mean_qa'] for r in rs)} | "
                     f"{cell((r['delta_success'] for r in rs), signed=True)} | "
                     f"{cell((r['delta_qa'] for r in rs), signed=True)} | "
                     f"{cell((r.get('train_time_s') for r in rs), '{:.0f}')} |")
    if results.get("latency"):
        lat = results["latency"]
        lines += ["", f"One brain query (batch 1, 32x32 RGB-D, cached instruction tokens, one torch thread, "
                  f"{lat['run']}): median {lat['median_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms over {lat['n']} "
                  f"queries (load {lat['load']}); a new instruction's MiniLM token states: {lat['new_text_ms']:.1f} ms "
                  "the first time, then cached."]
    lines += ["", "Commands: each row's run directory holds its resolved config.yaml; the cells' command lines are "
              "in spatial_brain.json.", "", *(f"- {note}" for note in results.get("notes", []))]
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    embodiments = results["embodiments"]
    cells = results["cells"]
    names = [r for r in results["rows"] if any(c["row"] == r for c in cells)]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 3.5))
    width = 0.8 / max(len(embodiments), 1)
    for k, e in enumerate(embodiments):
        means = [np.mean([v for c in cells if c["row"] == n
                          for v in [c["by_body"].get(e, {}).get("success")] if v is not None] or [np.nan])
                 for n in names]
        ax.bar(np.arange(len(names)) + k * width, means, width, label=e)
    ax.set_xticks(np.arange(len(names)) + width * (len(embodiments) - 1) / 2, names, rotation=45, ha="right")
    ax.set_ylabel("closed-loop success (seen wordings)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def latency(run: Path, n: int = 200) -> dict:
    """One query of a trained brain on one thread: goal offset from an observation (instruction tokens cached)."""
    import gymnasium as gym
    import numpy as np
    import torch

    import envs
    from policies.registry import load_policy

    torch.set_num_threads(1)
    policy = load_policy(RunDir(run).policy())
    env = gym.make(envs.UAV_FIND)
    obs, _ = env.reset(seed=0)
    env.close()
    for _ in range(20):  # loads MiniLM and caches this instruction's token states
        policy.goal_offset(obs)
    t0 = time.perf_counter()
    policy.goal_offset(dict(obs, instruction=obs["instruction"] + " now"))  # a sentence not seen before
    new_text = time.perf_counter() - t0
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        policy.goal_offset(obs)
        times.append(time.perf_counter() - t0)
    return {"run": run.name, "n": n, "median_ms": 1e3 * float(np.median(times)),
            "p90_ms": 1e3 * float(np.percentile(times, 90)), "new_text_ms": 1e3 * new_text,
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


# --------------------------------------------------------------------------------------------- the plan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--embodiments", default="uav,swimmer,kitchen")
    p.add_argument("--budgets", default="200,2000", help="expert episodes per specialist: the small and the full")
    p.add_argument("--views", type=int, default=10, help="start views per expert episode")
    p.add_argument("--steps", type=int, default=1000, help="gradient steps of a specialist (x bodies for joint)")
    p.add_argument("--scaffold-steps", type=int, default=2000)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--qa-scenes", type=int, default=3000)
    p.add_argument("--merges", default="avg,task_arithmetic,ties,wudi")
    p.add_argument("--grpo-env", default="uav_find", help="'' for no GRPO row")
    p.add_argument("--grpo-steps", type=int, default=200_000, help="GRPO control steps (algo.total_timesteps)")
    p.add_argument("--jobs", type=int, default=2, help="cells trained or evaluated at once (one thread each)")
    p.add_argument("--only", choices=["train", "latency", "table"], default=None,
                   help="one part (default: train); table: render the JSON again")
    p.add_argument("--qa-eval-scenes", type=int, default=200, help="held-out-template scenes asked per body")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the results are read and written")
    p.add_argument("--work", type=Path, default=WORK, help="where the cells' runs and the generated data live")
    p.add_argument("--train-args", default="", help="more agents.train overrides for the supervised cells")
    p.add_argument("--grpo-args", default="", help="more agents.train overrides for the GRPO cell")
    args = p.parse_args()
    work = args.work
    seeds = [int(s) for s in args.seeds.split(",")]
    bodies = [e for e in args.embodiments.split(",") if e]
    unknown = sorted(set(bodies) - set(ENV_OF))
    if unknown:
        p.error(f"unknown embodiment {', '.join(unknown)} (have {', '.join(ENV_OF)})")
    budgets = [int(b) for b in args.budgets.split(",")]
    full = max(budgets)
    merges = [m for m in args.merges.split(",") if m]
    out = args.out / "spatial_brain.json"
    rows = (["scaffold"] + [f"{kind}_{e}_{b}" for e in bodies for b in budgets for kind in ("scratch", "ssr")]
            + ["joint", "sequential"] + [f"merge_{m}" for m in merges]
            + (["merge_wudi_grpo"] if args.grpo_env and "wudi" in merges else []))
    if args.only == "table":
        results = json.loads(out.read_text())
        (args.out / "spatial_brain.md").write_text(table(results))
        figure(results, args.out / "spatial_brain.png")
        return
    if args.only == "latency":
        results = json.loads(out.read_text())
        results["latency"] = latency(work / f"ssr_{bodies[0]}_{full}_seed{seeds[0]}")
        write_json_atomic(out, results)
        (args.out / "spatial_brain.md").write_text(table(results))
        print(results["latency"])
        return

    work.mkdir(parents=True, exist_ok=True)
    recorded = json.loads(out.read_text()) if out.is_file() else {}
    if recorded.get("embodiments") != bodies:  # another plan's cells (e.g. the uav-only table before) are not mixed in
        recorded = {"notes": recorded.get("notes", []), "latency": recorded.get("latency")}
    rows = list(dict.fromkeys([*recorded.get("rows", []), *rows]))  # rows measured before (other settings) stay shown
    results = {**recorded, "args": " ".join(sys.argv[1:]), "seeds": seeds, "embodiments": bodies, "rows": rows,
               "episodes": args.episodes, "cells": recorded.get("cells", [])}
    lock = threading.Lock()
    data = [f"algo.data_dir={work / 'data'}", f"algo.qa_scenes={args.qa_scenes}",
            f"algo.qa_eval_scenes={args.qa_eval_scenes}", "algo.eval_every=500", "algo.eval_episodes=10",
            *args.train_args.split()]

    def budget(d: int) -> list[str]:
        return [f"algo.demos={d}", f"algo.start_views={args.views * d}", f"algo.goal_noise={DART_NOISE}"]

    def record(name: str, seed: int, run: Path, cmd: list[str]) -> None:
        log = work / f"seed{seed}.log"
        s = json.loads((run / "summary.json").read_text())
        by_body = {e: measure(run, e, args, log) for e in trained_embodiments(run) if e in bodies}
        if name == "scaffold":
            by_body = {e: {"qa": s["qa_held_out"].get(e)} for e in bodies}
        c = {"row": name, "seed": seed, "by_body": by_body, "train_time_s": s.get("train_time_s"),
             "steps": s.get("steps"), "budgets": budgets, "command": " ".join(cmd)}
        with lock:
            results["cells"] = [x for x in results["cells"] if (x["row"], x["seed"]) != (name, seed)] + [c]
            results.update(date=dt.date.today().isoformat(), machine=machine(),
                           load=" ".join(f"{x:.1f}" for x in os.getloadavg()))
            write_json_atomic(out, results)
            (args.out / "spatial_brain.md").write_text(table(results))
            figure(results, args.out / "spatial_brain.png")
        print(f"{name} seed {seed}: {by_body}", flush=True)

    pool = ThreadPoolExecutor(max_workers=args.jobs)
    futures: list[Future] = []

    def cell(name: str, seed: int, cmd: list[str], after: tuple[Future, ...] = (), kind: str = "train",
             merge_args: tuple = ()) -> Future:
        """A row's run, trained once its inputs are ready (submitted after them: the pool never deadlocks)."""
        run = work / f"{name}_seed{seed}"

        def job() -> Path:
            for f in after:
                f.result()
            log = work / f"seed{seed}.log"
            if kind == "merge":
                merge(run, *merge_args, log)
            else:
                train(run, [*cmd, f"seed={seed}"], log)
            if name in rows:
                record(name, seed, run, cmd)
            return run

        f = pool.submit(job)
        futures.append(f)
        return f

    for seed in seeds:
        scaffold_run = work / f"scaffold_seed{seed}"
        scaffold = cell("scaffold", seed, ["algo=scaffold", f"algo.total_steps={args.scaffold_steps}", *data])
        specialist = [f"algo.total_steps={args.steps}", f"algo.final_eval_episodes={args.episodes}", *data]
        experts = {}
        for e in bodies:
            for b in budgets:
                cell(f"scratch_{e}_{b}", seed, ["algo=specialize", f"env={ENV_OF[e]}", *budget(b), *specialist,
                                                "init_from=null"])
                experts[(e, b)] = cell(f"ssr_{e}_{b}", seed, ["algo=specialize", f"env={ENV_OF[e]}", *budget(b),
                                                              *specialist, f"init_from={scaffold_run}"], (scaffold,))
        cell("joint", seed, ["algo=joint", f"algo.envs=[{','.join(ENV_OF[e] for e in bodies)}]", *budget(full),
                             f"algo.total_steps={args.steps * len(bodies)}", f"algo.final_eval_episodes={args.episodes}",
                             *data, f"init_from={scaffold_run}"], (scaffold,))
        previous, before = experts[(bodies[0], full)], work / f"ssr_{bodies[0]}_{full}_seed{seed}"
        for k, e in enumerate(bodies[1:], 1):
            name = "sequential" if k == len(bodies) - 1 else f"sequential_{k}"
            previous = cell(name, seed, ["algo=specialize", f"env={ENV_OF[e]}", *budget(full), *specialist,
                                         f"init_from={before}"], (previous,))
            before = work / f"{name}_seed{seed}"
        full_experts = tuple(experts[(e, full)] for e in bodies)
        expert_runs = [work / f"ssr_{e}_{full}_seed{seed}" for e in bodies]
        merged = {m: cell(f"merge_{m}", seed, [f"agents.merge method={m}"], full_experts, kind="merge",
                          merge_args=(m, scaffold_run, expert_runs)) for m in merges}
        if "merge_wudi_grpo" in rows:
            cell("merge_wudi_grpo", seed, ["algo=grpo", f"env={args.grpo_env}", f"algo.total_timesteps={args.grpo_steps}",
                                           f"algo.final_eval_episodes={args.episodes}",
                                           f"algo.data_dir={work / 'data'}", f"algo.qa_eval_scenes={args.qa_eval_scenes}",
                                           *args.grpo_args.split(), f"init_from={work / f'merge_wudi_seed{seed}'}"],
                 (merged["wudi"],))
    failed = []
    for f in futures:
        try:
            f.result()
        except RuntimeError as e:  # one cell failing leaves the others' results standing
            failed.append(str(e))
    pool.shutdown()
    if failed:
        sys.exit("failed cells:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
