"""``python -m agents.merge`` end to end on tiny spatial-brain runs written in process (no training).

The base is a scaffold; two experts fine-tuned from it specialise ``uav`` and ``swimmer``; ``kitchen`` and
``generic`` have no expert. Every tensor of the experts differs from the base (their other embodiments'
parts and buffers too), so each source rule is seen: specialised parts equal their expert's, the others
the base's, and the shared ones what :func:`agents.merge_methods.merge` gives on the same inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

import envs
from agents.builders import make_env
from agents.merge_methods import DEFAULT_OPTIONS, METHODS, merge
from policies import registry
from policies.bundle import WEIGHTS_FILE, read_bundle, save_bundle
from policies.protocol import EnvInterface, PolicyMeta
from policies.run_dir import FINAL, RunDir
from policies.spatial_brain import SpatialBrain, SpatialBrainConfig

from conftest import CONFIG_DIR, assert_names, assert_one_line_error

TINY = {"layers": 1, "width": 32, "heads": 2, "ffn": 64, "vision_channels": [4, 8, 8]}
UAV_ENV = {"name": "uav_find", "id": envs.UAV_FIND}
SWIMMER_ENV = {**UAV_ENV, "held_out": True}  # a stand-in: what matters is that the merge records its expert's env
EXPERTS = ("uav", "swimmer")  # the experts' embodiments, in the order they are passed
UNSPECIALISED = ("kitchen", "generic")
EXACT = ("avg", "task_arithmetic", "ties")  # elementwise in float64: bit-identical in any process
OPTIONS = {"task_arithmetic": ["options.scale=0.5"], "ties": ["options.keep=0.3"], "wudi_adam": ["options.steps=3"]}


def write_run(path: Path, config: dict, state: dict, env: dict, interface: EnvInterface, extra: dict,
              kind: str = "spatial_brain") -> Path:
    """A finished run directory as the trainers leave it: config.yaml, checkpoints/final, summary.json."""
    run = RunDir.claim(path)
    run.write_config(yaml.safe_dump({"policy": {"kind": kind}, "algo": {"name": extra.get("stage")}}))
    meta = PolicyMeta.for_env(kind, config, env, interface, steps=6, extra=extra)
    run.write_checkpoint(FINAL, lambda tmp: save_bundle(tmp, meta, state))
    run.write_summary({"steps": 6})
    return run.path


def fine_tuned(state: dict, seed: int) -> dict:
    """``state`` with every floating-point tensor moved a little, as fine-tuning (and new statistics) would."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("merge")
    env = make_env(UAV_ENV)
    try:
        interface = EnvInterface.of(env)
    finally:
        env.close()
    torch.manual_seed(0)
    config = SpatialBrainConfig(**TINY)
    base = {k: v.clone() for k, v in SpatialBrain(config).state_dict().items()}
    cfg = config.to_dict()
    answers = ["yes", "no"]
    paths = {"base": write_run(root / "scaffold", cfg, base, UAV_ENV, interface,
                               {"stage": "scaffold", "embodiment": "uav", "answers": answers, "init_from": None})}
    common = {"stage": "specialize", "answers": answers, "init_from": str(paths["base"]), "decisions": 3}
    paths["uav"] = write_run(root / "uav", cfg, fine_tuned(base, 1), UAV_ENV, interface,
                             {**common, "embodiment": "uav", "decide_every": 50})
    paths["swimmer"] = write_run(root / "swimmer", cfg, fine_tuned(base, 2), SWIMMER_ENV, interface,
                                 {**common, "embodiment": "swimmer", "decide_every": 20})
    paths["uav2"] = write_run(root / "uav2", cfg, fine_tuned(base, 3), UAV_ENV, interface,
                              {**common, "embodiment": "uav", "decide_every": 50})
    wider = SpatialBrainConfig(**{**TINY, "ffn": 128})
    paths["wider"] = write_run(root / "wider", wider.to_dict(), SpatialBrain(wider).state_dict(), UAV_ENV, interface,
                               {**common, "embodiment": "uav"})
    mlp_config = {"obs_dim": 4, "action_dim": 2, "hidden": [8]}
    mlp = {f"actor.{k}": v for k, v in registry.build_module("mlp", mlp_config).state_dict().items()}
    vector = EnvInterface({"shape": [4], "dtype": "float32"}, [-1.0, -1.0], [1.0, 1.0])
    paths["mlp"] = write_run(root / "mlp", mlp_config, mlp, {"name": "swimmer", "id": envs.SWIMMER}, vector,
                             {"stage": "ppo"}, kind="mlp")
    return paths


