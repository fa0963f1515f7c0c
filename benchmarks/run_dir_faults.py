"""Re-tries the run-directory faults through the CLI and records each outcome; regenerates benchmarks/results/run_dir_faults.{md,json}.

    python benchmarks/run_dir_faults.py [--only collisions,reruns,stops,pickles,bundles]

Each fault is what a user (or a scheduler, or an attacker) does to a run directory: two runs
started in the same second, a rerun into an existing directory, SIGTERM then a rerun for every
trainer, crafted pickles in every file, damaged policy bundles. The table says what the CLI did:
exit code, the one line it printed, and what was checked on disk. Scratch runs go to
``benchmarks/.work/run_dir_faults`` (removed and made again on each invocation).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, shown_path, write_json_atomic  # noqa: E402
from policies.bundle import file_sha256  # noqa: E402
from policies.run_dir import RunDir  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "run_dir_faults"
RESULTS = ROOT / "benchmarks" / "results"
FAST = ["algo.n_envs=4", "algo.sb3.n_steps=256", "algo.sb3.batch_size=512", "algo.sb3.n_epochs=4",
        "algo.eval_every=1024", "algo.eval_episodes=1", "algo.final_eval_episodes=1", "algo.checkpoint_every=1024",
        "threads=1", "progress_bar=false"]
PPO = ["env=swimmer", "policy=ncap", "algo.total_timesteps=2048", *FAST]
POP = ["env=swimmer", "policy=ncap", "algo.horizon=50", "algo.total_timesteps=6000", "algo.eval_every=400",
       "algo.eval_episodes=1", "algo.final_eval_episodes=1", "algo.checkpoint_every=1200", "threads=1",
       "progress_bar=false"]
TRAINERS = {
    "ppo": ["env=swimmer", "policy=ncap", "algo.total_timesteps=8192", *FAST],
    "sac": ["env=uav_hover", "policy=mlp", "algo=sac", "algo.total_timesteps=3000", "algo.sb3.learning_starts=200",
            "algo.sb3.buffer_size=5000", "algo.eval_every=500", "algo.eval_episodes=1", "algo.final_eval_episodes=1",
            "algo.checkpoint_every=1000", "env.episode_seconds=1", "threads=1", "progress_bar=false"],
    "grpo": [*POP, "algo=grpo", "algo.groups=2", "algo.group_size=4"],
    "es": [*POP, "algo=es", "algo.population=8"],
    "bc": ["env=kitchen", "policy=mtact", "algo=bc", "algo.total_steps=12", "algo.eval_every=2", "algo.eval_episodes=0",
           "algo.final_eval_episodes=1", "algo.demos_per_task=2", "algo.val_fraction=0.5", "algo.batch_size=8",
           "algo.warmup_steps=2", "algo.log_every=0", "algo.eval_workers=1", "policy.actor.hidden=32",
           "policy.actor.ffn=64", "policy.actor.heads=2", "policy.actor.enc_layers=1", "policy.actor.dec_layers=2",
           "policy.actor.cvae_layers=1", "policy.actor.backbone_width=8", "policy.actor.chunk=5"],
}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}


def cli(*args: str, cwd: Path = WORK, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:220] if lines else ""


def metric_steps(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(float(r["steps"])) for r in csv.DictReader(f)]


def row(fault: str, command: str, outcome: str, ok: bool, detail: str = "") -> dict:
    outcome = outcome.replace(str(WORK), shown_path(WORK))  # the table does not depend on where the checkout lies
    print(f"  {'ok ' if ok else 'BAD'} {fault}: {outcome}", flush=True)
    return {"fault": fault, "command": command, "outcome": outcome, "as_required": ok, "detail": detail}


def trained(name: str, args: list[str]) -> Path:
    run = WORK / name
    result = cli("agents.train", *args, f"hydra.run.dir={run}")
    if result.returncode != 0:
        raise RuntimeError(f"training {name} failed: {result.stderr[-2000:]}")
    return run


# --- the faults ----------------------------------------------------------------------------------


def collisions() -> list[dict]:
    base = WORK / "together"
    base.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "agents.train", *PPO], cwd=base, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(timeout=900) for p in procs]
    runs = sorted((base / "runs" / "swimmer_ncap_ppo").iterdir())
    steps = [metric_steps(r) for r in runs]
    same_second = len({r.name.split("_seed")[0] for r in runs}) == 1
    clean = all(s == sorted(set(s)) for s in steps)
    return [row("two runs, same seed, started together", "2 x `python -m agents.train` at once",
                f"exit {codes}; directories {', '.join(r.name for r in runs)}"
                f"{' (same second)' if same_second else ''}; no metrics row twice: {clean}",
                codes == [0, 0] and len(runs) == 2 and clean)]


def reruns() -> list[dict]:
    out = []
    done = trained("finished", PPO)
    r = cli("agents.train", *PPO, f"hydra.run.dir={done}")
    out.append(row("rerun into a finished run", "same command, `hydra.run.dir=<run>`",
                   f"exit {r.returncode}: `{last_line(r.stderr)}`", r.returncode == 2))
    changed = WORK / "changed"
    shutil.copytree(done, changed)
    (changed / "summary.json").unlink()
    r = cli("agents.train", *PPO, "seed=1", f"hydra.run.dir={changed}")
    out.append(row("rerun with another config", "`seed=1`, `hydra.run.dir=<stopped run>`",
                   f"exit {r.returncode}: `{last_line(r.stderr)}`", r.returncode == 2))
    lost = WORK / "lost"
    shutil.copytree(done, lost)
    (lost / "summary.json").unlink()
    shutil.rmtree(lost / "checkpoints" / "last")
    before = (lost / "metrics.csv").read_bytes()
    r = cli("agents.train", *PPO, f"hydra.run.dir={lost}")
    untouched = (lost / "metrics.csv").read_bytes() == before
    out.append(row("rerun into results with nothing to resume", "`hydra.run.dir=<run without checkpoints/last>`",
                   f"exit {r.returncode}: `{last_line(r.stderr)}`; metrics.csv untouched: {untouched}",
                   r.returncode == 2 and untouched))
    late = WORK / "late"
    late.mkdir()
    r = cli("agents.train", *PPO, "+algo.sb3.bogus=1", cwd=late)
    left = [p for p in (late / "runs").rglob("*") if p.is_dir() and "seed" in p.name] if (late / "runs").exists() else []
    out.append(row("config error found after the run directory exists", "`+algo.sb3.bogus=1` (SB3 refuses it)",
                   f"exit {r.returncode}: `{last_line(r.stderr)}`; run directories left: {len(left)}",
                   r.returncode == 2 and not left))
    return out


def stops(dataset: Path) -> list[dict]:
    out = []
    for algo, args in TRAINERS.items():
        args = [*args, *([f"dataset={dataset}"] if algo == "bc" else [])]
        run = WORK / f"stop_{algo}"
        proc = subprocess.Popen([sys.executable, "-m", "agents.train", *args, f"hydra.run.dir={run}"], cwd=WORK,
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if (run / "metrics.csv").is_file() and len(metric_steps(run)) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        stopped_at = next((ln for ln in err.splitlines() if "stopped by SIGTERM" in ln), "")
        before = metric_steps(run)
        t0 = time.time()
        r = cli("agents.train", *args, f"hydra.run.dir={run}")
        after = metric_steps(run)
        final = RunDir(run).read_summary()["steps"] if RunDir(run).finished else None
        continued = after == sorted(set(after)) and after[:1] == before[:1] and after[-1] == final
        ok = proc.returncode == 128 + signal.SIGTERM and r.returncode == 0 and continued
        out.append(row(f"SIGTERM then resume: {algo}", "SIGTERM mid-run, then the printed command",
                       f"exit {proc.returncode} (`{stopped_at.split(';')[0]}`), rerun exit {r.returncode} in "
                       f"{time.time() - t0:.0f} s; metrics steps {before} -> {after}", ok))
    return out


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickles() -> list[dict]:
    source = trained("pickle_source", PPO)
    run = WORK / "poisoned"
    shutil.copytree(source, run)
    (run / "summary.json").unlink()
    marker = WORK / "CODE_RAN"
    payload = pickle.dumps(_Payload(marker))
    files = [p for p in run.rglob("*") if p.is_file()]
    for path in files:
        path.write_bytes(payload)
    for name in ("final", "last"):
        for extra in ("vecnormalize.pkl", "model.zip", "trainer_state.pt"):
            (run / "checkpoints" / name / extra).write_bytes(payload)
    out = []
    for what, args in (("evaluate", ["agents.evaluate", f"run={run}", "episodes=1"]),
                       ("resume", ["agents.train", *PPO, f"hydra.run.dir={run}"]),
                       ("init_from", ["agents.train", "env=swimmer", "policy=ncap", "algo.total_timesteps=1024", *FAST,
                                      f"init_from={run}"])):
        r = cli(*args)
        out.append(row(f"crafted pickle in every file ({len(files)} files + 6 old pickle names): {what}",
                       f"`python -m {args[0]} ...`", f"exit {r.returncode}: `{last_line(r.stderr)}`; "
                       f"code ran: {marker.exists()}", r.returncode == 2 and not marker.exists()))
    return out


def bundles() -> list[dict]:
    from safetensors.torch import load_file, save_file

    source = trained("bundle_source", ["env=swimmer", "policy=mlp", "algo.total_timesteps=1024", *FAST])
    out = []

    def damaged(name: str, damage) -> None:
        run = WORK / ("bundle_" + re.sub(r"\W+", "_", name))
        shutil.copytree(source, run)
        final = RunDir(run).policy()
        damage(final)
        r = cli("agents.evaluate", f"run={run}", "episodes=1")
        one_line = len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1
        out.append(row(f"bundle: {name}", "`python -m agents.evaluate run=<run>`",
                       f"exit {r.returncode}: `{last_line(r.stderr)}`", r.returncode == 2 and one_line))

    def rewrite(final: Path, tensors: dict) -> None:
        save_file(tensors, str(final / "policy.safetensors"))
        meta = json.loads((final / "policy.json").read_text())
        meta["weights"]["sha256"] = file_sha256(final / "policy.safetensors")
        (final / "policy.json").write_text(json.dumps(meta))

    def edit_meta(final: Path, **changes) -> None:
        meta = json.loads((final / "policy.json").read_text())
        meta.update(changes)
        (final / "policy.json").write_text(json.dumps(meta))

    def flip(final: Path) -> None:
        data = bytearray((final / "policy.safetensors").read_bytes())
        data[-1] ^= 0x80  # a sign bit: still a valid file, a different policy
        (final / "policy.safetensors").write_bytes(bytes(data))

    def truncate(final: Path) -> None:
        data = (final / "policy.safetensors").read_bytes()
        (final / "policy.safetensors").write_bytes(data[: len(data) // 2])

    def nan(final: Path) -> None:
        tensors = load_file(str(final / "policy.safetensors"))
        tensors["actor.net.0.weight"][0, 0] = float("nan")
        rewrite(final, tensors)

    def inverted(final: Path) -> None:
        meta = json.loads((final / "policy.json").read_text())
        edit_meta(final, action_low=meta["action_high"], action_high=meta["action_low"])

    def missing_stats(final: Path) -> None:
        tensors = load_file(str(final / "policy.safetensors"))
        rewrite(final, {k: v for k, v in tensors.items() if k != "obs_var"})

    for name, damage in (("one flipped bit in the weights", flip), ("truncated weights", truncate),
                         ("a NaN weight, rehashed", nan), ("inverted action bounds", inverted),
                         ("normalisation statistics missing", missing_stats)):
        damaged(name, damage)
    return out


def collect_dataset() -> Path:
    data = WORK / "dataset"
    for task in ("light_switch", "microwave"):
        r = cli("agents.collect", f"task={task}", "episodes=2", "env.image_size=32", f"out={data}", "workers=1")
        if r.returncode != 0:
            raise RuntimeError(f"collecting {task} failed: {r.stderr[-2000:]}")
    return data


SECTIONS = ("collisions", "reruns", "stops", "pickles", "bundles")


def write_markdown(out: dict, path: Path) -> None:
    m = out["machine"]
    lines = ["# Run-directory faults, re-tried", "",
             f"Generated by `python benchmarks/run_dir_faults.py` on {out['date']}: {m['cpu']}, {m['cores']} cores, "
             f"torch {m['torch']}, mujoco {m['mujoco']}. Each row is one fault done to a run directory through the "
             "CLI, and what the CLI did.", "",
             "| fault | how | outcome | as required |", "|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['fault']} | {r['command']} | {r['outcome'].replace('|', '/')} | "
                     f"{'yes' if r['as_required'] else '**no**'} |")
    lines += ["", f"{sum(r['as_required'] for r in out['rows'])} of {len(out['rows'])} as required.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sections = args.only.split(",")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    json_path = args.out / "run_dir_faults.json"
    kept = json.loads(json_path.read_text())["rows"] if json_path.is_file() else []
    rows = [r for r in kept if r["section"] not in sections]  # the sections not re-tried stay as recorded
    for section in sections:
        print(f"{section}:", flush=True)
        new = stops(collect_dataset()) if section == "stops" else globals()[section]()
        rows += [{"section": section, **r} for r in new]
    rows.sort(key=lambda r: SECTIONS.index(r["section"]))
    out = {"date": dt.date.today().isoformat(), "machine": machine(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, out)
    write_markdown(out, args.out / "run_dir_faults.md")
    print(f"wrote {args.out / 'run_dir_faults.md'}: {sum(r['as_required'] for r in rows)} of {len(rows)} as required")


if __name__ == "__main__":
    main()
