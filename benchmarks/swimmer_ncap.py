"""NCAP vs MLP on the swimmer: regenerates benchmarks/results/swimmer_ncap.{md,json,png}.

    python benchmarks/swimmer_ncap.py [--jobs 2] [--quick] [--only init,curves,...]

Every training run goes through the real CLI (``python -m agents.train``) into
``benchmarks/.work/<name>`` and is reused when its ``summary.json`` exists, so an interrupted
benchmark resumes where it stopped. Evaluations load the runs' deployable policies, as
``agents.evaluate`` does. Sections:

- init: return at initialisation, NCAP vs MLP, 6-link swim, 10 seeds;
- curves: PPO learning curves, NCAP and MLP (MLP to 1M env steps), 3 seeds each, env steps to
  reach 800 / 850 / 900, trainable parameter counts, plot; plus NCAP with the paper's sigma = 0.1
  and the base PPO settings of configs/algo/ppo.yaml (lr 3e-4, 4 x 1024 steps per update);
- transfer: one NCAP trained on 6 links run zero-shot on 3..13 links, beside NCAPs trained at
  each length and the untrained circuit;
- ablations: the 2^3 grid (weight sharing, sign constraints, constant init) at init and after
  training;
- robustness: returns at 0.5x and 2x fluid density for policies trained at nominal density;
- throughput: raw env steps/s vs PPO training env-steps/s for both policies, measured in one
  process one after another;
- gym: stock Swimmer-v5 with the RL Zoo's tuned PPO (MLP) and NCAP, beside the Zoo's scores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from agents.builders import make_env  # noqa: E402
from agents.rollout import EVAL_SEED_BASE, run_episodes  # noqa: E402
from benchmarks.common import Jobs, compose_cfg, machine, mean_std, summary, write_json_atomic  # noqa: E402
from policies import registry  # noqa: E402
from policies.protocol import EnvInterface, Policy  # noqa: E402
from policies.run_dir import RunDir  # noqa: E402

WORK = ROOT / "benchmarks" / ".work"
REFERENCE_CURVES = ROOT / "agents" / "reference_curves.json"  # package data: agents.train plots it
RESULTS = ROOT / "benchmarks" / "results"
SEEDS = [0, 1, 2]
TRANSFER_LENGTHS = list(range(3, 14))
THRESHOLDS = [800, 850, 900]
SWIM6 = {"name": "swimmer", "id": "embodied/Swimmer-v0", "task": "swim", "n_links": 6,
         "fluid_density": 3000.0, "fluid_viscosity": 0.0}
ZOO_SWIMMER = {  # rl-baselines3-zoo benchmark.md, Swimmer-v3, 1 run each
    "TRPO": (365.7, 2.1), "TD3": (359.1, 1.2), "ARS": (355.3, 12.8), "SAC": (345.6, 3.1),
    "TQC": (339.4, 1.5), "PPO": (281.6, 9.7), "A2C": (200.6, 2.5),
}
ABLATIONS = [(s, c, i) for s in (True, False) for c in (True, False) for i in (True, False)]


def curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = RunDir(run).metrics_rows()
    return np.array([r["steps"] for r in rows]), np.array([r["eval_return_mean"] for r in rows])


# --- evaluation helpers -------------------------------------------------------------------
def evaluate_run(run: Path, env_cfg: dict, episodes: int, seed: int = 0) -> list[float]:
    env = make_env(env_cfg)
    policy = registry.load_policy(RunDir(run).policy(), EnvInterface.of(env))
    result = run_episodes(env, policy, episodes, seed=EVAL_SEED_BASE + seed)
    env.close()
    return result.returns


def untrained(policy_overrides: list[str], env_cfg: dict, init_seed: int) -> tuple[Policy, object]:
    """An untrained policy (NCAP's random init drawn from ``init_seed``) and its env."""
    cfg = OmegaConf.to_container(compose_cfg(policy_overrides).policy, resolve=True)
    if "init_seed" in registry.get(cfg["kind"]).config_class.__dataclass_fields__:
        cfg["actor"]["init_seed"] = init_seed
    env = make_env(env_cfg)
    torch.manual_seed(init_seed)
    return registry.initial_policy(cfg, env, env_cfg), env


def env_with(**kw) -> dict:
    return {**SWIM6, **kw}


# --- sections ------------------------------------------------------------------------------
def budgets(quick: bool) -> dict:
    return {
        "transfer_steps": 5000 if quick else 30000,
        "transfer_episodes": 2 if quick else 5,
        "ablation_steps": 5000 if quick else 30000,
        "ablation_draws": 3 if quick else 10,
        "robustness_episodes": 2 if quick else 5,
    }


def section_init(out: dict, quick: bool) -> None:
    n = 3 if quick else 10
    res = {}
    for label, overrides in [("ncap", ["policy=ncap"]), ("mlp", ["policy=mlp"])]:
        returns = []
        for seed in range(n):
            policy, env = untrained(overrides, SWIM6, init_seed=seed)
            returns += run_episodes(env, policy, 1, seed=EVAL_SEED_BASE + seed).returns
            env.close()
        res[label] = {**mean_std(returns), "returns": returns}
        print(f"  init {label}: {res[label]['mean']:.1f} ± {res[label]['std']:.1f}", flush=True)
    res["note"] = ("NCAP: constant init, so the 10 seeds are env seeds; MLP: 10 random inits "
                   "(torch seeds 0-9), one episode each, raw observations.")
    out["init"] = res


def curve_runs(jobs: Jobs, quick: bool) -> dict[str, list[Path]]:
    ncap_steps = 10000 if quick else 100000
    mlp_steps = 20000 if quick else 1000000
    runs = {"ncap": [], "mlp": [], "ncap_paper": []}
    for seed in SEEDS:
        runs["mlp"].append(jobs.submit(f"curve_mlp_s{seed}", [
            "policy=mlp", f"seed={seed}", f"algo.total_timesteps={mlp_steps}", "algo.eval_every=5000",
            "algo.checkpoint_every=0"]))
        runs["ncap"].append(jobs.submit(f"curve_ncap_s{seed}", [
            "policy=ncap", f"seed={seed}", f"algo.total_timesteps={ncap_steps}", "algo.eval_every=2500",
            "algo.checkpoint_every=0"]))
        # The paper's fixed sigma = 0.1 with the base PPO settings (n_steps 1024 x 4 envs, lr 3e-4).
        runs["ncap_paper"].append(jobs.submit(f"curve_ncap_paper_s{seed}", [
            "policy=ncap", f"seed={seed}", f"algo.total_timesteps={ncap_steps * 3}", "algo.eval_every=10000",
            "algo.checkpoint_every=0", "policy.log_std_init=-2.302585", "algo.sb3.learning_rate=3e-4",
            "algo.sb3.n_steps=1024", "algo.sb3.batch_size=256"]))
    return runs


def first_crossing(steps: np.ndarray, returns: np.ndarray, threshold: float) -> int | None:
    hit = np.nonzero(returns >= threshold)[0]
    return int(steps[hit[0]]) if hit.size else None


def section_curves(out: dict, runs: dict[str, list[Path]]) -> None:
    res = {}
    for label, paths in runs.items():
        per_seed = []
        for seed, run in zip(SEEDS, paths):
            s, r = curve(run)
            summ = summary(run)
            per_seed.append({
                "seed": seed, "final_return": summ["return_mean"], "final_return_std": summ["return_std"],
                "steps": summ["steps"], "params": summ["params"], "train_time_s": summ["train_time_s"],
                "env_steps_per_s": summ["env_steps_per_s"],
                "steps_to": {str(t): first_crossing(s, r, t) for t in THRESHOLDS},
                "curve": [[int(a), float(b)] for a, b in zip(s, r)],
            })
        # Mean curve over seeds on the common evaluation grid.
        grid = np.array([p[0] for p in per_seed[0]["curve"]])
        mean_curve = np.mean([[dict(map(tuple, p["curve"])).get(g, np.nan) for g in grid] for p in per_seed], axis=0)
        steps_to_mean = {str(t): first_crossing(grid, mean_curve, t) for t in THRESHOLDS}
        steps_to_each = {str(t): [p["steps_to"][str(t)] for p in per_seed] for t in THRESHOLDS}
        res[label] = {
            "per_seed": per_seed,
            "final_return": mean_std([p["final_return"] for p in per_seed]),
            "params": per_seed[0]["params"],
            "steps_to_mean_curve": steps_to_mean,
            "steps_to_per_seed": steps_to_each,
            "mean_curve": [[int(g), float(m)] for g, m in zip(grid, mean_curve)],
        }
        print(f"  curves {label}: final {res[label]['final_return']['mean']:.1f}, steps to 850 "
              f"{steps_to_mean['850']} (per seed {steps_to_each['850']})", flush=True)
    out["curves"] = res


def plot_curves(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"ncap": "NCAP + PPO (tuned, 4 params)", "mlp": "MLP + PPO (64x64, 6090 params)",
              "ncap_paper": "NCAP + PPO (paper sigma 0.1, base PPO settings)"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for ax, logx in zip(axes, (False, True)):
        for i, (key, label) in enumerate(labels.items()):
            data = out["curves"].get(key)
            if not data:
                continue
            grid = np.array([p[0] for p in data["mean_curve"]])
            ys = np.array([[dict(map(tuple, p["curve"])).get(g, np.nan) for g in grid] for p in data["per_seed"]])
            m, s = np.nanmean(ys, 0), np.nanstd(ys, 0)
            x = np.maximum(grid, 1000) if logx else grid
            ax.plot(x, m, label=f"{label}, {len(ys)} seeds", color=f"C{i}")
            ax.fill_between(x, m - s, m + s, color=f"C{i}", alpha=0.2)
        for t in THRESHOLDS:
            ax.axhline(t, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log" if logx else "linear")
        ax.set_xlabel("env steps" + (" (log)" if logx else ""))
        ax.set_ylabel("deterministic eval return (5 episodes)")
        ax.set_ylim(0, 1000)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("6-link swimmer, swim task: NCAP vs MLP with PPO")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def transfer_runs(jobs: Jobs, quick: bool) -> dict[int, Path]:
    steps = budgets(quick)["transfer_steps"]
    return {n: jobs.submit(f"transfer_ncap_n{n}", [
        "policy=ncap", f"env.n_links={n}", "seed=0", f"algo.total_timesteps={steps}", "algo.eval_every=10000",
        "algo.checkpoint_every=0"]) for n in TRANSFER_LENGTHS}


def section_transfer(out: dict, runs: dict[int, Path], source: Path, quick: bool) -> None:
    episodes = budgets(quick)["transfer_episodes"]
    rows = []
    for n, run in runs.items():
        env_cfg = env_with(n_links=n)
        policy, env = untrained(["policy=ncap"], env_cfg, 0)
        init = run_episodes(env, policy, episodes, seed=EVAL_SEED_BASE).returns
        env.close()
        zero_shot = evaluate_run(source, env_cfg, episodes)
        trained = evaluate_run(run, env_cfg, episodes)
        rows.append({"n_links": n, "untrained": mean_std(init), "zero_shot_from_6": mean_std(zero_shot),
                     "trained_at_n": mean_std(trained)})
        print(f"  transfer n={n}: untrained {np.mean(init):.0f} zero-shot {np.mean(zero_shot):.0f} "
              f"trained {np.mean(trained):.0f}", flush=True)
    out["transfer"] = {"source_run": source.name, "rows": rows}


def ablation_name(share: bool, sign: bool, const: bool) -> str:
    return f"share{int(share)}_sign{int(sign)}_const{int(const)}"


def ablation_overrides(share: bool, sign: bool, const: bool) -> list[str]:
    return ["policy=ncap", f"policy.actor.weight_sharing={share}", f"policy.actor.sign_constraints={sign}",
            f"policy.actor.constant_init={const}"]


def ablation_runs(jobs: Jobs, quick: bool) -> dict[str, list[Path]]:
    steps = budgets(quick)["ablation_steps"]
    return {ablation_name(*a): [jobs.submit(f"ablation_{ablation_name(*a)}_s{seed}", [
        *ablation_overrides(*a), f"seed={seed}", f"algo.total_timesteps={steps}", "algo.eval_every=5000",
        "algo.checkpoint_every=0"]) for seed in SEEDS[:2]] for a in ABLATIONS}


def section_ablations(out: dict, runs: dict[str, list[Path]], quick: bool) -> None:
    draws = budgets(quick)["ablation_draws"]
    rows = []
    for a in ABLATIONS:
        name = ablation_name(*a)
        init = []
        for seed in range(draws):
            policy, env = untrained(ablation_overrides(*a), SWIM6, init_seed=seed)
            init += run_episodes(env, policy, 1, seed=EVAL_SEED_BASE + seed).returns
            env.close()
        trained = [summary(r)["return_mean"] for r in runs[name]]
        params = summary(runs[name][0])["params"]
        rows.append({"weight_sharing": a[0], "sign_constraints": a[1], "constant_init": a[2], "params": params,
                     "init": {**mean_std(init), "median": float(np.median(init))}, "trained": mean_std(trained)})
        print(f"  ablation {name}: init {np.mean(init):.0f} trained {np.mean(trained):.0f}", flush=True)
    out["ablations"] = rows


def section_robustness(out: dict, curve_runs_: dict[str, list[Path]], quick: bool) -> None:
    episodes = budgets(quick)["robustness_episodes"]
    res = {}
    for label in ("ncap", "mlp"):
        res[label] = {}
        for factor in (0.5, 1.0, 2.0):
            env_cfg = env_with(fluid_density=3000.0 * factor)
            returns = [np.mean(evaluate_run(run, env_cfg, episodes)) for run in curve_runs_[label]]
            res[label][str(factor)] = mean_std(returns)
        print(f"  robustness {label}: " + ", ".join(f"{k}x {v['mean']:.0f}" for k, v in res[label].items()), flush=True)
    out["robustness"] = res


def section_throughput(out: dict, quick: bool) -> None:
    """Raw env steps/s and PPO training env-steps/s, one after another in this process."""
    import gymnasium as gym

    torch.set_num_threads(1)
    env = gym.make("embodied/Swimmer-v0")
    env.reset(seed=0)
    zeros = np.zeros(env.action_space.shape)
    n = 5000 if quick else 20000
    t0 = time.perf_counter()
    for _ in range(n):
        _, _, term, trunc, _ = env.step(zeros)
        if term or trunc:
            env.reset()
    raw = n / (time.perf_counter() - t0)
    env.close()
    res = {"raw_env_steps_per_s": raw}
    steps = 10000 if quick else 40000
    for label in ("ncap", "mlp"):
        cfg = compose_cfg([f"policy={label}", f"algo.total_timesteps={steps}", f"algo.eval_every={steps * 10}",
                           "algo.checkpoint_every=0", "algo.eval_episodes=1", "algo.final_eval_episodes=1",
                           "progress_bar=false"])
        from agents.sb3_trainer import train_sb3

        run = WORK / f"throughput_{label}"
        run.mkdir(parents=True, exist_ok=True)
        s = train_sb3(cfg, run, [])
        res[f"ppo_{label}_env_steps_per_s"] = s["env_steps_per_s"]
        res[f"ppo_{label}_settings"] = f"n_envs={cfg.algo.n_envs}, n_steps={cfg.algo.sb3.n_steps}, " \
                                       f"batch={cfg.algo.sb3.batch_size}, epochs={cfg.algo.sb3.n_epochs}"
    for k, v in res.items():
        if isinstance(v, float):
            print(f"  throughput {k}: {v:.0f}", flush=True)
    out["throughput"] = res


def gym_runs(jobs: Jobs, quick: bool) -> dict[str, list[Path]]:
    mlp_steps = 10000 if quick else 1000000
    ncap_steps = 10000 if quick else 100000
    return {
        "mlp": [jobs.submit(f"gym_mlp_s{s}", ["env=swimmer_gym", "policy=mlp", f"seed={s}",
                                               f"algo.total_timesteps={mlp_steps}", "algo.eval_every=25000",
                                               "algo.checkpoint_every=0"]) for s in SEEDS],
        "ncap": [jobs.submit(f"gym_ncap_s{s}", ["env=swimmer_gym", "policy=ncap", f"seed={s}",
                                                 f"algo.total_timesteps={ncap_steps}", "algo.eval_every=10000",
                                                 "algo.checkpoint_every=0"]) for s in SEEDS],
    }


def section_gym(out: dict, runs: dict[str, list[Path]], quick: bool) -> None:
    res = {}
    env_cfg = {"name": "swimmer_gym", "id": "embodied/SwimmerGym-v5"}
    policy, env = untrained(["env=swimmer_gym", "policy=ncap", "policy.actor.oscillator_period=80"], env_cfg, 0)
    res["ncap_untrained_T80"] = mean_std(run_episodes(env, policy, 3 if quick else 10, seed=EVAL_SEED_BASE).returns)
    env.close()
    for label, paths in runs.items():
        finals = [summary(p)["return_mean"] for p in paths]
        res[label] = {"final_return": mean_std(finals), "params": summary(paths[0])["params"],
                      "steps": summary(paths[0])["steps"], "per_seed": finals}
        print(f"  gym {label}: {np.mean(finals):.1f} ± {np.std(finals):.1f}", flush=True)
    res["zoo"] = {k: {"mean": v[0], "std": v[1]} for k, v in ZOO_SWIMMER.items()}
    out["gym"] = res


# --- report --------------------------------------------------------------------------------
def fmt(x, nd=0) -> str:
    if x is None:
        return "not reached"
    if isinstance(x, dict):
        return f"{x['mean']:.{nd}f} ± {x['std']:.{nd}f}"
    return f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}"


def write_markdown(out: dict, path: Path) -> None:
    L = ["# NCAP vs MLP on the swimmer", "",
         f"Generated by `python benchmarks/swimmer_ncap.py` on {out['date']} "
         f"({'QUICK mode: small budgets, not the reference numbers' if out['quick'] else 'full budgets'}).",
         f"Machine: {out['machine']['cpu']}, {out['machine']['cores']} cores, Python {out['machine']['python']}, "
         f"torch {out['machine']['torch']}, MuJoCo {out['machine']['mujoco']}, SB3 {out['machine']['sb3']}. "
         f"Training seeds {SEEDS}; evaluation episodes use env seeds 10000+i, deterministic actions. "
         "Returns are out of 1000 on the swim task. Raw data: `swimmer_ncap.json`.", ""]
    if "init" in out and "curves" in out:
        c, i = out["curves"], out["init"]
        n_ncap, n_mlp = c["ncap"]["steps_to_mean_curve"]["850"], c["mlp"]["steps_to_mean_curve"]["850"]
        L += ["## Headline", "",
              f"- Untrained NCAP (4 weights at +-1): {fmt(i['ncap'], 1)}; untrained MLP: {fmt(i['mlp'], 1)}.",
              f"- MLP + PPO after {c['mlp']['per_seed'][0]['steps']:,} env steps: {fmt(c['mlp']['final_return'], 1)} "
              f"({c['mlp']['params']:,} trainable actor parameters).",
              f"- NCAP + PPO after {c['ncap']['per_seed'][0]['steps']:,} env steps: {fmt(c['ncap']['final_return'], 1)} "
              f"({c['ncap']['params']} trainable actor parameters); the shared 4-weight circuit plateaus below the MLP.",
              f"- Env steps to a return of 850: NCAP {fmt(n_ncap)}, MLP {fmt(n_mlp)}"
              + (f" (NCAP needs 1/{n_mlp / n_ncap:.1f} of the MLP's steps)." if n_ncap and n_mlp else "."), ""]
    if "init" in out:
        i = out["init"]
        L += [f"## Return at initialisation (6-link swim, {i['ncap']['n']} seeds)", "",
              "| policy | return | min | max |", "|---|---|---|---|",
              f"| NCAP (constant init) | {fmt(i['ncap'], 1)} | {min(i['ncap']['returns']):.0f} | {max(i['ncap']['returns']):.0f} |",
              f"| MLP (random init) | {fmt(i['mlp'], 1)} | {min(i['mlp']['returns']):.0f} | {max(i['mlp']['returns']):.0f} |",
              "", i["note"], ""]
    if "curves" in out:
        c = out["curves"]
        L += ["## Learning curves with PPO (6-link swim)", "", "![curves](swimmer_ncap_curves.png)", "",
              "| policy | trainable actor params | env steps | final return | steps to 800 | steps to 850 | steps to 900 | training env steps/s* |",
              "|---|---|---|---|---|---|---|---|"]
        names = {"ncap": "NCAP, tuned PPO (sigma 0.5)", "mlp": "MLP 64x64, PPO",
                 "ncap_paper": "NCAP, paper sigma 0.1, base PPO settings (lr 3e-4, 4x1024 steps/update)"}
        for key, name in names.items():
            if key not in c:
                continue
            d = c[key]
            st = d["steps_to_mean_curve"]
            sps = np.mean([p["env_steps_per_s"] for p in d["per_seed"]])
            L.append(f"| {name} | {d['params']} | {d['per_seed'][0]['steps']:,} | {fmt(d['final_return'], 1)} | "
                     f"{fmt(st['800'])} | {fmt(st['850'])} | {fmt(st['900'])} | {sps:,.0f} |")
        L += ["", "*Includes the periodic evaluations, with two training runs sharing the two cores; see the "
              "throughput section for a clean measurement.", "",
              "Final return: mean ± std over seeds of each seed's 10-episode deterministic evaluation. Steps to a "
              "return are read off the seed-mean evaluation curve (NCAP evaluated every 2,500 steps, MLP and the "
              "paper-sigma NCAP every 5,000 / 10,000). Per seed:", ""]
        for key, name in names.items():
            if key in c:
                L.append(f"- {name}: " + "; ".join(f"{t}: {c[key]['steps_to_per_seed'][str(t)]}" for t in THRESHOLDS))
        if "ncap" in c and "mlp" in c and c["ncap"]["steps_to_mean_curve"]["850"] and c["mlp"]["steps_to_mean_curve"]["850"]:
            ratio = c["mlp"]["steps_to_mean_curve"]["850"] / c["ncap"]["steps_to_mean_curve"]["850"]
            L += ["", f"NCAP reaches 850 in 1/{ratio:.1f} of the env steps the MLP needs."]
        L.append("")
    if "transfer" in out:
        L += ["## Transfer across body lengths", "",
              f"One NCAP trained on 6 links (`{out['transfer']['source_run']}`) run unchanged on other lengths, "
              "beside the untrained circuit and an NCAP trained at each length "
              f"({out['budgets']['transfer_steps']:,} env steps, tuned NCAP PPO, seed 0). "
              f"{out['budgets']['transfer_episodes']} deterministic episodes each.", "",
              "| n_links | joints | untrained | zero-shot from 6 links | trained at n |", "|---|---|---|---|---|"]
        for r in out["transfer"]["rows"]:
            L.append(f"| {r['n_links']} | {r['n_links'] - 1} | {fmt(r['untrained'])} | {fmt(r['zero_shot_from_6'])} | "
                     f"{fmt(r['trained_at_n'])} |")
        L.append("")
    if "ablations" in out:
        L += ["## Ablations (the paper's 2^3 grid)", "",
              f"At init: {out['budgets']['ablation_draws']} draws (random inits differ per draw; constant inits only by "
              f"env seed). After training: tuned NCAP PPO, {out['budgets']['ablation_steps']:,} env steps, "
              f"{min(2, len(out['seeds']))} seeds, final deterministic return (10 episodes each).", "",
              "| weight sharing | sign constraints | constant init | params | return at init (mean ± std, median) | after training |",
              "|---|---|---|---|---|---|"]
        for r in out["ablations"]:
            L.append(f"| {r['weight_sharing']} | {r['sign_constraints']} | {r['constant_init']} | {r['params']} | "
                     f"{fmt(r['init'])} ({r['init']['median']:.0f}) | {fmt(r['trained'])} |")
        L.append("")
    if "robustness" in out:
        L += ["## Robustness to fluid density", "",
              f"Policies trained at density 3000 (the {len(out['seeds'])} seeds of the learning curves), evaluated at "
              f"0.5x and 2x, {out['budgets']['robustness_episodes']} episodes per seed; mean ± std over seeds.", "",
              "| policy | 0.5x (1500) | 1x (3000) | 2x (6000) |", "|---|---|---|---|"]
        for label in ("ncap", "mlp"):
            r = out["robustness"][label]
            L.append(f"| {label.upper()} | {fmt(r['0.5'])} | {fmt(r['1.0'])} | {fmt(r['2.0'])} |")
        L.append("")
    if "throughput" in out:
        t = out["throughput"]
        L += ["## Throughput (measured in one process, one after another)", "",
              "| what | env steps/s |", "|---|---|",
              f"| raw env steps (zero action, 1 env, 15 physics steps each) | {t['raw_env_steps_per_s']:,.0f} |",
              f"| PPO training, NCAP ({t['ppo_ncap_settings']}) | {t['ppo_ncap_env_steps_per_s']:,.0f} |",
              f"| PPO training, MLP ({t['ppo_mlp_settings']}) | {t['ppo_mlp_env_steps_per_s']:,.0f} |", ""]
    if "gym" in out:
        g = out["gym"]
        L += ["## Stock Swimmer-v5 (gymnasium), beside the RL Zoo", "",
              "PPO with the RL Zoo's tuned Swimmer hyperparameters (gamma 0.9999, gae 0.98, lr 6e-4, 4 envs x 1024, "
              "batch 256, normalised obs and reward) for the MLP; NCAP with its own PPO settings, gamma 0.9999, "
              f"oscillator period 80. Ours: {len(out['seeds'])} seeds, 10 deterministic episodes each. The Zoo's numbers are Swimmer-v3, "
              "one run each, 150 episodes (benchmark.md).", "",
              "| agent | params | env steps | return |", "|---|---|---|---|",
              f"| MLP + PPO (ours) | {g['mlp']['params']} | {g['mlp']['steps']:,} | {fmt(g['mlp']['final_return'], 1)} |",
              f"| NCAP + PPO (ours) | {g['ncap']['params']} | {g['ncap']['steps']:,} | {fmt(g['ncap']['final_return'], 1)} |",
              f"| NCAP untrained, period 80 (ours) | 4 | 0 | {fmt(g['ncap_untrained_T80'], 1)} |"]
        for k, v in g["zoo"].items():
            L.append(f"| RL Zoo {k} (published) | | 1M-2M | {v['mean']} ± {v['std']} |")
        L.append("")
    path.write_text("\n".join(L) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--quick", action="store_true", help="small budgets, to check the script end to end")
    parser.add_argument("--only", default="init,curves,transfer,ablations,robustness,throughput,gym")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sections = set(args.only.split(","))
    global WORK, SEEDS, TRANSFER_LENGTHS
    WORK = WORK / ("quick" if args.quick else "full")
    if args.quick:
        SEEDS, TRANSFER_LENGTHS = [0], [4, 6, 8]
    if args.quick and args.out == RESULTS:
        args.out = WORK / "results"  # quick numbers never overwrite the committed tables
    WORK.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "swimmer_ncap.json"
    out = json.loads(json_path.read_text()) if json_path.is_file() else {}
    out.update({"date": dt.date.today().isoformat(), "quick": args.quick, "machine": machine(), "seeds": SEEDS,
                "budgets": budgets(args.quick)})

    if "throughput" in sections:  # first, while no training job shares the cores
        section_throughput(out, args.quick)
    jobs = Jobs(WORK, args.jobs)
    need_curves = sections & {"curves", "robustness", "transfer"}
    curves = curve_runs(jobs, args.quick) if need_curves else None
    transfer = transfer_runs(jobs, args.quick) if "transfer" in sections else None
    ablations = ablation_runs(jobs, args.quick) if "ablations" in sections else None
    gym_r = gym_runs(jobs, args.quick) if "gym" in sections else None
    if "init" in sections:
        section_init(out, args.quick)
    jobs.wait()
    if "curves" in sections:
        section_curves(out, curves)
        plot_curves(out, args.out / "swimmer_ncap_curves.png")
        key = "swimmer:swim:6:3000.0"
        out["reference_curves"] = {key: {
            f"MLP + PPO (benchmark, mean of {len(SEEDS)} seeds)": out["curves"]["mlp"]["mean_curve"],
        }}
        if not args.quick:  # the curve agents.train draws beside a run on the same env
            write_json_atomic(REFERENCE_CURVES, out["reference_curves"])
    if transfer:
        section_transfer(out, transfer, curves["ncap"][0], args.quick)
    if ablations:
        section_ablations(out, ablations, args.quick)
    if "robustness" in sections:
        section_robustness(out, curves, args.quick)
    if gym_r:
        section_gym(out, gym_r, args.quick)
    write_json_atomic(json_path, out)
    write_markdown(out, args.out / "swimmer_ncap.md")
    print(f"wrote {args.out / 'swimmer_ncap.md'}")


if __name__ == "__main__":
    main()
