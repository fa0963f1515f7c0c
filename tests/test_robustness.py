"""The fuzz harness (benchmarks/robustness.py) at a small budget: generated bad input on every surface gives a
clear error or is harmless; no traceback, hang, silent wrong result, blow-up, code execution or leaked process."""

import json
import subprocess
import sys

from conftest import REPO, cli_env


def test_generated_bad_inputs_give_clear_errors(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "robustness.py"), "--cases", "240",
                             "--only", "overrides,bundles,datasets", "--out", str(tmp_path), "--check"],
                            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = json.loads((tmp_path / "robustness.json").read_text())
    assert set(out["counts"]) == {"overrides", "bundles", "datasets"}
    total = sum(sum(c.values()) for c in out["counts"].values())
    assert total >= 200 and out["leaked_processes"] == 0
    assert all(c.get("clear error", 0) > 0 for c in out["counts"].values())  # the generators do reach the checks
