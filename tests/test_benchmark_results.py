"""Benchmark results files are the record: the run caches are per machine and may be gone.

Driven through the benchmark's command line (``benchmarks/kitchen_mtact.py``), as a user runs it.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from policies.bundle import save_bundle
from policies.mtact import MTACT, MTACTConfig, observation_description
from policies.protocol import PolicyMeta

from conftest import REPO, cli_env

SCRIPT = REPO / "benchmarks" / "kitchen_mtact.py"
RESULTS = REPO / "benchmarks" / "results"


def benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=cli_env(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def cache_run(work: Path, name: str, train_time_s: float) -> Path:
    """A finished run in the cache: a summary like a real one (the committed mtact_s0's), ``train_time_s`` marked."""
    run = work / name
    run.mkdir(parents=True)
    real = json.loads((RESULTS / "kitchen_mtact.json").read_text())["runs"]["mtact_s0"]
    summary = {**{k: v for k, v in real.items() if k != "threads"}, "train_time_s": train_time_s, "steps": 3000}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text("threads: 1\n")
    return run


def recorded(names: list[str]) -> dict:
    committed = json.loads((RESULTS / "kitchen_mtact.json").read_text())["eval"]["mtact_s0"]["L0"]
    old = {"L0": {**committed, "success_rate": 0.9}}  # a real evaluation record, marked
    real = json.loads((RESULTS / "kitchen_mtact.json").read_text())["runs"]["mtact_s0"]
    runs = {n: {**real, "train_time_s": t, "steps": 3000, "threads": 1} for n, t in zip(names, (100.0, 200.0, 300.0))}
    return {"variants": ["mtact", "onehot", "no_aug"], "seeds": [0], "levels": ["L0"], "runs": runs,
            "eval": {n: dict(old) for n in names}}


def test_recorded_runs_survive_a_lost_cache_and_a_retrained_run_drops_old_evaluations(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    (out / "kitchen_mtact.json").write_text(json.dumps(recorded(["mtact_s0", "onehot_s0", "no_aug_s0"])))
    cache_run(work, "mtact_s0", 100.0)  # the same training, still cached
    cache_run(work, "onehot_s0", 250.0)  # trained again
    cache_run(work, "state_only_s0", 400.0)  # new; no_aug_s0 is recorded but its run is gone
    benchmark("--only", "latency", "--variants", "mtact,onehot,no_aug,state_only", "--seeds", "0", "--levels", "L0",
              "--steps", "1", "--work", str(work), "--out", str(out))
    result = json.loads((out / "kitchen_mtact.json").read_text())
    assert result["eval"]["mtact_s0"]["L0"]["success_rate"] == 0.9  # unchanged run: its evaluations stand
    assert "onehot_s0" not in result["eval"] and result["runs"]["onehot_s0"]["train_time_s"] == 250.0
    assert result["eval"]["no_aug_s0"]["L0"]["success_rate"] == 0.9 and result["runs"]["no_aug_s0"]["train_time_s"] == 300
    assert result["runs"]["state_only_s0"]["threads"] == 1


def test_an_out_directory_that_does_not_exist_yet_is_created(tmp_path):
    """A training session's results must not be lost at the end to a missing ``--out`` folder."""
    out = tmp_path / "new" / "results"
    benchmark("--only", "eval", "--variants", "mtact", "--seeds", "0", "--levels", "L0", "--steps", "1", "--out",
              str(out), "--work", str(tmp_path / "work"))
    assert json.loads((out / "kitchen_mtact.json").read_text())["variants"] == ["mtact"]
    assert (out / "kitchen_mtact.md").is_file()


def test_latency_reports_single_and_batched_query_costs(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    run = cache_run(work, "mtact_s0", 1.0)
    config = MTACTConfig(cameras=("scene",), image_size=32, proprio_dim=8, object_dim=17, action_dim=2, chunk=4,
                         hidden=16, heads=2, ffn=16, enc_layers=1, dec_layers=1, cvae_layers=1, latent=2,
                         backbone_width=4, language="onehot", lang_dim=1)
    torch.manual_seed(0)
    meta = PolicyMeta(kind="mtact", config=config.to_dict(), env={"name": "kitchen", "id": "embodied/Kitchen-v0"},
                      observation=observation_description(config), action_low=[-1, -1], action_high=[1, 1],
                      extra={"tasks": ["microwave"]})
    save_bundle(run / "checkpoints" / "final", meta, MTACT(config).state_dict())
    benchmark("--only", "latency", "--variants", "mtact", "--seeds", "0", "--levels", "L0", "--steps", "1",
              "--work", str(work), "--out", str(out))
    lat = json.loads((out / "kitchen_mtact.json").read_text())["latency"]
    assert lat["run"] == "mtact_s0" and lat["params"] > 0 and lat["cameras"] == ["scene"] and lat["threads"] == 1
    assert 0 < lat["query_ms_median"] <= lat["query_ms_p90"]
    assert lat["per_step_ms_execute20"] < lat["per_step_ms_ensemble"]  # one query per 4 steps against one per step
    per_obs = lat["batched_query_ms_per_observation"]
    assert list(per_obs) == ["1", "2", "4", "8", "16"] and all(v > 0 for v in per_obs.values())
    assert set(lat["train_step_ms"]) == {"fp32", "bf16"} and all(v > 0 for v in lat["train_step_ms"].values())
    assert "bf16 autocast (`algo.precision=bf16`)" in (out / "kitchen_mtact.md").read_text()


def test_the_committed_table_is_what_the_committed_json_renders_to(tmp_path):
    """The markdown is regenerated from the JSON, never edited by hand: the two must agree."""
    shutil.copy(RESULTS / "kitchen_mtact.json", tmp_path / "kitchen_mtact.json")
    benchmark("--only", "table", "--out", str(tmp_path))
    assert (tmp_path / "kitchen_mtact.md").read_text() == (RESULTS / "kitchen_mtact.md").read_text()
    assert json.loads((tmp_path / "kitchen_mtact.json").read_text()) == json.loads(
        (RESULTS / "kitchen_mtact.json").read_text())  # rendering changes nothing in the record


def test_a_variant_whose_training_summaries_are_missing_renders_dashes_without_warnings(tmp_path):
    out = json.loads((RESULTS / "kitchen_mtact.json").read_text())
    variant = out["variants"][0]
    out["runs"] = {k: v for k, v in out["runs"].items() if not k.startswith(f"{variant}_s")}
    (tmp_path / "kitchen_mtact.json").write_text(json.dumps(out))
    result = benchmark("--only", "table", "--out", str(tmp_path))
    assert "Warning" not in result.stderr, result.stderr  # np.mean of no runs would warn and print nan
    row = next(line for line in (tmp_path / "kitchen_mtact.md").read_text().splitlines()
               if line.startswith(f"| {variant} |"))
    assert row.endswith("| — | — | — | — |") and "nan" not in row


def test_the_spatial_brain_table_is_what_its_json_renders_to(tmp_path):
    """The spatial brain's markdown is regenerated from its JSON, never edited by hand."""
    shutil.copy(RESULTS / "spatial_brain.json", tmp_path / "spatial_brain.json")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "spatial_brain.py"), "--only", "table", "--out",
                             str(tmp_path)], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "spatial_brain.md").read_text() == (RESULTS / "spatial_brain.md").read_text()
