"""ROS 2 deployment benchmark: latency, missed ticks, CPU, distance, malformed input.

Regenerates ``benchmarks/results/ros_latency.{md,json}``:

1. **Latency.** The sim robot node and the policy node as two processes on loopback DDS, real
   time, at 100 Hz and 500 Hz, NCAP and MLP, >= 10,000 counted ticks each (after a warm-up).
   The sim measures, per state it publishes, the delay until the first command after it arrives
   (state->command) and counts ticks that came without a fresh command (missed). CPU use of both
   processes over the measured window. Beside it, the floor: the same policy work (observation
   from the state message, inference, clamp) called in-process at the same rate.
2. **Distance.** NCAP swimming over ROS 2 vs the same policy in-process from the same state for
   the same simulated time, in real time and in lock-step sim time.
3. **Malformed input.** 10,000 random malformed ``joint_states`` (plus valid ones) published to
   a policy node over DDS: the node must survive and every command must stay within limits.

Policies: the swimmer benchmark's trained runs (``benchmarks/.work/full/curve_{ncap,mlp}_s0``)
when present, else short runs trained here. ``--quick`` shortens everything (not the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ros_ws" / "src" / "embodied_ros"))
sys.path.insert(0, str(ROOT))

import gymnasium as gym
import psutil
import rclpy
import torch
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool

import envs
from benchmarks.common import machine, shown_path
from embodied_ros.adapters import SwimmerAdapter
from embodied_ros.malformed import random_malformed
from embodied_ros.monitor import RobotMonitor
from embodied_ros.reference import in_process_distance
from policies.bundle import read_meta
from policies.protocol import EnvInterface
from policies.registry import load_policy
from policies.run_dir import RunDir

WORK = ROOT / "benchmarks" / ".work" / "ros"
RESULTS = ROOT / "benchmarks" / "results"
WARMUP_TICKS = 200


# --- processes ---------------------------------------------------------------------------------
def graph_env(work: Path) -> dict:
    """An isolated ROS graph for the nodes started by one measurement."""
    home = Path(tempfile.mkdtemp(prefix="ros_home_", dir=work))
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(random.randint(1, 101)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_HOME=str(home),
        ROS_LOG_DIR=str(home / "log"), AMENT_PREFIX_PATH=sys.prefix, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "ros_ws" / "src" / "embodied_ros"), str(ROOT)]),
    )
    return env


def start_node(module: str, params: dict, env: dict, log: Path) -> subprocess.Popen:
    args = [f"{k}:={json.dumps(v) if isinstance(v, bool) else v}" for k, v in params.items()]
    cmd = [sys.executable, "-m", f"embodied_ros.{module}", "--ros-args", "-r", "__ns:=/robot"]
    for a in args:
        cmd += ["-p", a]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Graph:
    """This process's rclpy context on the same isolated graph as the nodes it measures."""

    def __init__(self, env: dict):
        os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_HOME")})
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.monitor = RobotMonitor(self.context, name="bench")

    def close(self):
        self.monitor.close()
        rclpy.try_shutdown(context=self.context)


def cpu_seconds(procs: list[psutil.Process]) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in procs]


