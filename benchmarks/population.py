"""GRPO and ES against SB3 PPO, and the batched rollout engine's speed; regenerates
benchmarks/results/population.{md,json} and population_curves.png.

    python benchmarks/population.py [--jobs 2] [--quick] [--only throughput,train,ablations,plot]

- throughput (first, alone on the machine): env-steps/s for NCAP on the 6-link swimmer of raw
  ``mj_step`` on one core, MuJoCo's multi-threaded open-loop ``rollout`` (physics only), the
  gymnasium env stepped alone, SB3 PPO's rollout collection (the tuned NCAP config: 4 envs in a
  DummyVecEnv, and the same in a SubprocVecEnv; and 32 envs in a DummyVecEnv, SB3's fastest here),
  and the batched engine (N envs, one policy call per step with Gaussian sampling, 1 and 2 worker
  threads). Every probe drives the body (random controls or the policy). Each rate is the median
  of ``REPEATS`` interleaved measurements in this one process;
- train: PPO, GRPO and ES through the real CLI at equal env-step budgets (PPO's budget; the
  population methods never exceed it), 3 seeds each, on 6-link ``swim`` with NCAP and with the
  MLP, and on UAV hover (cf2, 3 m/s gusts) with the MLP. Runs go to ``benchmarks/.work/population``
  (finished runs are reused). Two runs share the two cores, so the population methods step their
  envs on one worker thread here; curves against wall clock use each run's ``train_s`` (time
  without evaluations);
- ablations: GRPO with NCAP on ``swim``: group size G in {4, 8, 16} at 32 rollouts per iteration,
  outcome vs process advantages, and beta in {0, 0.04} (k3 KL to the initial policy);
- plot: learning curves against env steps and against wall clock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import envs  # noqa: E402,F401  (registers the env ids)
from benchmarks.common import Jobs, compose_cfg, machine, mean_std, summary, write_json_atomic  # noqa: E402
from policies.run_dir import RunDir  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "population"
RESULTS = ROOT / "benchmarks" / "results"
SEEDS = [0, 1, 2]
REPEATS = 3
METHODS = ("ppo", "grpo", "es")
# name: (label, common overrides, budget in env steps, per-method overrides)
SETTINGS = {
    "swim_ncap": ("NCAP on 6-link swim", ["env=swimmer", "policy=ncap"], 100_096, {
        "ppo": [], "grpo": [], "es": [],  # the tuned configs (configs/experiment/tuned/swimmer_ncap_*)
    }),
    "swim_mlp": ("MLP on 6-link swim", ["env=swimmer", "policy=mlp"], 300_000, {
        "ppo": [],
        "grpo": ["algo.horizon=200", "algo.learning_rate=1e-3"],
        "es": ["algo.horizon=200", "algo.population=32"],
    }),
    "uav_hover_mlp": ("MLP on UAV hover (cf2, 3 m/s gusts)", ["env=uav_hover", "policy=mlp"], 1_000_000, {
        "ppo": [],  # tuned: gusts 3 m/s, std 0.22, 16 envs x 256 steps
        "grpo": ["env.gust_speed=3.0", "policy.log_std_init=-1.5", "algo.horizon=200"],
        "es": ["env.gust_speed=3.0", "algo.horizon=200", "algo.population=32"],
    }),
}
ABLATIONS = {
    "G=4 (8 groups)": ["algo.group_size=4", "algo.groups=8"],
    "G=8 (4 groups), tuned": [],
    "G=16 (2 groups)": ["algo.group_size=16", "algo.groups=2"],
    "process advantages": ["algo.advantage=process"],
    "beta=0.04": ["algo.kl_coef=0.04"],
}


# --- throughput -----------------------------------------------------------------------------
def _swimmer():
    import gymnasium as gym

    return gym.make("embodied/Swimmer-v0")


def _swimming_controls(control_steps: int, nu: int, seed: int = 0) -> np.ndarray:
    """Random controls held for a control step: a swimming body's physics costs ~45% more than one at rest
    (the joints meet their limits), so every probe drives the body, as the policies do."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (control_steps, nu))


