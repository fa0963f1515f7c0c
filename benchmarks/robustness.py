"""Fuzzes the three input surfaces and re-tries every named trap; regenerates benchmarks/results/robustness.{md,json}.

    python benchmarks/robustness.py [--cases 5000] [--seed 0] [--only overrides,bundles,datasets,named] [--check]

Hypothesis generates bad inputs for each surface, run in-process through the same functions the
CLIs call: command-line overrides (composed and validated as ``agents.train`` does, and for the
accepted ones the env and the policy built), policy bundles (valid ones mutated field by field
and byte by byte, then loaded and asked for an action) and demonstration datasets (a collected one
mutated, then read as training reads it). Each outcome is classified: a clear error (one line),
accepted (the input was valid, or harmless), a traceback, a hang, a silent wrong result (an input
the generator marks as harmful was accepted), a resource blow-up (memory grew by more than
``--max-growth-mb``), code execution (a pickle payload's marker appeared) or a leaked process.
``named`` re-tries through the real CLI every trap listed by issue 26. ``--check`` exits 1 if any
outcome is of the bad kinds; the test suite runs it with a small budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_json_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GOOD = ("clear error", "accepted", "as required")
BAD = ("traceback", "hang", "silent wrong result", "resource blow-up", "code execution", "leaked process")
CASE_SECONDS = 60  # a case taking longer is a hang


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_case(fn, harmful: bool, max_growth_mb: float, marker: Path | None = None) -> tuple[str, str]:
    """(outcome, detail) of ``fn()``: it raises a clear error, returns, or does something worse."""
    from agents.dataset import DatasetError
    from agents.errors import UserError
    from agents.trainer_state import TrainerStateError
    from policies.protocol import PolicyError

    before = rss_mb()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        fn()
        outcome, detail = ("silent wrong result", "accepted") if harmful else ("accepted", "")
    except Hang:
        outcome, detail = "hang", f"over {CASE_SECONDS} s"
    except (UserError, PolicyError, DatasetError, TrainerStateError) as e:
        text = str(e)
        outcome, detail = ("clear error", text[:160]) if "\n" not in text.strip() else ("traceback", "multi-line")
    except MemoryError:
        outcome, detail = "resource blow-up", "MemoryError"
    except Exception as e:  # noqa: BLE001 - any other exception is a traceback a user would see
        outcome, detail = "traceback", f"{type(e).__name__}: {str(e)[:120]}"
    finally:
        signal.alarm(0)
    if rss_mb() - before > max_growth_mb:
        outcome, detail = "resource blow-up", f"+{rss_mb() - before:.0f} MB"
    if marker is not None and marker.exists():
        marker.unlink()
        outcome, detail = "code execution", "a pickle payload ran"
    return outcome, detail


class Payload:
    """Unpickling this touches a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- values -------------------------------------------------------------------------------------


def values():
    """Override values as a user could type them, each with whether it is harmful wherever a number goes."""
    from hypothesis import strategies as st

    numbers = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True, width=64))
    words = st.text(alphabet=st.characters(codec="ascii", exclude_characters="\n\r\x00"), max_size=12)
    return st.one_of(
        numbers.map(lambda x: (repr(x) if isinstance(x, float) else str(x), x)),
        words.map(lambda s: (s, s)),
        st.sampled_from([("null", None), ("true", True), ("false", False), ("[]", []), ("[0]", [0]), ("[-1,2]", [-1, 2]),
                         ("{}", {}), ("1e30", 1e30), ("-0.0", -0.0), ("nan", math.nan), ("inf", math.inf),
                         ("'a,b'", "a,b"), ("${oc.env:HOME}", "home"), ("[1,[2]]", [1, [2]])]),
    )


def harmful_for(default, value) -> bool:
    """A value that must not be accepted where ``default`` stands: non-finite, a negative count, the wrong kind."""
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if isinstance(default, bool) or default is None:
        return False
    if isinstance(default, int | float):
        if isinstance(value, str) or isinstance(value, list | dict) or value is None or isinstance(value, bool):
            return True
        return isinstance(default, int) and default > 0 and isinstance(value, int | float) and value < 0
    return False