# --- policies ------------------------------------------------------------------------------------
def policy_dirs(quick: bool) -> dict[str, Path]:
    out = {}
    for kind, steps in (("ncap", 20_000), ("mlp", 60_000)):
        reference = ROOT / "benchmarks" / ".work" / "full" / f"curve_{kind}_s0"
        if RunDir(reference).has_policy():
            out[kind] = reference
            continue
        run = WORK / f"train_{kind}"
        if not RunDir(run).has_policy():
            print(f"training a {kind} policy for the benchmark ({steps} steps)", flush=True)
            subprocess.run([sys.executable, "-m", "agents.train", "env=swimmer", f"policy={kind}",
                            f"algo.total_timesteps={steps}", "seed=0", f"hydra.run.dir={run}"], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        out[kind] = run
    return out


def summarize_ms(values_us: list[int]) -> dict:
    a = np.asarray(values_us, dtype=np.float64) / 1e3
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


# --- 1. latency ----------------------------------------------------------------------------------
def latency_run(run: Path, rate: float, ticks: int, inference: str, priority: int, tag: str) -> dict:
    work = WORK / tag
    work.mkdir(parents=True, exist_ok=True)
    env = graph_env(work)
    stats_file = work / "stats.json"
    stats_file.unlink(missing_ok=True)
    sim = start_node("sim_node", {"run_dir": run, "rate": float(rate), "stats_file": stats_file,
                                  "warmup_ticks": WARMUP_TICKS, "stop_after_ticks": ticks,
                                  "realtime_priority": priority}, env, work / "sim.log")
    pol = start_node("policy_node", {"run_dir": run, "rate": float(rate), "inference": inference,
                                     "realtime_priority": priority}, env, work / "policy.log")
    graph = Graph(env)
    try:
        graph.monitor.wait_for(lambda: graph.monitor.commands, 120, f"{tag}: first command")
        time.sleep(WARMUP_TICKS / rate + 0.5)
        procs = [psutil.Process(sim.pid), psutil.Process(pol.pid)]
        c0, t0 = cpu_seconds(procs), time.monotonic()
        time.sleep(max(1.0, 0.8 * ticks / rate))
        c1, t1 = cpu_seconds(procs), time.monotonic()
        sim.wait(timeout=ticks / rate * 2 + 60)
    finally:
        graph.close()
        stop(sim)
        rc_policy = stop(pol)
    stats = json.loads(stats_file.read_text())
    return {
        "rate_hz": rate, "inference": inference, "realtime_priority": priority, "ticks": stats["answered"] + stats["missed_ticks"],
        "missed_ticks": stats["missed_ticks"], "overruns": stats["overruns"],
        "state_to_command_ms": summarize_ms(stats["latencies_us"]),
        "sample_to_command_ms": summarize_ms(stats["sample_latencies_us"]),
        "cpu_percent": {"sim": 100 * (c1[0] - c0[0]) / (t1 - t0), "policy": 100 * (c1[1] - c0[1]) / (t1 - t0)},
        "policy_exit_code": rc_policy,
    }


def in_process_floor(run: Path, rate: float, ticks: int, inference: str, priority: int) -> dict:
    """The policy node's work per tick (observation from the message, inference, clamp), no ROS.

    Run on this process's main thread with the same scheduling as the nodes it is set beside.
    """
    policy_dir = RunDir(run).policy()
    meta = read_meta(policy_dir)
    cfg = {**meta.env, "control_timestep": 1.0 / rate}
    adapter = SwimmerAdapter(cfg)
    env = envs.make_from_config(cfg).unwrapped
    env.reset(seed=0)
    policy = load_policy(policy_dir, EnvInterface.of(adapter.env))
    forward = policy.numpy_forward() if inference == "numpy" else policy.act
    low, high = adapter.action_low, adapter.action_high
    work_us = []
    if priority > 0:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    period = 1.0 / rate
    deadline = time.perf_counter()
    for step in range(ticks + WARMUP_TICKS):
        deadline += period
        delay = deadline - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        msg = adapter.encode_state(env, step + 1)["joint_states"]
        start = time.perf_counter()
        action = np.clip(forward(adapter.observation({"joint_states": msg}, step)), low, high)
        if step >= WARMUP_TICKS:
            work_us.append((time.perf_counter() - start) * 1e6)
        env.step(action)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return summarize_ms(work_us)


# --- 2. distance ---------------------------------------------------------------------------------
def distance_run(run: Path, seed: int, steps: int, real_time: bool, tag: str) -> dict:
    work = WORK / tag
    work.mkdir(parents=True, exist_ok=True)
    env = graph_env(work)
    sim = start_node("sim_node", {"run_dir": run, "seed": seed, "real_time": real_time,
                                  "use_sim_time": not real_time}, env, work / "sim.log")
    pol = start_node("policy_node", {"run_dir": run, "enabled": False, "use_sim_time": not real_time}, env,
                     work / "policy.log")
    graph = Graph(env)
    m = graph.monitor
    try:
        m.wait_for(lambda: len(m.states) > 3, 120, f"{tag}: states")
        m.wait_for(lambda: m.diagnostics, 60, f"{tag}: policy up")
        m.call(SetBool, "/robot/policy/enable", SetBool.Request(data=True))
        with m.lock:
            first = len(m.states)
        m.wait_for(lambda: len(m.states) > first + steps, steps * 0.1 + 60, f"{tag}: {steps} states")
        with m.lock:
            start, end = m.states[first], m.states[first + steps]
    finally:
        graph.close()
        stop(sim)
        stop(pol)
    adapter = SwimmerAdapter(RunDir.env_config_of(run))
    ros = float(np.linalg.norm(adapter.head_xy(end) - adapter.head_xy(start)))
    ref = in_process_distance(RunDir(run).policy(), start, steps)
    return {"seed": seed, "real_time": real_time, "steps": steps, "ros_m": ros, "in_process_m": ref,
            "ratio": ros / ref}


# --- 3. malformed input --------------------------------------------------------------------------
def fuzz_run(run: Path, n_malformed: int, tag: str) -> dict:
    work = WORK / tag
    work.mkdir(parents=True, exist_ok=True)
    env = graph_env(work)
    limit = 0.5
    pol = start_node("policy_node", {"run_dir": run, "action_limit": limit}, env, work / "policy.log")
    graph = Graph(env)
    m = graph.monitor
    pub = m.node.create_publisher(JointState, "/robot/joint_states", 100)
    adapter = SwimmerAdapter(RunDir.env_config_of(run))
    sim = gym.make(adapter.env_config["id"]).unwrapped
    sim.reset(seed=0)
    rng = np.random.default_rng(0)
    try:
        m.wait_for(lambda: m.diagnostics and pub.get_subscription_count() > 0, 120, f"{tag}: policy up")
        sent_valid = sent_bad = 0
        while sent_bad < n_malformed:
            now = m.node.get_clock().now().nanoseconds
            if (sent_bad + sent_valid) % 11 == 0:
                sim.step(rng.uniform(-1, 1, adapter.command_size))
                pub.publish(adapter.encode_state(sim, now)["joint_states"])
                sent_valid += 1
            else:
                pub.publish(random_malformed(rng, adapter.encode_state(sim, now)["joint_states"], now))
                sent_bad += 1
            time.sleep(0.001)
        time.sleep(2.5)  # a diagnostics period after the last message
        alive = pol.poll() is None
        with m.lock:
            commands = np.array([c for _, c in m.commands])
            diag = m.diagnostics[-1]
    finally:
        graph.close()
        rc = stop(pol)
    return {"malformed_sent": sent_bad, "valid_sent": sent_valid, "rejected_by_node": int(diag["rejected_messages"]),
            "commands": int(commands.shape[0]), "max_abs_command": float(np.abs(commands).max()),
            "action_limit": limit, "all_finite": bool(np.all(np.isfinite(commands))),
            "alive_after": alive, "exit_code": rc}


# --- report --------------------------------------------------------------------------------------
def write_markdown(out: dict, path: Path) -> None:
    mach = out["machine"]
    best = next(r for r in out["latency"] if r["policy"] == "ncap" and r["rate_hz"] == 100
                and r["inference"] == "numpy" and r["realtime_priority"])
    ratios = [r["ratio"] for r in out["distance"]]
    lines = [
        "# ROS 2 deployment: latency, distance, malformed input",
        "",
        f"**Headline.** NCAP at 100 Hz over ROS 2 (two processes, real time, SCHED_FIFO 50): state->command "
        f"p99 {best['state_to_command_ms']['p99']:.2f} ms, {best['missed_ticks']} missed ticks in "
        f"{best['ticks']:,}. Over ROS 2 NCAP swims {min(ratios):.3f}-{max(ratios):.3f} of the in-process "
        f"distance in the same simulated time. {out['fuzz']['malformed_sent']:,} malformed messages: node alive, "
        f"no command beyond the limit.",
        "",
        f"Generated by `python benchmarks/ros_latency.py{' --quick' if out['quick'] else ''}` on {out['date']}"
        f"{' (QUICK mode: short runs, not the reference numbers)' if out['quick'] else ''}.",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, torch {mach['torch']}, "
        f"MuJoCo {mach['mujoco']}, rclpy {out['rclpy']} (ROS 2 Jazzy wheels, Fast DDS, loopback). "
        f"Policies: `{out['policies']['ncap']}` (NCAP), `{out['policies']['mlp']}` (MLP). Raw data: `ros_latency.json`.",
        "",
        "## State -> command latency (sim robot and policy node as two processes, real time)",
        "",
        f"Counted ticks after {WARMUP_TICKS} warm-up ticks. *state->command*: from the sim handing the "
        "`joint_states` message to DDS to the first command arriving back in the sim. *sample->command* adds the "
        "sim's own encoding of the state. *Missed*: ticks at which no command for the previous state had arrived. "
        "*In-process floor*: the policy node's work (observation from the message, inference, clamp) called "
        "directly at the same rate and scheduling, no ROS. CPU: % of one core over the measured window. "
        "*SCHED_FIFO 50* is the nodes' `realtime_priority:=50` (needs root or an rtprio limit), as real-time "
        "ROS 2 control nodes run; *normal* is the default scheduling.",
        "",
        "| policy | inference | scheduling | rate | ticks | state->command p50 / p99 / max (ms) | "
        "sample->command p99 (ms) | missed | in-process floor p50 / p99 / max (ms) | CPU sim / policy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["latency"]:
        lat, flo = r["state_to_command_ms"], r["floor_ms"]
        lines.append(
            f"| {r['policy']} | {r['inference']} | "
            f"{'SCHED_FIFO ' + str(r['realtime_priority']) if r['realtime_priority'] else 'normal'} | "
            f"{r['rate_hz']:.0f} Hz | {r['ticks']:,} | "
            f"{lat['p50']:.3f} / {lat['p99']:.3f} / {lat['max']:.3f} | {r['sample_to_command_ms']['p99']:.3f} | "
            f"{r['missed_ticks']} | {flo['p50']:.3f} / {flo['p99']:.3f} / {flo['max']:.3f} | "
            f"{r['cpu_percent']['sim']:.0f}% / {r['cpu_percent']['policy']:.0f}% |"
        )
    lines += ["", "## Distance: NCAP over ROS 2 vs in-process, same start state, same simulated time", "",
              "The swimmer's native 33.3 Hz; 1000 steps = 30 s of simulated time, from the sim's reset state "
              "(seeds 0-2) once the policy is enabled.", "",
              "| mode | seed | steps | over ROS 2 (m) | in-process (m) | ratio |", "|---|---|---|---|---|---|"]
    for r in out["distance"]:
        mode = "real time" if r["real_time"] else "lock-step (/clock)"
        lines.append(f"| {mode} | {r['seed']} | {r['steps']} | {r['ros_m']:.3f} | {r['in_process_m']:.3f} | "
                     f"{r['ratio']:.3f} |")
    f = out["fuzz"]
    lines += ["", "## Malformed input over DDS", "",
              f"{f['malformed_sent']:,} random malformed `joint_states` (missing/renamed/duplicate joints, length "
              f"mismatches, NaN/inf/absurd values, zero/stale/future stamps) interleaved with {f['valid_sent']:,} valid "
              f"ones at ~1 kHz, to an NCAP policy node with `action_limit:=0.5`.", "",
              f"- rejected by the node: {f['rejected_by_node']:,}"
              + (" (the rest were superseded in the node's depth-1 queue before it read them)"
                 if f["rejected_by_node"] < f["malformed_sent"] else ""),
              f"- commands published: {f['commands']:,}; largest |command| {f['max_abs_command']:.3f} "
              f"(limit {f['action_limit']}); all finite: {f['all_finite']}",
              f"- node alive afterwards: {f['alive_after']}; exit code after SIGINT: {f['exit_code']}", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test, not the reference numbers)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the committed .json")
    args = parser.parse_args()
    name = "ros_latency_quick" if args.quick else "ros_latency"
    if args.report_only:
        write_markdown(json.loads((RESULTS / f"{name}.json").read_text()), RESULTS / f"{name}.md")
        return
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    runs = policy_dirs(args.quick)
    ticks = 1_000 if args.quick else 10_000
    out = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
           "machine": machine(), "rclpy": "7.1.6", "policies": {k: shown_path(v) for k, v in runs.items()},
           "latency": [], "distance": []}
    plan = [("ncap", 100, "numpy", 50), ("ncap", 100, "numpy", 0), ("ncap", 500, "numpy", 50),
            ("mlp", 100, "numpy", 50), ("mlp", 500, "numpy", 50), ("ncap", 100, "torch", 50)]
    floors = {}
    for kind, rate, inference, priority in plan:
        tag = f"latency_{kind}_{rate}_{inference}_rt{priority}"
        print(f"{tag}: {ticks} ticks over ROS 2 ...", flush=True)
        row = {"policy": kind, **latency_run(runs[kind], rate, ticks, inference, priority, tag)}
        key = (kind, rate, inference, priority)
        if key not in floors:
            floors[key] = in_process_floor(runs[kind], rate, ticks, inference, priority)
        row["floor_ms"] = floors[key]
        lat = row["state_to_command_ms"]
        print(f"  p50 {lat['p50']:.3f} p99 {lat['p99']:.3f} max {lat['max']:.3f} ms, missed {row['missed_ticks']}, "
              f"floor p99 {row['floor_ms']['p99']:.3f} ms, cpu {row['cpu_percent']}", flush=True)
        out["latency"].append(row)
    steps = 200 if args.quick else 1000
    for seed in (0, 1, 2):
        for real_time in (True, False):
            tag = f"distance_s{seed}_{'rt' if real_time else 'lockstep'}"
            print(f"{tag}: {steps} steps ...", flush=True)
            row = distance_run(runs["ncap"], seed, steps, real_time, tag)
            print(f"  ROS {row['ros_m']:.3f} m vs in-process {row['in_process_m']:.3f} m ({row['ratio']:.3f})", flush=True)
            out["distance"].append(row)
    print("fuzz ...", flush=True)
    out["fuzz"] = fuzz_run(runs["ncap"], 1_000 if args.quick else 10_000, "fuzz")
    print(f"  {out['fuzz']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    write_markdown(out, RESULTS / f"{name}.md")
    print(f"wrote {RESULTS / name}.md", flush=True)


if __name__ == "__main__":
    main()
