"""MT-ACT and its baselines on the kitchen; regenerates benchmarks/results/kitchen_mtact.{md,json}.

    python benchmarks/kitchen_mtact.py [--variants mtact,bc_single,...] [--seeds 0,1] [--episodes 50]
                                       [--levels L0,L1,L2,L3] [--budget 7200] [--only train,eval,latency]

- train: each variant x seed through ``python -m agents.train env=kitchen algo=bc dataset=...``,
  ``--jobs`` at a time sharing the cores, stopped by ``--budget`` seconds of training (the
  issue's 2-hour limit by default) or its step count, whichever comes first;
- eval: ``python -m agents.evaluate run=<run> level=L episodes=N workers=W batch=B`` (``--eval-workers``,
  ``--eval-batch``) for every run and level (per-task success with Wilson 95% intervals; episode
  seeds 10000 + 1000 * task + i, the same for every variant);
- latency: one chunk query of the first image-based variant's run on one thread (median and p90 of 200), and the
  cost per 12.5 Hz control step with temporal ensembling (a query every step) and with
  executing 20 steps per chunk, and one query for B observations at once (evaluation's batching); and one
  training step of that network at fp32 and at bf16 autocast.

Variants (``mtact``, ``bc_single``, ``onehot``, ``no_aug`` and ``state_only`` on the same dataset, ``--dataset``,
collected by benchmarks/kitchen_experts.py; ``noisy_demos``, ``quirk``, ``demos10``, ``demos25`` and ``aug2``
on ``NOISY_DATASET``, the README's recipe, so the last four compare with ``noisy_demos``):
``mtact`` (images, MiniLM, CVAE, chunk 20, one semantic augmentation per demonstration),
``noisy_demos`` (mtact on demonstrations collected with Gaussian noise of std 0.02 on the expert's
actions, DART-style, so the data shows the arm off the nominal path and the way back; collected
here on first use, ``NOISY_DATASET``),
``bc_single`` (the same network predicting one action, no CVAE), ``onehot`` (task id instead of
language), ``no_aug`` (no semantic augmentation), ``state_only`` (object state instead of
images), ``quirk`` (the ACT decoder bug), ``demos10``/``demos25`` (fewer demonstrations per task),
``aug2`` (two semantic re-renderings per demonstration instead of one; the noisy collection gains
its second re-rendering on first use), ``bf16`` (mtact trained under bfloat16 autocast,
``algo.precision=bf16``: does the faster step lose success?).
Runs and evaluations are cached under benchmarks/.work/kitchen_mtact, so an interrupted
benchmark resumes where it stopped. The results file is the record: a run missing from the cache
keeps its recorded evaluations, and a run trained again replaces its old evaluations.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import Jobs, compose_cfg, machine, shown_path, summary, write_json_atomic  # noqa: E402
from policies.run_dir import RunDir  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "kitchen_mtact"
RESULTS = ROOT / "benchmarks" / "results"
DATASET = ROOT / "benchmarks" / ".work" / "kitchen" / "dataset_50"
NOISY_DATASET = ROOT / "benchmarks" / ".work" / "kitchen" / "dataset_50_noise02"
EXPERT_NOISE = 0.02  # rad (and gripper units); 2 failed expert attempts in 352 at this noise
# The network size, step count and warm-up come from configs/experiment/tuned/kitchen_mtact_bc.yaml
# (bc_single's tuned file takes it), so the benchmark measures what `agents.train` runs.
VARIANTS = {
    "mtact": ["policy=mtact", "algo.augmentations=1"],
    "noisy_demos": ["policy=mtact", "algo.augmentations=1"],
    "bc_single": ["policy=bc_single", "algo.augmentations=1"],
    "onehot": ["policy=mtact", "algo.augmentations=1", "policy.actor.language=onehot"],
    "no_aug": ["policy=mtact", "algo.augmentations=0"],
    "state_only": ["policy=mtact", "algo.augmentations=0", "policy.state_only=true"],
    "quirk": ["policy=mtact", "algo.augmentations=1", "policy.actor.decoder_quirk=true"],
    "demos10": ["policy=mtact", "algo.augmentations=1", "algo.demos_per_task=10"],
    "demos25": ["policy=mtact", "algo.augmentations=1", "algo.demos_per_task=25"],
    "aug2": ["policy=mtact", "algo.augmentations=2"],
    "bf16": ["policy=mtact", "algo.augmentations=1", "algo.precision=bf16"],
}
# Variants added after the recipe moved to noisy demonstrations train on them; the rest on --dataset.
VARIANT_DATASETS = {v: NOISY_DATASET for v in ("noisy_demos", "quirk", "demos10", "demos25", "aug2")}


def augmentations(variant: str) -> int:
    """Semantic re-renderings per demonstration that a variant trains on (so the dataset must hold)."""
    return max([int(o.split("=", 1)[1]) for o in VARIANTS[variant] if o.startswith("algo.augmentations=")] or [0])


def ensure_noisy_dataset(episodes: int = 50, augment: int = 1) -> None:
    """Collect the noisy demonstrations once (921 s on two cores, measured); the collector resumes a partial one."""
    from envs.kitchen.env import TASKS

    complete = episodes * len(TASKS) * (1 + augment)  # originals and their re-renderings
    if (NOISY_DATASET / "manifest.json").is_file() and len(list(NOISY_DATASET.glob("episodes/*/*.npz"))) >= complete:
        return
    cmd = [sys.executable, "-m", "agents.collect", "task=all", f"episodes={episodes}", f"augment={augment}",
           f"noise={EXPERT_NOISE}", "max_attempts=6", f"out={NOISY_DATASET}"]
    print("collecting", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def train_all(args, jobs: Jobs) -> dict[str, Path]:
    """``--jobs`` runs at once, the cores shared out (``--threads``, by default cores // jobs, each)."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    runs = {}
    noisy = [v for v in args.variants if v in VARIANT_DATASETS]
    if noisy:  # the collector resumes: asking for more re-renderings adds only the missing ones
        ensure_noisy_dataset(augment=max(map(augmentations, noisy)))
    for variant in args.variants:
        for seed in args.seeds:
            name = f"{variant}_s{seed}"
            dataset = VARIANT_DATASETS.get(variant, args.dataset)
            overrides = ["env=kitchen", "algo=bc", f"dataset={dataset}", *VARIANTS[variant],
                         f"seed={seed}", f"algo.time_budget_s={args.budget}", f"algo.total_steps={args.steps}",
                         f"algo.eval_every={args.eval_every}", "algo.eval_episodes=2", "algo.final_eval_episodes=5",
                         f"algo.eval_batch={args.eval_batch}",
                         f"threads={threads}"]
            runs[name] = jobs.submit(name, overrides)
    jobs.wait()
    return runs


def record_runs(out: dict, names: list[str], work: Path) -> list[str]:
    """Record the runs in the cache (``work``) into ``out``; return their names.

    The cache is per machine and the results file is what persists, so a recorded run missing
    from the cache is left as it is; a run trained again drops the old run's evaluations.
    """
    cached = [name for name in names if RunDir(work / name).finished]
    for name in cached:
        run = {**summary(work / name), "threads": OmegaConf.load(work / name / "config.yaml").threads}
        if out["runs"].get(name, run) != run:
            print(f"  {name}: a new training replaces the recorded one and its evaluations", flush=True)
            out["eval"].pop(name, None)
        out["runs"][name] = run
    return cached


def evaluate(run: Path, level: str, episodes: int, workers: int, batch: int) -> dict:
    """The largest cached evaluation with at least ``episodes`` per task (episode seeds are nested), else a new one."""
    cached = sorted((int(p.stem.rsplit("_", 1)[1]), p) for p in run.glob(f"eval_{level}_*.json"))
    for n, path in reversed(cached):
        if n >= episodes:  # the run as the results show it: a worktree's evaluation reads as the main checkout's
            return {**json.loads(path.read_text()), "run": shown_path(run)}
    cache = run / f"eval_{level}_{episodes}.json"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "agents.evaluate", f"run={run}", f"level={level}",
                           f"episodes={episodes}", f"workers={workers}", f"batch={batch}"],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluating {run} at {level} failed:\n{proc.stderr[-2000:]}")
    result = {**json.loads(proc.stdout.strip().splitlines()[-2]), "run": shown_path(run)}
    result["eval_s"] = round(time.time() - t0, 1)
    write_json_atomic(cache, result)
    print(f"  {run.name} {level}: {100 * result['success_rate']:.1f}% ({result['eval_s']:.0f} s)", flush=True)
    return result