def merge_args(runs: dict, *experts: str) -> list[str]:
    return [f"base={runs['base']}", f"experts=[{','.join(str(runs[e]) for e in experts)}]"]


def tensors(path: Path) -> dict:
    return read_bundle(RunDir(path).policy()).tensors


def run_dirs(cwd: Path) -> list[Path]:
    """Run directories (and anything else) a merge left under the default ``runs/merge_<method>/``."""
    return [p for parent in (cwd / "runs").glob("*") for p in parent.iterdir()] if (cwd / "runs").is_dir() else []


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_a_loadable_merged_brain(runs, run_cli, tmp_path, method):
    options = OPTIONS.get(method, [])
    where = [] if method == "avg" else [f"hydra.run.dir={tmp_path / 'merged'}"]  # avg: the default, claimed dir
    result = run_cli("agents.merge", f"method={method}", *merge_args(runs, *EXPERTS), *options, *where)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.last_line
    assert last.startswith(f"method={method} merged=") and "relative_norm_uav=" in last, last
    out = tmp_path / last.rpartition("run_dir=")[2]  # an absolute path stays itself
    if method == "avg":
        assert out.parent.resolve() == (tmp_path / "runs" / "merge_avg").resolve(), out
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "summary.json"]
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == method

    bundle = read_bundle(RunDir(out).policy())
    merged = registry.load_module("spatial_brain", bundle, bundle.tensors).state_dict()
    base, experts = tensors(runs["base"]), [tensors(runs[e]) for e in EXPERTS]
    brain = SpatialBrain(SpatialBrainConfig(**TINY))
    owner = {k: brain.owner_of(k) for k in base}
    kept = [k for k in base if owner[k] not in UNSPECIALISED]
    opts = {k.removeprefix("options.").partition("=")[0]: yaml.safe_load(k.partition("=")[2]) for k in options}
    expected = merge({k: base[k] for k in kept}, [{k: e[k] for k in kept} for e in experts], method,
                     owners={k: EXPERTS.index(owner[k]) for k in kept if owner[k] is not None}, **opts)
    for key, value in merged.items():
        if owner[key] in EXPERTS:
            assert torch.equal(value, experts[EXPERTS.index(owner[key])][key]), key
        elif owner[key] in UNSPECIALISED:
            assert torch.equal(value, base[key]), key
        elif method in EXACT:
            assert torch.equal(value, expected[key]), key
        else:  # SVD and matrix products may round differently with another thread count
            torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)
    assert any(owner[k] is None and not torch.equal(merged[k], base[k]) for k in merged)  # something was merged

    extra = bundle.meta.extra
    assert extra["stage"] == "merge" and extra["method"] == method
    assert extra["options"] == {**DEFAULT_OPTIONS[method], **opts}
    assert extra["base"] == str(runs["base"]) and extra["embodiment"] == "uav" and extra["decide_every"] == 50
    assert [(e["run"], e["embodiment"]) for e in extra["experts"]] == [(str(runs[e]), e) for e in EXPERTS]
    assert extra["embodiments"] == {"uav": UAV_ENV, "swimmer": SWIMMER_ENV}
    assert bundle.meta.config == read_bundle(RunDir(runs["base"]).policy()).meta.config
    assert bundle.meta.env == UAV_ENV
    policy = registry.load_policy(RunDir(out).policy())
    assert policy.embodiment == "uav"

    summary = json.loads((out / "summary.json").read_text())
    counts = {"merged": [k for k in base if owner[k] is None], "owned": [k for k in base if owner[k] in EXPERTS],
              "base_taken": [k for k in base if owner[k] in UNSPECIALISED]}
    assert {k: summary[k] for k in counts} == {k: len(v) for k, v in counts.items()}
    assert summary["base_taken_embodiments"] == sorted(UNSPECIALISED) and summary["warnings"] == []
    assert summary["method"] == method and summary["time_s"] >= 0
    shared = counts["merged"]

    def norm(state):
        return sum(float((state[k].double() - base[k].double()).pow(2).sum()) for k in shared) ** 0.5

    for name, expert in zip(EXPERTS, experts):
        assert summary["relative_norm"][name] == pytest.approx(norm(merged) / norm(expert), rel=1e-4)
        assert f"relative_norm_{name}=" in last


