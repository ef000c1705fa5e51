"""CPU smoke test of ``benchmarks/gpu_check.py`` (the GPU machine runs it through gpu_check.sh).

On the CPU, "parity" compares two CPU float32 decodes, so it must be 100% identical; bf16 runs
on the CPU. The bench stage is not run here (``streaming-dllm bench`` has its own tests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PRESETS = ("vanilla", "streaming")


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_smoke_parity_and_bf16(tmp_path):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
    )
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--device",
        "cpu",
        "--n",
        "2",
        "--stages",
        "parity,bf16",
        "--gen-length",
        "64",
        "--presets",
        ",".join(PRESETS),
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "## Parity" in proc.stdout and "## bf16" in proc.stdout

    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["schema"] == "streaming-dllm-gpu-check/1"
    assert {"torch", "device_name", "requested_device"} <= set(data["environment"])
    assert set(data["stages"]) == {"parity", "bf16"}  # no bench

    parity = data["stages"]["parity"]
    assert parity["status"] == "ok" and parity["n"] == 2 and parity["gen_length"] == 64
    assert parity["logits"]["max_abs_diff"] == 0.0 and parity["logits"]["argmax_agree"] == 1.0
    assert list(parity["presets"]) == list(PRESETS)
    for row in parity["presets"].values():
        assert row["status"] == "ok"
        assert row["identical_rows"] == row["n"] == 2 and row["identical_share"] == 1.0
        assert row["mismatches"] == 0 and row["first_mismatches"] == []
        assert row["nfe_equal"] and row["nfe_device"] == row["nfe_cpu"] > 0 and row["row_nfe_equal"] == 2
        assert row["accuracy_device"] == row["accuracy_cpu"]

    bf16 = data["stages"]["bf16"]
    assert bf16["status"] == "ok" and bf16["compare"] == "cpu bfloat16 vs cpu float32"
    assert bf16["logits"]["max_abs_diff"] >= 0.0
    assert list(bf16["presets"]) == list(PRESETS)
    for row in bf16["presets"].values():
        assert row["status"] == "ok" and row["n"] == 2
        assert 0 <= row["identical_rows"] <= 2 and 0.0 <= row["identical_share"] <= 1.0
        assert 0.0 <= row["accuracy_float32"] <= 1.0 and 0.0 <= row["accuracy_bfloat16"] <= 1.0
        assert row["mismatches"] == 2 - row["identical_rows"] == len(row["first_mismatches"])
        assert row["nfe_float32"] > 0 and row["nfe_bfloat16"] > 0


def test_compare_rows_first_difference():
    gc = _module()
    same, diffs = gc.compare_rows([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 9, 6]])
    assert same == 1 and diffs == [{"row": 1, "first_diff": 1, "a": 5, "b": 9}]


def test_bench_summary_and_report(tmp_path):
    gc = _module()
    bench = {
        "settings": {"batch_size": 8},
        "model": {"dtype": "bfloat16", "device": "cuda:0"},
        "seconds": 12.5,
        "groups": [
            {
                "suite": "main",
                "name": "gen_length=256",
                "gen_length": 256,
                "methods": [
                    {
                        "label": "streaming",
                        "peak_mem_mib": 3.0,
                        "speedup_vs_vanilla": 50.0,
                        "summary": {
                            "n": 16,
                            "accuracy": 0.75,
                            "throughput_tok_s": 1234.5,
                            "latency_median_s": 0.01,
                            "latency_p90_s": 0.02,
                            "nfe_mean": 7.5,
                        },
                    }
                ],
            }
        ],
    }
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    s = gc.bench_summary(tmp_path / "bench.json")
    assert s["batch_size"] == 8 and s["dtype"] == "bfloat16"
    assert s["groups"][0]["methods"][0]["tokens_per_s"] == 1234.5
    data = {
        "environment": {"device_name": "X"},
        "stages": {
            "parity": {"status": "running"},
            "bench": {"status": "ok", "seconds": 20.0, "runs": {"bench_b8": {"status": "ok", **s}}},
        },
    }
    md = gc.markdown(data, missing=True)
    assert "killed" in md  # a stage still 'running' was killed from outside
    assert "`bf16`: not recorded" in md
    assert "| 256 | streaming | 16 | 75.0% | 1234.5 |" in md