BATCH_SIZES = (1, 2, 4, 8, 16)


def bc_defaults():
    """The ``algo=bc`` settings every run trains with, unless its variant overrides them."""
    return compose_cfg(["env=kitchen", "policy=mtact", "algo=bc"]).algo


def train_step_ms(model, batch: int, rounds: int = 3) -> dict:
    """Forward + backward of one training batch at each ``algo.precision``, alternated so both see the same load."""
    import torch

    from agents.bc import PRECISIONS, autocast

    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = {"images": torch.rand(batch, len(cfg.cameras), 3, cfg.image_size, cfg.image_size, generator=g)
         if cfg.cameras else None,
         "proprio": torch.randn(batch, cfg.proprio_dim, generator=g),
         "object_state": torch.randn(batch, cfg.object_dim, generator=g),
         "lang": torch.randn(batch, cfg.lang_dim, generator=g),
         "actions": torch.randn(batch, cfg.chunk, cfg.action_dim, generator=g),
         "pad": torch.zeros(batch, cfg.chunk, dtype=torch.bool)}
    model.train()
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for r in range(rounds + 1):  # round 0 warms up
        for precision in PRECISIONS:
            t0 = time.perf_counter()
            with autocast(precision):
                loss = model.loss(**x)["loss"]
            loss.backward()
            model.zero_grad(set_to_none=True)
            if r:
                times[precision].append(1e3 * (time.perf_counter() - t0))
    model.eval()
    return {p: float(np.median(t)) for p, t in times.items()}