def raw_mj_step_rate(steps: int) -> float:
    """Physics steps/s of ``mj_step`` on one core (the env does 15 per control step)."""
    import mujoco

    env = _swimmer()
    env.reset(seed=0)
    m, d, skip = env.unwrapped.model, env.unwrapped.data, env.unwrapped.frame_skip
    controls = _swimming_controls(steps // skip, m.nu)
    t0 = time.perf_counter()
    for ctrl in controls:
        d.ctrl[:] = ctrl
        for _ in range(skip):
            mujoco.mj_step(m, d)
    return len(controls) * skip / (time.perf_counter() - t0)


def mujoco_rollout_rate(n_envs: int, control_steps: int) -> float:
    """Control steps/s of open-loop physics for ``n_envs`` swimmers in ``mujoco.rollout`` on all cores."""
    import mujoco
    from mujoco import rollout

    env = _swimmer()
    env.reset(seed=0)
    m, d, skip = env.unwrapped.model, env.unwrapped.data, env.unwrapped.frame_skip
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.zeros((n_envs, mujoco.mj_stateSize(m, spec)))
    for i in range(n_envs):
        mujoco.mj_getState(m, d, state[i], spec)
    nthread = os.cpu_count() or 1
    datas = [mujoco.MjData(m) for _ in range(nthread)]
    control = np.stack([np.repeat(_swimming_controls(control_steps, m.nu, seed=i), skip, axis=0) for i in range(n_envs)])
    with rollout.Rollout(nthread=nthread) as r:
        t0 = time.perf_counter()
        r.rollout([m] * n_envs, datas, state, control, nstep=control_steps * skip)
        return n_envs * control_steps / (time.perf_counter() - t0)


def env_step_rate(steps: int) -> float:
    env = _swimmer()
    env.reset(seed=0)
    controls = _swimming_controls(steps, env.action_space.shape[0])
    t0 = time.perf_counter()
    for action in controls:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def sb3_collection_rate(vec_env: str, steps: int, n_envs: int | None = None) -> float:
    """Env steps/s of SB3 PPO's ``collect_rollouts`` (timed by a callback) with the tuned NCAP config
    (4 envs unless ``n_envs``)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from agents.builders import policy_meta
    from agents.sb3_trainer import SB3Trainer
    from policies.sb3 import ActorCriticAdapter

    class CollectionTimer(BaseCallback):
        def __init__(self):
            super().__init__()
            self.seconds, self.steps = 0.0, 0

        def _on_rollout_start(self):
            self.started, self.at = time.perf_counter(), self.num_timesteps

        def _on_rollout_end(self):
            self.seconds += time.perf_counter() - self.started
            self.steps += self.num_timesteps - self.at

        def _on_step(self):
            return True

    cfg = compose_cfg(["env=swimmer", "policy=ncap", "algo=ppo", f"algo.vec_env={vec_env}",
                    *([f"algo.n_envs={n_envs}"] if n_envs else [])])
    torch.set_num_threads(1)
    venv = SB3Trainer.vec_env(cfg)
    kwargs = dict(actor_kind="ncap", actor_config=policy_meta(cfg).config,
                  critic_arch=list(cfg.policy.critic_arch), learn_std=bool(cfg.policy.learn_std),
                  log_std_init=float(cfg.policy.log_std_init))
    model = PPO(ActorCriticAdapter, venv, policy_kwargs=kwargs, device="cpu", seed=0, **dict(cfg.algo.sb3))
    timer = CollectionTimer()
    model.learn(steps, callback=timer)
    venv.close()
    return timer.steps / timer.seconds


def engine_rate(n_envs: int, workers: int, horizon: int) -> dict:
    """Env steps/s of the batched engine collecting with NCAP (Gaussian sampling, sigma 0.5)."""
    import torch

    from agents.batched_rollout import BatchedEnvs
    from agents.builders import policy_meta
    from agents.population import GaussianPolicy
    from policies.registry import build_module

    cfg = compose_cfg(["env=swimmer", "policy=ncap", "algo=grpo"])
    torch.set_num_threads(1)
    with BatchedEnvs(dict(cfg.env), n_envs, workers=workers) as engine:
        actor = build_module("ncap", policy_meta(cfg).config)
        policy = GaussianPolicy(actor, engine.action_dim, float(np.log(0.5)), learn_std=False)

        def act(obs):
            with torch.no_grad():
                return policy.distribution(torch.as_tensor(obs, dtype=torch.float32)).sample().numpy()

        start = engine.reset(np.arange(n_envs))
        t0 = time.perf_counter()
        batch = engine.rollout(start, act, horizon)
        seconds = time.perf_counter() - t0
        return {"steps_per_s": batch.env_steps / seconds, "env_share": engine.env_seconds / seconds}


def section_throughput(out: dict, quick: bool) -> None:
    scale = 0.1 if quick else 1.0
    probes = {
        "raw mj_step, 1 core (physics steps/s)": lambda: raw_mj_step_rate(int(150_000 * scale)),
        "mujoco.rollout, open loop, 64 envs, all cores": lambda: mujoco_rollout_rate(64, int(500 * scale)),
        "gymnasium env.step, 1 env": lambda: env_step_rate(int(10_000 * scale)),
        "SB3 PPO collection, DummyVecEnv x4 (tuned NCAP)": lambda: sb3_collection_rate("dummy", int(20_480 * scale)),
        "SB3 PPO collection, SubprocVecEnv x4": lambda: sb3_collection_rate("subproc", int(20_480 * scale)),
        "SB3 PPO collection, DummyVecEnv x32 (not the tuned config)": lambda: sb3_collection_rate(
            "dummy", int(40_960 * scale), n_envs=32),
        "batched engine, 32 envs, 1 thread": lambda: engine_rate(32, 1, int(600 * scale)),
        "batched engine, 32 envs, 2 threads": lambda: engine_rate(32, 2, int(600 * scale)),
        "batched engine, 64 envs, 2 threads": lambda: engine_rate(64, 2, int(300 * scale)),
    }
    samples: dict[str, list] = {name: [] for name in probes}
    for r in range(REPEATS):  # interleaved, so slow phases of the shared machine hit every probe
        for name, probe in probes.items():
            value = probe()
            samples[name].append(value)
            shown = value["steps_per_s"] if isinstance(value, dict) else value
            print(f"  throughput [{r + 1}/{REPEATS}] {name}: {shown:,.0f}/s", flush=True)
    rates = {}
    for name, values in samples.items():
        if isinstance(values[0], dict):
            rates[name] = {"steps_per_s": statistics.median(v["steps_per_s"] for v in values),
                           "env_share": statistics.median(v["env_share"] for v in values),
                           "samples": [round(v["steps_per_s"]) for v in values]}
        else:
            rates[name] = {"steps_per_s": statistics.median(values), "samples": [round(v) for v in values]}
    sb3_tuned = max(v["steps_per_s"] for k, v in rates.items() if k.startswith("SB3") and "x4" in k)
    sb3_any = max(v["steps_per_s"] for k, v in rates.items() if k.startswith("SB3"))
    engine_best = max(v["steps_per_s"] for k, v in rates.items() if k.startswith("batched"))
    ceiling = next(v["steps_per_s"] for k, v in rates.items() if k.startswith("mujoco.rollout"))
    out["throughput"] = {"rates": rates, "repeats": REPEATS, "speedup_vs_sb3_tuned": engine_best / sb3_tuned,
                         "engine_share_of_physics_ceiling": engine_best / ceiling,
                         "speedup_vs_sb3_widest": engine_best / sb3_any, "physics_substeps_per_control_step": 15}


# --- training -------------------------------------------------------------------------------
def run_name(setting: str, method: str, seed: int, extra: str = "") -> str:
    return f"{setting}_{method}{extra}_s{seed}"


def planned_runs(quick: bool) -> dict[str, list[tuple[str, list[str]]]]:
    """(setting, method) -> [(run name, CLI overrides)] for every training run."""
    plan = {}
    for setting, (_, common, budget, per_method) in SETTINGS.items():
        steps = budget // 10 if quick else budget
        for method in METHODS:
            overrides = [*common, f"algo={method}", f"algo.total_timesteps={steps}", f"algo.eval_every={steps // 20}",
                         "algo.checkpoint_every=0", *per_method[method]]
            if method != "ppo":
                overrides.append("algo.workers=1")
            plan[f"{setting}:{method}"] = [(run_name(setting, method, s), [*overrides, f"seed={s}"]) for s in SEEDS]
    return plan


def planned_ablations(quick: bool) -> dict[str, list[tuple[str, list[str]]]]:
    steps = SETTINGS["swim_ncap"][2] // (10 if quick else 1)
    plan = {}
    for i, (label, extra) in enumerate(ABLATIONS.items()):
        overrides = ["env=swimmer", "policy=ncap", "algo=grpo", f"algo.total_timesteps={steps}",
                     "algo.eval_every=10000", "algo.checkpoint_every=0", "algo.workers=1", *extra]
        plan[label] = [(run_name("ablation", f"grpo{i}", s), [*overrides, f"seed={s}"]) for s in SEEDS]
    return plan


def train_all(plans: list[dict], jobs: int) -> None:
    pool = Jobs(WORK, jobs)
    for plan in plans:
        for runs in plan.values():
            for name, overrides in runs:
                pool.submit(name, overrides)
    pool.wait()


def curve(run: Path) -> dict:
    rows = RunDir(run).metrics_rows()
    return {"steps": [r["steps"] for r in rows], "return": [r["eval_return_mean"] for r in rows],
            "train_s": [r.get("train_s", r["time_s"]) for r in rows]}


METRICS = ("hover_rmse", "crash", "is_success")


def collect(plan: dict) -> dict:
    out = {}
    for key, runs in plan.items():
        sums = [summary(WORK / name) for name, _ in runs]
        entry = {
            "return": mean_std([s["return_mean"] for s in sums]),
            "per_seed": [round(s["return_mean"], 2) for s in sums],
            "steps": [s["steps"] for s in sums],
            "train_time_s": mean_std([s["train_time_s"] for s in sums]),
            "params": sums[0]["params"],
            "curves": [curve(WORK / name) for name, _ in runs],
        }
        for metric in METRICS:
            if metric in sums[0]:
                entry[metric] = mean_std([s[metric] for s in sums])
        out[key] = entry
    return out


# --- report ---------------------------------------------------------------------------------
def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if f"{s}:ppo" in out.get("train", {})]
    fig, axes = plt.subplots(2, len(settings), figsize=(5 * len(settings), 7.5), squeeze=False)
    colors = {"ppo": "tab:blue", "grpo": "tab:red", "es": "tab:green"}
    for col, setting in enumerate(settings):
        for method in METHODS:
            entry = out["train"][f"{setting}:{method}"]
            for i, c in enumerate(entry["curves"]):
                label = method.upper() if i == 0 else None
                axes[0, col].plot(c["steps"], c["return"], color=colors[method], alpha=0.7, label=label)
                axes[1, col].plot(c["train_s"], c["return"], color=colors[method], alpha=0.7, label=label)
        axes[0, col].set_title(SETTINGS[setting][0])
        axes[0, col].set_xlabel("env steps")
        axes[1, col].set_xlabel("training wall clock, s (evaluations excluded)")
        for row in range(2):
            axes[row, col].set_ylabel("deterministic eval return")
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(ms: dict, nd: int = 1) -> str:
    return f"{ms['mean']:.{nd}f} ± {ms['std']:.{nd}f}"


def targets(out: dict) -> list[str]:
    lines = []
    tp = out.get("throughput")
    if tp:
        ok = tp["speedup_vs_sb3_tuned"] >= 3.0
        lines.append(f"- Batched engine ≥ 3x SB3 PPO's collection env-steps/s (NCAP, swimmer, same 2 cores, one run): "
                     f"**{tp['speedup_vs_sb3_tuned']:.1f}x** against PPO+NCAP's training configuration (4 envs, the "
                     f"faster of DummyVecEnv and SubprocVecEnv) — {'met' if ok else 'NOT met'}. Against SB3 widened to "
                     f"32 envs (not how PPO+NCAP trains here, but SB3's best collection rate measured): "
                     f"**{tp['speedup_vs_sb3_widest']:.1f}x** — {'met' if tp['speedup_vs_sb3_widest'] >= 3 else 'not met'}.")
    train = out.get("train", {})
    if "swim_ncap:ppo" in train:
        ppo = train["swim_ncap:ppo"]["return"]["mean"]
        for method in ("grpo", "es"):
            r = train[f"swim_ncap:{method}"]["return"]["mean"]
            ok = r >= 0.95 * ppo
            lines.append(f"- {method.upper()} with NCAP on 6-link swim ≥ 95% of PPO+NCAP's final return at equal env steps: "
                         f"{r:.1f} vs {ppo:.1f} = **{100 * r / ppo:.1f}%** — {'met' if ok else 'NOT met'}.")
    return lines


def write_markdown(out: dict, path: Path) -> None:
    m = out["machine"]
    L = ["# Population training: GRPO and ES on batched MuJoCo rollouts", "",
         f"Generated by `python benchmarks/population.py` on {out['date']}{' (QUICK budgets)' if out['quick'] else ''}.",
         f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, MuJoCo {m['mujoco']}, "
         f"SB3 {m['sb3']}. Training seeds {out['seeds']}; evaluations are deterministic, env seeds 10000+i. "
         "Raw data: `population.json`.", "", "## Must reach", "", *targets(out), ""]
    tp = out.get("throughput")
    if tp:
        L += ["## Env-steps/s: NCAP on the 6-link swimmer", "",
              f"Median of {tp['repeats']} interleaved measurements in one process, nothing else running. One control "
              f"step is {tp['physics_substeps_per_control_step']} physics steps (2 ms each, 30 ms control).", "",
              "| what | steps/s | control-step equivalent/s | share in env steps | samples |", "|---|---|---|---|---|"]
        for name, v in tp["rates"].items():
            per_control = v["steps_per_s"] / tp["physics_substeps_per_control_step"] if "raw mj_step" in name else v["steps_per_s"]
            share = f"{100 * v['env_share']:.0f}%" if "env_share" in v else ""
            L.append(f"| {name} | {v['steps_per_s']:,.0f} | {per_control:,.0f} | {share} | {v['samples']} |")
        L += ["", f"Batched engine / SB3 collection: **{tp['speedup_vs_sb3_tuned']:.1f}x** against the tuned 4-env "
              f"config, **{tp['speedup_vs_sb3_widest']:.1f}x** against SB3 with 32 envs. The open-loop "
              "`mujoco.rollout` row is the physics ceiling on this machine (C threads, no policy, no Python): the "
              f"engine reaches **{100 * tp.get('engine_share_of_physics_ceiling', float('nan')):.0f}%** of it. "
              "A closed-loop policy "
              "must return to Python between control steps, which `rollout` cannot do, so the engine steps the "
              "envs on worker threads (MuJoCo releases the GIL inside `mj_step`); the swimmer computes its "
              "observations and rewards for the whole batch at once (`SwimmerEnv.step_batch`).", ""]
    train = out.get("train")
    if train:
        L += ["## PPO vs GRPO vs ES at equal env steps", "", "![curves](population_curves.png)", "",
              "| setting | method | env steps | final return | per seed | train time, s | trainable params | extra |",
              "|---|---|---|---|---|---|---|---|"]
        for setting, (label, _, _, _) in SETTINGS.items():
            for method in METHODS:
                e = train.get(f"{setting}:{method}")
                if not e:
                    continue
                extra = ", ".join(f"{k} {fmt(e[k], 3)}" for k in METRICS if k in e)
                L.append(f"| {label} | {method.upper()} | {max(e['steps']):,} | {fmt(e['return'])} | {e['per_seed']} | "
                         f"{fmt(e['train_time_s'], 0)} | {e['params']} | {extra} |")
        L += ["", "Final return: mean ± std over seeds of each seed's 10-episode deterministic evaluation. The "
              "population methods stop before a batch would exceed the budget, so they use at most PPO's steps. "
              "Train time includes the periodic evaluations; two runs shared the two cores.", ""]
        for setting, (label, _, _, _) in SETTINGS.items():
            if all(f"{setting}:{m}" in train for m in METHODS):
                ppo = train[f"{setting}:ppo"]
                parts = [f"{m.upper()} {100 * train[f'{setting}:{m}']['return']['mean'] / ppo['return']['mean']:.0f}% of "
                         f"PPO's return in {train[f'{setting}:{m}']['train_time_s']['mean'] / ppo['train_time_s']['mean']:.2f}x "
                         "its wall clock" for m in METHODS[1:]]
                L.append(f"- {label}: " + "; ".join(parts) + ".")
        L.append("")
    abl = out.get("ablations")
    if abl:
        L += ["## GRPO ablations (NCAP, 6-link swim, equal env steps)", "",
              "| variant | final return | per seed | zero-spread groups |", "|---|---|---|---|"]
        for label, e in abl.items():
            L.append(f"| {label} | {fmt(e['return'])} | {e['per_seed']} | {e.get('frac_zero_spread', 'n/a')} |")
        L.append("")
    L += out.get("notes", [])
    path.write_text("\n".join(L) + "\n")


def zero_spread(plan: dict) -> dict:
    """Mean logged fraction of zero-spread groups per ablation (a float rewards almost never tie)."""
    out = {}
    for label, runs in plan.items():
        values = []
        for name, _ in runs:
            rows = RunDir(WORK / name).metrics_rows()
            values += [r["frac_zero_spread"] for r in rows if "frac_zero_spread" in r and not np.isnan(r["frac_zero_spread"])]
        out[label] = round(float(np.mean(values)), 4) if values else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--quick", action="store_true", help="small budgets, to check the script end to end")
    parser.add_argument("--only", default="throughput,train,ablations,plot")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sections = set(args.only.split(","))
    global WORK, SEEDS
    if args.quick:
        WORK, SEEDS = WORK / "quick", [0]
        if args.out == RESULTS:
            args.out = WORK / "results"  # quick numbers never overwrite the committed tables
    WORK.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "population.json"
    out = json.loads(json_path.read_text()) if json_path.is_file() else {}
    out.update({"date": dt.date.today().isoformat(), "quick": args.quick, "machine": machine(), "seeds": SEEDS})
    if "throughput" in sections:  # first, while nothing else shares the cores
        section_throughput(out, args.quick)
        write_json_atomic(json_path, out)
    plan, ablations = planned_runs(args.quick), planned_ablations(args.quick)
    todo = ([plan] if "train" in sections else []) + ([ablations] if "ablations" in sections else [])
    if todo:
        train_all(todo, args.jobs)
    if "train" in sections or ("train" in out and all(RunDir(WORK / n).finished for r in plan.values() for n, _ in r)):
        out["train"] = collect(plan)
    if "ablations" in sections:
        out["ablations"] = collect(ablations)
        for label, frac in zero_spread(ablations).items():
            out["ablations"][label]["frac_zero_spread"] = frac
    write_json_atomic(json_path, out)
    write_markdown(out, args.out / "population.md")
    if "plot" in sections and "train" in out:
        plot(out, args.out / "population_curves.png")
    print(f"wrote {args.out / 'population.md'}")


if __name__ == "__main__":
    main()
