"""The kitchen MT-ACT results file is the record: the run cache is per machine and may be gone."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import kitchen_mtact  # noqa: E402


def cache_run(work: Path, name: str, train_time_s: float) -> None:
    run = work / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"train_time_s": train_time_s, "steps": 3000}))
    (run / "config.yaml").write_text("threads: 1\n")


def recorded() -> dict:
    old = {"L0": {"success_rate": 0.9, "episodes": 70}}
    return {"runs": {"a_s0": {"train_time_s": 100.0, "steps": 3000, "threads": 1},
                     "b_s0": {"train_time_s": 200.0, "steps": 3000, "threads": 1},
                     "c_s0": {"train_time_s": 300.0, "steps": 3000, "threads": 1}},
            "eval": {"a_s0": dict(old), "b_s0": dict(old), "c_s0": dict(old)}}


def test_recorded_runs_survive_a_lost_cache_and_a_retrained_run_drops_old_evaluations(tmp_path):
    cache_run(tmp_path, "a_s0", 100.0)  # the same training, still cached
    cache_run(tmp_path, "b_s0", 250.0)  # trained again
    cache_run(tmp_path, "d_s0", 400.0)  # new
    out = recorded()
    cached = kitchen_mtact.record_runs(out, ["a_s0", "b_s0", "c_s0", "d_s0"], tmp_path)
    assert cached == ["a_s0", "b_s0", "d_s0"]
    assert out["eval"]["a_s0"]["L0"]["success_rate"] == 0.9  # unchanged run: its evaluations stand
    assert "b_s0" not in out["eval"] and out["runs"]["b_s0"]["train_time_s"] == 250.0
    assert out["eval"]["c_s0"]["L0"]["success_rate"] == 0.9 and out["runs"]["c_s0"]["train_time_s"] == 300.0
    assert out["runs"]["d_s0"]["threads"] == 1


def test_an_out_directory_that_does_not_exist_yet_is_created(tmp_path, monkeypatch):
    """A training session's results must not be lost at the end to a missing ``--out`` folder."""
    out = tmp_path / "new" / "results"
    monkeypatch.setattr(kitchen_mtact, "WORK", tmp_path / "work")  # the run cache, kept out of the checkout
    monkeypatch.setattr(sys, "argv", ["kitchen_mtact.py", "--only", "eval", "--variants", "mtact", "--seeds", "0",
                                      "--levels", "L0", "--steps", "1", "--out", str(out)])
    kitchen_mtact.main()
    assert json.loads((out / "kitchen_mtact.json").read_text())["variants"] == ["mtact"]
    assert (out / "kitchen_mtact.md").is_file()


def test_latency_reports_single_and_batched_query_costs(tmp_path):
    import torch

    from policies.mtact import MTACT, MTACTConfig, save_mtact

    config = MTACTConfig(cameras=("scene",), image_size=32, proprio_dim=3, object_dim=4, action_dim=2, chunk=4,
                         hidden=16, heads=2, ffn=16, enc_layers=1, dec_layers=1, cvae_layers=1, latent=2,
                         backbone_width=4, language="onehot", lang_dim=1)
    torch.manual_seed(0)
    save_mtact(tmp_path / "checkpoints" / "final", MTACT(config),
               {"tasks": ["microwave"], "action_low": [-1, -1], "action_high": [1, 1]})
    lat = kitchen_mtact.latency(tmp_path)
    assert lat["params"] > 0 and lat["cameras"] == ["scene"] and lat["threads"] == 1
    assert 0 < lat["query_ms_median"] <= lat["query_ms_p90"]
    assert lat["per_step_ms_execute20"] < lat["per_step_ms_ensemble"]  # one query per 4 steps against one per step
    per_obs = lat["batched_query_ms_per_observation"]
    assert list(per_obs) == [str(b) for b in kitchen_mtact.BATCH_SIZES] and all(v > 0 for v in per_obs.values())
    assert set(lat["train_step_ms"]) == {"fp32", "bf16"} and all(v > 0 for v in lat["train_step_ms"].values())
    out = {"variants": [], "levels": [], "eval": {}, "table": {}, "runs": {}, "latency": {"run": "r", **lat},
           "date": "d", "machine": {"cpu": "c", "cores": 1, "torch": "t", "mujoco": "m"}, "dataset": "x", "seeds": [0]}
    kitchen_mtact.write_markdown(out, tmp_path / "table.md")
    assert "bf16 autocast (`algo.precision=bf16`)" in (tmp_path / "table.md").read_text()


RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_the_committed_table_is_what_the_committed_json_renders_to(tmp_path):
    """The markdown is regenerated from the JSON, never edited by hand: the two must agree."""
    out = json.loads((RESULTS / "kitchen_mtact.json").read_text())
    kitchen_mtact.write_markdown(out, tmp_path / "table.md")
    assert (tmp_path / "table.md").read_text() == (RESULTS / "kitchen_mtact.md").read_text()


def test_a_variant_whose_training_summaries_are_missing_renders_dashes_without_warnings(tmp_path):
    import warnings

    out = json.loads((RESULTS / "kitchen_mtact.json").read_text())
    variant = out["variants"][0]
    out["runs"] = {k: v for k, v in out["runs"].items() if not k.startswith(f"{variant}_s")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.mean([]) of no runs used to warn and print nan
        kitchen_mtact.write_markdown(out, tmp_path / "table.md")
    row = next(line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith(f"| {variant} |"))
    assert row.endswith("| — | — | — | — |") and "nan" not in row