def latency(run: Path) -> dict:
    import torch

    from envs.kitchen.instructions import instruction
    from policies.registry import load_policy

    torch.set_num_threads(1)
    bundle = RunDir(run).policy()
    policy = load_policy(bundle)
    cfg = policy.config
    rng = np.random.default_rng(0)
    obs = {"proprio": rng.normal(size=cfg.proprio_dim).astype(np.float32),
           "object_state": rng.normal(size=cfg.object_dim).astype(np.float32),
           **{c: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras},
           "instruction": instruction("microwave")}
    for _ in range(10):
        policy.query_batch([obs])
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        policy.query_batch([obs])
        times.append(time.perf_counter() - t0)
    per_step = {}
    for schedule, n in (("ensemble", None), ("execute", cfg.chunk)):
        p = load_policy(bundle, options={"schedule": schedule, "execute_steps": n})
        p.reset()
        t0 = time.perf_counter()
        for _ in range(200):
            p.act(obs)
        per_step[schedule] = 1e3 * (time.perf_counter() - t0) / 200
    batched = {}  # evaluation's side-by-side episodes: one query for B observations
    for b in BATCH_SIZES:
        many = [obs] * b
        policy.query_batch(many)
        t0 = time.perf_counter()
        for _ in range(20):
            policy.query_batch(many)
        batched[str(b)] = 1e3 * (time.perf_counter() - t0) / (20 * b)
    ms = 1e3 * np.asarray(times)
    train_batch = int(bc_defaults().batch_size)
    return {"query_ms_median": float(np.median(ms)), "query_ms_p90": float(np.percentile(ms, 90)),
            "per_step_ms_ensemble": per_step["ensemble"], "per_step_ms_execute20": per_step["execute"],
            "batched_query_ms_per_observation": batched,
            "train_step_ms": train_step_ms(policy.model, train_batch), "train_batch": train_batch,
            "threads": 1, "params": policy.model.parameter_count(), "cameras": list(cfg.cameras),
            "image_size": cfg.image_size}


def aggregate(out: dict) -> dict:
    """Per variant and level: mean over seeds of the mean-over-tasks success, and the seeds' spread."""
    table = {}
    for variant in out["variants"]:
        table[variant] = {}
        for level in out["levels"]:
            evals = [out["eval"][f"{variant}_s{s}"][level] for s in out["seeds"]
                     if level in out["eval"].get(f"{variant}_s{s}", {})]
            if evals:
                rates = [e["success_rate"] for e in evals]
                table[variant][level] = {"mean": float(np.mean(rates)), "std": float(np.std(rates)),
                                         "seeds": len(rates), "per_seed": rates,
                                         "episodes": sum(e["episodes"] for e in evals),
                                         "ci95": evals[0]["ci95"] if len(evals) == 1 else None}
    return table