# --- surface 1: command-line overrides ----------------------------------------------------------


def flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.update(flat(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


def override_surface(cases: int, seed: int, growth: float, record) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from omegaconf import OmegaConf

    from agents import train
    from agents.builders import policy_meta
    from agents.overrides import check_overrides

    combos = [[], ["policy=mlp"], ["algo=grpo"], ["algo=es"], ["env=uav_hover", "policy=mlp"],
              ["env=uav_hover", "policy=mlp", "algo=sac"], ["env=swimmer_navigate"], ["env=swimmer_gym", "policy=mlp"]]
    keys: dict[str, object] = {}
    for combo in combos:
        keys.update(flat(OmegaConf.to_container(train_cfg(combo), resolve=True)))
    names = sorted(keys)

    @settings(max_examples=cases, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(combo=st.sampled_from(combos), key=st.sampled_from(names), value=values(), plus=st.booleans(),
           typo=st.sampled_from(["", "", "", "x", "_", "rat"]), near=st.sampled_from([None, None, 1, 2, 0.5, -1, 0]))
    def case(combo, key, value, plus, typo, near):
        text, parsed = value
        default = keys[key]
        if near is not None and isinstance(default, int | float) and not isinstance(default, bool):
            parsed = type(default)(default * near) if near else 0  # a plausible value: the default scaled
            text = repr(parsed)
        name = key[:-1] + typo if typo and len(key) > 3 else key
        argv = [*combo, f"{'+' if plus else ''}{name}={text}"]
        harmful = name == key and harmful_for(keys[key], parsed)

        def go():
            cfg = check_overrides("train", argv, train.validate)
            if cfg.env.name != "kitchen" and cfg.algo.name != "bc":
                policy_meta(cfg)  # the env and the policy are built as the trainers build them

        record("overrides", " ".join(argv), *run_case(go, harmful, growth))

    case()


def train_cfg(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


# --- surface 2: policy bundles ---------------------------------------------------------------------


def base_bundles(work: Path) -> dict[str, tuple[Path, object]]:
    """A normalising MLP, an NCAP and a tiny MT-ACT, saved as bundles, with the env interface each loads for."""
    import gymnasium as gym
    import torch

    import envs  # noqa: F401
    from policies.bundle import save_bundle
    from policies.mlp import MLPActor, MLPConfig
    from policies.mtact import MTACT, MTACTConfig, observation_description
    from policies.protocol import EnvInterface, PolicyMeta
    from policies.registry import make_config
    from policies.vector_policy import VectorPolicy

    torch.manual_seed(0)
    env = gym.make("embodied/Swimmer-v0")
    swimmer = EnvInterface.of(env)
    env_cfg = {"name": "swimmer", "id": "embodied/Swimmer-v0"}
    out = {}
    config = make_config("mlp", {"hidden": [16]}, swimmer)
    meta = PolicyMeta.for_env("mlp", config, env_cfg, swimmer, normalization={"clip": 10.0}, action_std=[0.5] * 5)
    mlp = VectorPolicy(MLPActor(MLPConfig.from_dict(config)), meta, torch.zeros(24), torch.ones(24))
    out["mlp"] = (save_bundle(work / "mlp", meta, mlp.tensors()), swimmer)
    from policies.registry import build_module

    config = make_config("ncap", {}, swimmer)
    meta = PolicyMeta.for_env("ncap", config, env_cfg, swimmer)
    out["ncap"] = (save_bundle(work / "ncap", meta, VectorPolicy(build_module("ncap", config), meta).tensors()), swimmer)
    cfg = MTACTConfig(cameras=(), hidden=16, heads=2, ffn=16, enc_layers=1, dec_layers=1, cvae=False, chunk=2,
                      language="onehot", lang_dim=2)
    meta = PolicyMeta(kind="mtact", config=cfg.to_dict(), env={"name": "kitchen", "id": "embodied/Kitchen-v0",
                                                               "cameras": [], "object_state": True},
                      observation=observation_description(cfg), action_low=[-1.0] * 8, action_high=[1.0] * 8,
                      extra={"tasks": ["microwave", "kettle"]})
    out["mtact"] = (save_bundle(work / "mtact", meta, MTACT(cfg).state_dict()), None)
    env.close()
    return out


def _set_path(doc, path: list, value):
    node = doc
    for p in path[:-1]:
        node = node[p]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()
OPTIONAL = ("control_dt", "steps", "action_std", "extra", "normalization")  # policy.json fields with a default


def harmless_deletion(path: list) -> bool:
    """Deleting these from policy.json changes nothing the loader can know: fields with defaults, descriptions,
    and the env's keyword arguments (a policy loaded for another env is refused when it does not fit it)."""
    return (path[0] in OPTIONAL or path[-1] in ("dtype", "file") or (path[0] == "env" and path[-1] != "id"))


def _paths(node, prefix=()):
    yield list(prefix)
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def bundle_surface(cases: int, seed: int, growth: float, record, work: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from safetensors.torch import load_file, save_file

    from policies.bundle import file_sha256
    from policies.registry import load_policy

    bases = base_bundles(work / "base")
    marker = work / "CODE_RAN"
    kitchen_obs = {"proprio": np.zeros(8), "object_state": np.zeros(17), "instruction": "open the microwave"}

    @settings(max_examples=cases, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(base=st.sampled_from(sorted(bases)), kind=st.sampled_from(["json", "delete", "bytes", "truncate",
                                                                       "tensor", "pickle"]),
           pick=st.integers(0, 10**6), value=values(), rehash=st.booleans())
    def case(base, kind, pick, value, rehash):
        src, interface = bases[base]
        d = work / "case"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        meta_path, weights = d / "policy.json", d / "policy.safetensors"
        doc = json.loads(meta_path.read_text())
        harmful = True
        label = kind
        if kind in ("json", "delete"):
            paths = [p for p in _paths(doc) if p and p[0] not in ("format",)]
            path = paths[pick % len(paths)]
            old = doc
            for p in path:
                old = old[p]
            new = _DELETE if kind == "delete" else value[1]
            _set_path(doc, path, new)
            label = f"{kind} {'.'.join(map(str, path))}" + (f"={value[0]}" if kind == "json" else "")
            if kind == "delete":
                harmful = not harmless_deletion(path)
            else:
                harmful = harmful_for(old, new) or (type(old) is not type(new) and old is not None
                                                    and not (isinstance(old, float) and isinstance(new, int)))
            meta_path.write_text(json.dumps(doc))
        elif kind == "bytes":
            data = bytearray(weights.read_bytes())
            data[pick % len(data)] ^= 1 + pick % 255
            weights.write_bytes(bytes(data))
        elif kind == "truncate":
            data = weights.read_bytes()
            weights.write_bytes(data[: pick % len(data)])
        elif kind == "tensor":
            tensors = load_file(str(weights))
            name = sorted(tensors)[pick % len(tensors)]
            t = tensors[name]
            if t.is_floating_point() and t.numel():
                x = value[1]
                number = isinstance(x, int | float) and not isinstance(x, bool) and abs(x) < 3e38
                t.view(-1)[pick % t.numel()] = float(x) if number else math.nan
            save_file(tensors, str(weights))
            harmful = not rehash or not bool(t.isfinite().all())
            if rehash:
                doc["weights"]["sha256"] = file_sha256(weights)
                meta_path.write_text(json.dumps(doc))
            label = f"tensor {name}{' rehashed' if rehash else ''}"
        else:
            (meta_path if pick % 2 else weights).write_bytes(pickle.dumps(Payload(marker)))

        def go():
            policy = load_policy(d, interface)
            policy.reset()
            policy.act(kitchen_obs if interface is None else np.zeros(interface.obs_dim))

        record("bundles", f"{base}: {label}", *run_case(go, harmful, growth, marker))

    case()


# --- surface 3: demonstration datasets -----------------------------------------------------------


def base_dataset(work: Path, image_size: int = 16) -> Path:
    """Two collected light-switch demonstrations with one small camera."""
    data = work / "dataset"
    subprocess.run([sys.executable, "-m", "agents.collect", "task=light_switch", "episodes=2", f"env.image_size={image_size}",
                    "env.cameras=[scene]", f"out={data}", "workers=1"], cwd=work, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return data


def dataset_surface(cases: int, seed: int, growth: float, record, work: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from agents.bc_data import Selection, load_windows, select_files
    from agents.dataset import read_manifest
    from policies.mtact_inference import LanguageVectors

    base = base_dataset(work)
    marker = work / "CODE_RAN"

    @settings(max_examples=cases, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(["array", "drop", "dtype", "shape", "bytes", "truncate", "manifest", "pickle"]),
           pick=st.integers(0, 10**6), value=values())
    def case(kind, pick, value):
        d = work / "dcase"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(base, d)
        demo = sorted((d / "episodes").glob("*/*.npz"))[pick % 2]
        harmful, label = True, kind
        if kind in ("array", "drop", "dtype", "shape"):
            with np.load(demo) as z:
                arrays = {k: z[k] for k in z.files}
            names = sorted(arrays)
            name = names[pick % len(names)]
            label = f"{kind} {name}"
            a = arrays[name]
            if kind == "drop":
                del arrays[name]
            elif a.dtype.kind in "USO":  # a text field (task, instruction): given a number instead
                arrays[name] = np.float64(pick)
            elif kind == "dtype":
                arrays[name] = a.astype(np.float16 if a.dtype != np.float16 else np.int8)
                harmful = a.ndim > 0 or a.dtype.kind == "b"  # a scalar number stays a number in another width
            elif kind == "shape":
                arrays[name] = a.reshape(-1)[: max(0, a.size - 1 - pick % 3)] if a.size else np.zeros(3)
            else:
                x = value[1]
                if not (isinstance(x, int | float) and not isinstance(x, bool)) or a.dtype.kind not in "fc" or not a.size:
                    x = math.nan
                    a = a.astype(np.float64)
                a = a.copy()
                a.reshape(-1)[pick % max(a.size, 1)] = x if a.size else 0
                arrays[name] = a
                harmful = not math.isfinite(float(x))
            with open(demo, "wb") as f:
                np.savez_compressed(f, **arrays)
        elif kind == "bytes":
            data = bytearray(demo.read_bytes())
            data[pick % len(data)] ^= 1 + pick % 255
            demo.write_bytes(bytes(data))
            harmful = False  # a flip inside compressed data may be caught by its CRC, or may land in padding
        elif kind == "truncate":
            data = demo.read_bytes()
            demo.write_bytes(data[: pick % len(data)])
        elif kind == "manifest":
            manifest = d / "manifest.json"
            doc = json.loads(manifest.read_text())
            paths = [p for p in _paths(doc) if p]
            path = paths[pick % len(paths)]
            _set_path(doc, path, value[1])
            label = f"manifest {'.'.join(map(str, path))}={value[0]}"
            harmful = harmful_for(1, value[1]) if path[0] == "spec" else False
            manifest.write_text(json.dumps(doc))
        else:
            demo.write_bytes(pickle.dumps(Payload(marker)))

        def go():
            manifest = read_manifest(d)
            train, val = select_files(d, Selection(2, 0, 0.0, False, None))
            load_windows(train + val, manifest["spec"], list(manifest["cameras"]), 4, LanguageVectors("onehot", ["light_switch"]))

        record("datasets", label, *run_case(go, harmful, growth, marker))

    case()


# --- named traps: the CLI, as a user types them -----------------------------------------------------

NAMED = {  # issue 26's list, each as a command line; what it must give
    "env.fluid_density=nan": ["agents.train", "env.fluid_density=nan"],
    "policy.actor.oscillator_period=0": ["agents.train", "policy.actor.oscillator_period=0"],
    "policy.actor.hidden=[0]": ["agents.train", "policy=mlp", "policy.actor.hidden=[0]"],
    "algo.sb3.gamma=abc": ["agents.train", "algo.sb3.gamma=abc"],
    "ES algo.population=abc": ["agents.train", "algo=es", "algo.population=abc"],
    "collect noise=abc": ["agents.collect", "task=microwave", "episodes=1", "noise=abc"],
    "collect env.image_size=0": ["agents.collect", "task=microwave", "episodes=1", "env.image_size=0"],
    "collect env.image_size=100000": ["agents.collect", "task=microwave", "episodes=1", "env.image_size=100000"],
    "collect env.level=L9": ["agents.collect", "task=microwave", "episodes=1", "env.level=L9"],
    "collect out=/proc/nope": ["agents.collect", "task=microwave", "episodes=1", "out=/proc/nope"],
    "evaluate video_path in a missing directory": ["agents.evaluate", "video=true", "video_path=/no/such/dir/x.mp4"],
    "algo.total_timesteps=10**30": ["agents.train", "algo.total_timesteps=1000000000000000000000000000000"],
    "n_envs=100000": ["agents.train", "algo.n_envs=100000"],
    "BC algo.batch_size=1e8": ["agents.train", "env=kitchen", "policy=mtact", "algo=bc", "dataset=x",
                               "algo.batch_size=1e8"],
    "+algo.learning_rat=1": ["agents.train", "+algo.learning_rat=1"],
    "algo.learning_rat=1": ["agents.train", "algo.learning_rat=1"],
    "a comma outside a multirun": ["agents.evaluate", "run=a,b"],
    "a runs directory that cannot be written": ["agents.train", "@/proc"],
}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


def _one_line(proc: subprocess.CompletedProcess) -> tuple[str, str]:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    clear = proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    outcome = "clear error" if clear else ("traceback" if "Traceback" in proc.stderr else "silent wrong result")
    return outcome, f"exit {proc.returncode}: {(lines[-1] if lines else '')[:200]}"


BC_TINY = ["env=kitchen", "policy=mtact", "algo=bc", "algo.total_steps=2", "algo.demos_per_task=2", "algo.val_fraction=0.5",
           "algo.eval_episodes=0", "algo.final_eval_episodes=0", "algo.batch_size=2", "policy.actor.hidden=16",
           "policy.actor.ffn=16", "policy.actor.heads=2", "policy.actor.enc_layers=1", "policy.actor.dec_layers=1",
           "policy.actor.cvae_layers=1", "policy.actor.backbone_width=4"]
PPO_TINY = ["algo.n_envs=4", "algo.sb3.n_steps=256", "algo.sb3.batch_size=512", "algo.sb3.n_epochs=1",
            "algo.eval_every=100000", "algo.eval_episodes=1", "algo.final_eval_episodes=1", "algo.checkpoint_every=0",
            "progress_bar=false"]


def named_files(record, work: Path) -> None:
    """The traps in files and processes: damaged bundles and demonstrations, leaks, what long loops say."""
    from safetensors.torch import load_file

    run = work / "run"
    _cli("agents.train", "policy=mlp", "algo.total_timesteps=1024", *PPO_TINY, f"hydra.run.dir={run}", cwd=work)
    bundle = run / "checkpoints" / "final" / "policy.safetensors"
    data = bytearray(bundle.read_bytes())
    data[-1] ^= 0x80  # a sign bit: still a valid safetensors file
    bundle.write_bytes(bytes(data))
    assert load_file(str(bundle))  # the damage does not show in the file's structure
    record("named", "a bundle whose weights had bytes flipped", *_one_line(_cli("agents.evaluate", f"run={run}",
                                                                                  "episodes=1", cwd=work)))
    (work / "base").mkdir()
    base = base_dataset(work / "base", image_size=32)  # MT-ACT's backbone wants 32 px at least
    damages = {
        "a truncated demonstration .npz": lambda d: d.write_bytes(d.read_bytes()[:300]),
        "an empty demonstration .npz": lambda d: d.write_bytes(b""),
        "a manifest without spec": None,
        "NaN actions in a demonstration": "nan",
    }
    for name, damage in damages.items():
        data_dir = work / re.sub(r"\W+", "_", name)
        shutil.copytree(base, data_dir)
        demo = sorted((data_dir / "episodes").glob("*/*.npz"))[1]
        if damage is None:
            doc = json.loads((data_dir / "manifest.json").read_text())
            del doc["spec"]
            (data_dir / "manifest.json").write_text(json.dumps(doc))
        elif damage == "nan":
            with np.load(demo) as z:
                arrays = {k: z[k] for k in z.files}
            arrays["actions"][2, 0] = np.nan
            with open(demo, "wb") as f:
                np.savez_compressed(f, **arrays)
        else:
            damage(demo)
        record("named", name, *_one_line(_cli("agents.train", *BC_TINY, f"dataset={data_dir}", "env.cameras=[scene]",
                                               cwd=work)))
    again = work / "rerun"
    shutil.copytree(base, again)
    demo = sorted((again / "episodes").glob("*/*.npz"))[1]
    demo.write_bytes(demo.read_bytes()[:300])
    proc = _cli("agents.collect", "task=light_switch", "episodes=2", "env.image_size=32", "env.cameras=[scene]",
                f"out={again}", "workers=1", cwd=work)
    redone = proc.returncode == 0 and "episodes=1 skipped=1" in proc.stdout
    record("named", "a collection rerun over a truncated .npz", "as required" if redone else "silent wrong result",
           f"exit {proc.returncode}: {proc.stdout.strip().splitlines()[-1][:160] if proc.stdout.strip() else ''}")
    for sig in (signal.SIGKILL, signal.SIGTERM):
        import psutil

        proc = subprocess.Popen([sys.executable, "-m", "agents.collect", "task=all", "episodes=50", "workers=2",
                                 "env.cameras=[]", f"out={work / ('leak_' + sig.name)}"], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.time() + 120
        while len(psutil.Process(proc.pid).children(recursive=True)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=20)
        for p in alive:
            p.kill()
        record("named", f"collect workers=2 whose parent gets {sig.name}", "leaked process" if alive else "as required",
               f"{len(workers)} workers, {len(alive)} left running")
    proc = _cli("agents.train", *PPO_TINY, "algo.total_timesteps=1500", cwd=work)
    said = "trained 2048 env steps, 548 past algo.total_timesteps=1500" in proc.stdout + proc.stderr
    record("named", "PPO trains past algo.total_timesteps", "as required" if said else "silent wrong result",
           "says: trained 2048 env steps, 548 past algo.total_timesteps=1500" if said else "says nothing")
    proc = _cli("agents.train", *BC_TINY, f"dataset={base}", "env.cameras=[scene]", "algo.time_budget_s=0.001", cwd=work)
    said = "the time budget (algo.time_budget_s) ran out" in proc.stdout + proc.stderr
    record("named", "a BC run stopped by its time budget", "as required" if said else "silent wrong result",
           "says: training stopped at step ...: the time budget (algo.time_budget_s) ran out" if said else "says nothing")


def named_traps(record, work: Path) -> None:
    for name, cmd in NAMED.items():
        cwd = work
        if cmd[-1] == "@/proc":
            cmd, cwd = cmd[:-1], Path("/proc")
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=cwd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        clear = proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
        outcome = "clear error" if clear else ("traceback" if "Traceback" in proc.stderr else "silent wrong result")
        record("named", name, outcome, f"exit {proc.returncode} in {time.time() - t0:.0f} s: "
                                        f"{(lines[-1] if lines else '')[:200]}")


# --- the report ---------------------------------------------------------------------------------------


def write_markdown(out: dict, path: Path) -> None:
    m = out["machine"]
    lines = ["# Robustness: generated bad inputs on every input surface", "",
             f"Generated by `python benchmarks/robustness.py --cases {out['cases']} --seed {out['seed']}` on {out['date']}: "
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}. Hypothesis, derandomised with the seed; every case "
             "runs in-process through the functions the CLIs call (the named traps through the CLIs themselves).", "",
             "| surface | cases | " + " | ".join([*GOOD, *BAD]) + " |", "|---|---|" + "---|" * (len(GOOD) + len(BAD))]
    for surface, counts in out["counts"].items():
        lines.append(f"| {surface} | {sum(counts.values())} | " + " | ".join(str(counts.get(k, 0)) for k in (*GOOD, *BAD))
                     + " |")
    total = sum(sum(c.values()) for c in out["counts"].values())
    bad = sum(c.get(k, 0) for c in out["counts"].values() for k in BAD)
    lines += ["", f"{total} cases, {bad} of the bad kinds; leaked processes after the run: {out['leaked_processes']}.", ""]
    if out["named"]:
        lines += ["## The named traps (issue 26), through the CLI", "", "| trap | outcome | exit and line |",
                  "|---|---|---|"]
        lines += [f"| {r['case']} | {r['outcome']} | {r['detail'].replace('|', '/')} |" for r in out["named"]]
        lines.append("")
    if out["bad_examples"]:
        lines += ["## Bad outcomes", "", "| surface | case | outcome | detail |", "|---|---|---|---|"]
        lines += [f"| {r['surface']} | `{r['case']}` | {r['outcome']} | {r['detail'].replace('|', '/')} |"
                  for r in out["bad_examples"]]
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000, help="generated cases in all, split over the surfaces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="overrides,bundles,datasets,named")
    parser.add_argument("--max-growth-mb", type=float, default=2048.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--check", action="store_true", help="exit 1 if any outcome is of a bad kind")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    import psutil
    import torch

    torch.set_num_threads(1)
    sections = args.only.split(",")
    share = {"overrides": 0.5, "bundles": 0.3, "datasets": 0.2}
    rows: list[dict] = []

    scratch = []  # the scratch folder, shown as <work> in the table: it is gone after the run

    def record(surface, case, outcome, detail=""):
        for path in scratch:
            detail = detail.replace(path, "<work>")
        rows.append({"surface": surface, "case": case, "outcome": outcome, "detail": detail})

    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    with tempfile.TemporaryDirectory(prefix="robustness_") as tmp:
        work = Path(tmp)
        scratch.append(str(work))
        t0 = time.time()
        for section in sections:
            print(f"{section}...", flush=True)
            n = max(1, int(args.cases * share.get(section, 0)))
            if section == "overrides":
                override_surface(n, args.seed, args.max_growth_mb, record)
            elif section == "bundles":
                bundle_surface(n, args.seed, args.max_growth_mb, record, work)
            elif section == "datasets":
                dataset_surface(n, args.seed, args.max_growth_mb, record, work)
            elif section == "named":
                named_traps(record, work)
                named_files(record, work)
        seconds = time.time() - t0
    leaked = [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before]
    counts = {}
    for r in rows:
        counts.setdefault(r["surface"], Counter())[r["outcome"]] += 1
    bad = [r for r in rows if r["outcome"] in BAD]
    json_path = args.out / "robustness.json"
    if json_path.is_file():  # a run of some sections keeps the others as recorded
        old = json.loads(json_path.read_text())
        counts = {**{k: Counter(v) for k, v in old["counts"].items() if k not in sections}, **counts}
        if not set(sections) & set(share):  # no surface fuzzed now: the recorded budget and seed stand
            args.cases, args.seed = old["cases"], old["seed"]
        if "named" not in sections:
            rows += old["named"]
        bad += [r for r in old["bad_examples"] if r["surface"] not in sections]
    out = {"date": dt.date.today().isoformat(), "machine": machine(), "cases": args.cases, "seed": args.seed,
           "seconds": round(seconds, 1), "counts": {k: dict(v) for k, v in counts.items()},
           "leaked_processes": len(leaked), "named": [r for r in rows if r["surface"] == "named"],
           "bad_examples": bad[:50]}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, out)
    write_markdown(out, args.out / "robustness.md")
    total = sum(sum(c.values()) for c in counts.values())
    print(f"wrote {args.out / 'robustness.md'}: {total} cases in {seconds:.0f} s, {len(bad)} bad, "
          f"{len(leaked)} leaked processes")
    for r in bad[:20]:
        print(f"  BAD {r['surface']}: {r['case']} -> {r['outcome']} ({r['detail']})")
    if args.check and (bad or leaked):
        sys.exit(1)


if __name__ == "__main__":
    main()