def test_a_mismatched_config_is_one_line(runs, run_cli, tmp_path):
    result = run_cli("agents.merge", "method=avg", *merge_args(runs, "uav", "wider"))
    assert_one_line_error(result, f"experts[1]={runs['wider']}", "ffn", "128")
    assert run_dirs(tmp_path) == []


def test_a_run_that_is_no_brain_is_one_line(runs, run_cli, tmp_path):
    result = run_cli("agents.merge", "method=ties", *merge_args(runs, "mlp", "swimmer"))
    assert_one_line_error(result, f"experts[0]={runs['mlp']}", "mlp", "not a spatial brain")
    assert run_dirs(tmp_path) == []


def test_two_experts_of_one_embodiment_is_one_line(runs, run_cli, tmp_path):
    result = run_cli("agents.merge", "method=wudi", *merge_args(runs, "uav", "swimmer", "uav2"))
    assert_one_line_error(result, str(runs["uav"]), str(runs["uav2"]), "both specialised on uav")
    assert run_dirs(tmp_path) == []


def test_an_unknown_option_is_one_line(runs, run_cli, tmp_path):
    result = run_cli("agents.merge", "method=ties", *merge_args(runs, *EXPERTS), "options.skale=0.5")
    assert_one_line_error(result, "options.skale", "did you mean options.scale")
    assert run_dirs(tmp_path) == []


def test_damaged_weights_found_after_the_claim_leave_no_run(runs, run_cli, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["swimmer"], damaged)
    weights = RunDir(damaged).policy() / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run_cli("agents.merge", "method=avg", f"base={runs['base']}", f"experts=[{runs['uav']},{damaged}]")
    assert_one_line_error(result, "experts[1]", "sha256")
    assert run_dirs(tmp_path) == []


def merge_error(overrides: list[str]) -> str:
    """The one-line message ``agents.merge`` refuses these overrides with, checked in this process."""
    from agents.errors import UserError
    from agents.merge import validate

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("merge", overrides=overrides)
    with pytest.raises(UserError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert message and "\n" not in message, message
    return message


def test_settings_are_checked_before_anything_is_read(runs):
    assert_names(merge_error(["method=tie", *merge_args(runs, "uav")]), "unknown merge method", "did you mean ties")
    assert_names(merge_error(["method=avg", "options.scale=0.5", *merge_args(runs, "uav")]), "avg", "no option 'scale'")
    assert_names(merge_error(["method=ties", "options.keep=1.5", *merge_args(runs, "uav")]), "keep", "(0, 1]")
    assert_names(merge_error(["method=wudi_adam", "options.steps=2.5", *merge_args(runs, "uav")]), "options.steps")
    assert_names(merge_error(["experts=[]", f"base={runs['base']}"]), "experts=", "required")
    assert_names(merge_error([f"experts=[{runs['uav']}]"]), "base=", "required")
    assert_names(merge_error(["base=/nonexistent/run", f"experts=[{runs['uav']}]"]), "base", "/nonexistent/run")