def cell(level: dict) -> str:
    if level["seeds"] == 1:
        low, high = level["ci95"]
        return f"{100 * level['mean']:.1f} [{100 * low:.0f}, {100 * high:.0f}] ({level['episodes']})"
    per_seed = " / ".join(f"{100 * r:.1f}" for r in level["per_seed"])
    return f"{100 * level['mean']:.1f} ± {100 * level['std']:.1f} (seeds {per_seed}; {level['episodes']})"


def write_markdown(out: dict, path: Path) -> None:
    m = out["machine"]
    on_noisy = [v for v in out["variants"] if v in VARIANT_DATASETS]
    noisy = f" ({', '.join(on_noisy)}: `{shown_path(NOISY_DATASET)}`, expert noise {EXPERT_NOISE})" if on_noisy else ""
    per_task = sorted({e["episodes"] // len(e["tasks"]) for levels in out["eval"].values() for e in levels.values()})
    episodes = (f"{per_task[0]} evaluation episodes per task and level" if len(per_task) == 1 else
                f"{' or '.join(map(str, per_task))} evaluation episodes per task and level (each cell gives its count)")
    lines = [
        "# MT-ACT on the kitchen (benchmarks/kitchen_mtact.py)", "",
        f"Date {out['date']}; {m['cpu']}, {m['cores']} cores; torch {m['torch']}, MuJoCo {m['mujoco']}. "
        f"Dataset `{out['dataset']}`{noisy}; seeds {out['seeds']}; {episodes} "
        f"(seeds 10000 + 1000 * task + i); training stopped after {out.get('budget', '?')} s of training or "
        f"{out.get('steps', '?')} gradient steps, whichever came first.", "",
        "## Mean success over the 7 tasks", "",
        "Mean ± std over training seeds, each seed's rate in parentheses; with one seed, its pooled 95% Wilson "
        "interval in brackets; episodes over all tasks and seeds in parentheses.", "",
        "| variant | " + " | ".join(out["levels"]) + " | train s | steps | threads | params |",
        "|---|" + "---|" * (len(out["levels"]) + 4),
    ]
    for variant, levels in out["table"].items():
        runs = [out["runs"][f"{variant}_s{s}"] for s in out["seeds"] if f"{variant}_s{s}" in out["runs"]]
        cells = [cell(levels[lv]) if lv in levels else "—" for lv in out["levels"]]
        if runs:
            cells += [f"{np.mean([r['train_time_s'] for r in runs]):.0f}", f"{np.mean([r['steps'] for r in runs]):.0f}",
                      " / ".join(dict.fromkeys(str(r.get("threads", "—")) for r in runs)),  # seeds' if they differ
                      str(runs[0]["params"])]
        else:  # evaluations cached without their training summaries: nothing to average
            cells += ["—"] * 4
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "## Per task at L0 (each run; 95% Wilson interval)", ""]
    tasks = None
    for name, levels in out["eval"].items():
        if "L0" not in levels:
            continue
        per = levels["L0"]["tasks"]
        if tasks is None:
            tasks = list(per)
            lines += ["| run | episodes per task | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        lines.append(f"| {name} | {per[tasks[0]]['episodes']} | " + " | ".join(
            f"{100 * per[t]['success_rate']:.0f} [{100 * per[t]['ci95'][0]:.0f}, {100 * per[t]['ci95'][1]:.0f}]"
            for t in tasks) + " |")
    if out.get("latency"):
        lat = out["latency"]
        lines += ["", "## Inference on one CPU thread", "",
                  f"MT-ACT run `{lat['run']}` ({lat['params']} parameters, cameras {lat['cameras']} at "
                  f"{lat['image_size']} px): one chunk query {lat['query_ms_median']:.1f} ms median, "
                  f"{lat['query_ms_p90']:.1f} ms p90; per control step "
                  f"{lat['per_step_ms_ensemble']:.1f} ms with temporal ensembling (a query every step), "
                  f"{lat['per_step_ms_execute20']:.1f} ms executing 20 steps per chunk. The controller's period at "
                  "12.5 Hz is 80 ms."]
        if lat.get("batched_query_ms_per_observation"):
            per_obs = lat["batched_query_ms_per_observation"]
            lines += ["", "Evaluation runs episodes side by side (`agents.evaluate batch=B`) and queries the model "
                      "once for all of them; cost of a query per observation (mean of 20 calls):", "",
                      "| B | " + " | ".join(per_obs) + " |", "|---|" + "---|" * len(per_obs),
                      "| ms per observation | " + " | ".join(f"{v:.1f}" for v in per_obs.values()) + " |"]
        if lat.get("train_step_ms"):
            step = lat["train_step_ms"]
            lines += ["", f"Training step of the same network (batch {lat['train_batch']}, forward "
                      f"and backward, one thread, median of 3 alternated): fp32 {step['fp32']:.0f} ms, bf16 autocast "
                      f"(`algo.precision=bf16`) {step['bf16']:.0f} ms, {step['fp32'] / step['bf16']:.2f}x."]
    lines += ["", "## Notes", "", *(f"- {note}" for note in out.get("notes", []))]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--levels", default="L0,L1,L2,L3")
    parser.add_argument("--budget", type=float, default=7200.0, help="seconds of training per run")
    parser.add_argument("--steps", type=int, default=None,
                        help="gradient steps per run, if the budget allows (default: the tuned config's)")
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores // jobs)")
    parser.add_argument("--eval-workers", type=int, default=2, help="processes per evaluation")
    parser.add_argument("--eval-batch", type=int, default=8, help="episodes side by side per evaluation process")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--only", default="train,eval,latency",
                        help="sections to run; 'table' alone re-renders the markdown from the JSON in --out")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK, help="the run cache (one run directory per variant+seed)")
    parser.add_argument("--note", action="append", default=[], help="a line for the results' notes (kept)")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = int(bc_defaults().total_steps)
    args.variants = args.variants.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    levels = args.levels.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; have {list(VARIANTS)}")
    sections = set(args.only.split(","))
    json_path = args.out / "kitchen_mtact.json"
    if sections == {"table"}:
        write_markdown(json.loads(json_path.read_text()), args.out / "kitchen_mtact.md")
        print(f"wrote {args.out / 'kitchen_mtact.md'}")
        return
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)  # before training: the results are written after it
    out = json.loads(json_path.read_text()) if json_path.is_file() else {}

    def union(key, new):  # an invocation adds to the table; it does not drop earlier variants
        return list(dict.fromkeys([*out.get(key, []), *new]))

    out.update({"date": dt.date.today().isoformat(), "machine": machine(), "dataset": shown_path(args.dataset),
                "seeds": union("seeds", args.seeds), "levels": union("levels", levels),
                "variants": union("variants", args.variants)})
    if "train" in sections:  # an evaluation-only invocation keeps the training limits on record
        out.update({"budget": args.budget, "steps": args.steps})
    out.pop("episodes", None)  # each evaluation records its own count (cells may differ)
    out["notes"] = [*out.get("notes", []), *args.note]
    out.setdefault("eval", {})
    out.setdefault("runs", {})
    jobs = Jobs(work, args.jobs)
    names = [f"{v}_s{s}" for v in args.variants for s in args.seeds]
    if "train" in sections:
        train_all(args, jobs)
    cached = record_runs(out, names, work)
    if "eval" in sections:
        for name in names:
            if name in cached:
                for level in levels:
                    out["eval"].setdefault(name, {})[level] = evaluate(work / name, level, args.episodes,
                                                                      args.eval_workers, args.eval_batch)
            elif name in out["runs"]:
                print(f"  {name}: no run in {work}; its recorded evaluations are kept as they are", flush=True)
    if "latency" in sections:  # of the first image-based variant trained
        for name in names:
            if not name.startswith(("state_only", "bc_single")) and RunDir(work / name).has_policy():
                out["latency"] = {"run": name, **latency(work / name)}
                break
    out["table"] = aggregate(out)
    write_json_atomic(json_path, out)
    write_markdown(out, args.out / "kitchen_mtact.md")
    print(f"wrote {args.out / 'kitchen_mtact.md'}")


if __name__ == "__main__":
    main()
