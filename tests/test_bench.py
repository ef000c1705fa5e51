"""``streaming-dllm bench``: a --quick smoke run on a tiny random checkpoint checks the JSON schema,
the tables and the plots; unit tests cover the suites, paired speedups and sample notes.
No timing assertions: only shapes, counts and invariants that hold on any machine.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from streaming_dllm.bench import metrics, report, suites
from streaming_dllm.bench.runner import Method, MethodResult, Sample
from streaming_dllm.cli import main
from streaming_dllm.config import DecodeConfig

SUMMARY_KEYS = {"n", "accuracy", "throughput_tok_s", "latency_median_s", "latency_p90_s", "nfe_mean",
                "tokens_fed_mean", "tokens_mean", "used_mean", "seconds_total"}
METHOD_KEYS = {"label", "preset", "params", "config", "n_planned", "note", "stopped", "reused_from",
               "summary", "accuracy_delta_vs_vanilla", "speedup_vs_vanilla", "speedup_vs_fast_dllm",
               "time_speedup_vs_vanilla", "time_speedup_vs_fast_dllm", "peak_mem_mib", "samples"}
SAMPLE_KEYS = {"prompt", "batch", "seconds", "share", "tokens", "used", "nfe", "tokens_fed", "correct"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random 2-layer LLaDA with the task's chat tokenizer (trained on a few problems)."""
    from streaming_dllm.models.llada import LLaDAModel
    from streaming_dllm.tasks import arith
    from streaming_dllm.tasks import tokenizer as tok_lib
    from streaming_dllm.training import TrainConfig, model_config, save_checkpoint

    out = tmp_path_factory.mktemp("tiny_bench_ckpt")
    texts = [p.prompt + "\n" + p.solution for p in arith.problems("dev")]
    tok = tok_lib.train_tokenizer(texts, vocab_size=320)
    tok_lib.save_tokenizer(tok, out)
    cfg = model_config(TrainConfig(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64), tok)
    torch.manual_seed(0)
    save_checkpoint(LLaDAModel(cfg), cfg, out)
    return out


@pytest.fixture(scope="module")
def quick_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    doc = out / "DOC.md"
    doc.write_text(f"# Title\n\nintro\n\n{report.BEGIN}\nold figures\n{report.END}\n\ntrailer\n")
    rc = main(["bench", "--quick", "--model", str(tiny_checkpoint), "--device", "cpu", "--threads", "1",
               "--out", str(out), "--no-progress", "--update-doc", str(doc)])
    assert rc == 0
    return json.loads((out / "bench.json").read_text()), out


def test_quick_json_schema(quick_run):
    record, _ = quick_run
    assert record["schema"] == report.SCHEMA
    for key in ("created", "command", "settings", "model", "machine", "versions", "memory_method",
                "groups", "plots", "seconds"):
        assert key in record
    assert record["settings"]["quick"] is True
    assert record["command"][:3] == ["streaming-dllm", "bench", "--suite"] and "--quick" in record["command"]
    assert record["versions"]["torch"] == torch.__version__
    assert record["machine"]["cpu_count"] >= 1
    assert record["model"]["parameters"] > 0
    assert {g["suite"] for g in record["groups"]} == set(suites.SUITES)
    for g in record["groups"]:
        assert g["methods"]
        for m in g["methods"]:
            assert set(m) == METHOD_KEYS
            assert set(m["summary"]) == SUMMARY_KEYS
            assert m["config"]["gen_length"] == g["gen_length"]
            DecodeConfig(**m["config"])  # the recorded config is complete and valid
            assert m["summary"]["n"] == len(m["samples"]) == m["n_planned"]
            for s in m["samples"]:
                assert set(s) == SAMPLE_KEYS
                assert 0 <= s["tokens"] <= g["gen_length"] and s["nfe"] >= 1 and s["tokens_fed"] > 0
                assert s["seconds"] >= s["share"] > 0


def test_quick_figures_are_consistent(quick_run):
    record, _ = quick_run
    main_groups = [g for g in record["groups"] if g["suite"] == "main"]
    for g in main_groups:
        by = {m["label"]: m for m in g["methods"]}
        assert list(by) == list(suites.MAIN_METHODS)
        assert by["vanilla"]["speedup_vs_vanilla"] == pytest.approx(1.0)
        assert by["fast-dllm"]["speedup_vs_fast_dllm"] == pytest.approx(1.0)
        # vanilla and prefix-cache run one forward per generated token
        assert by["vanilla"]["summary"]["nfe_mean"] == g["gen_length"]
        assert by["prefix-cache"]["summary"]["nfe_mean"] == g["gen_length"]
        # smaller sample for the slow methods, and the table says so
        assert by["vanilla"]["summary"]["n"] < by["fast-dllm"]["summary"]["n"]
    ablation = next(g for g in record["groups"] if g["suite"] == "ablation")
    assert len(ablation["methods"]) == 5
    # a table identical to an earlier one is reused; a partial match is decoded afresh
    reused = {(g["suite"], g["name"]): {m["reused_from"] for m in g["methods"]} for g in record["groups"]}
    assert reused[("length", "gen_length=64")] == {"main/gen_length=64"}
    assert reused[("ablation", "gen_length=128")] == {None}
    assert reused[("window", "gen_length=128")] == reused[("alpha", "gen_length=128")] == {None}


def test_quick_outputs_tables_and_plots(quick_run):
    record, out = quick_run
    text = (out / "bench.md").read_text()
    header = "| method | n | accuracy | vs vanilla, points (95% CI) | tokens/s"
    assert text.count(header) == len(record["groups"])
    assert "smaller sample" in text
    assert set(record["plots"]) == {"main.png", "ablation.png", "length_scaling.png", "sweep_window.png",
                                    "sweep_alpha.png", "scatter.png"}
    for name in record["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = (out / "DOC.md").read_text()
    assert doc.startswith("# Title\n\nintro\n\n") and doc.endswith("\n\ntrailer\n")
    assert "old figures" not in doc and text.strip() in doc and "![scatter.png](scatter.png)" in doc


def test_bad_flags_exit_2(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--model", str(tiny_checkpoint), "--n", "0", "--no-plots"])
    assert exc.value.code == 2
    assert "--n" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--suite", "nope"])
    assert exc.value.code == 2


def test_ablation_switches_one_part_at_a_time():
    (group,) = suites.ablation(suites.FULL)
    base = group.methods[0].config
    assert base == DecodeConfig.preset("fast-dllm", gen_length=512, block_length=32)
    changed = []
    for m in group.methods[1:-1]:
        diff = {k for k, v in m.config.to_dict().items() if k != "preset_name" and base.to_dict()[k] != v}
        changed.append(diff)
    assert changed == [{"window"}, {"unmask", "alpha"}, {"early_exit"}]
    assert group.methods[-1].config == DecodeConfig.preset("streaming", gen_length=512, block_length=32)


def test_full_sizes_and_smaller_samples():
    groups = suites.build(list(suites.SUITES), suites.FULL)
    length = {g.gen_length: g for g in groups if g.suite == "length"}
    assert sorted(length) == [256, 512, 1024, 2048]
    for label in suites.SCALING_METHODS:
        ns = [next(m.n for m in length[L].methods if m.label == label) for L in sorted(length)]
        assert ns == sorted(ns, reverse=True)
        if label == "streaming":  # its cost does not grow with the length: full sample everywhere
            assert ns == [suites.FULL.n] * 4
        notes = [next(m.note for m in length[L].methods if m.label == label) for L in sorted(length)]
        assert all(note for n, note in zip(ns, notes, strict=True) if n < suites.FULL.n)
    vanilla = next(m for m in length[2048].methods if m.label == "vanilla")
    assert vanilla.n < suites.FULL.n_slow and "per token" in vanilla.note
    with pytest.raises(ValueError, match="unknown suite"):
        suites.build(["nope"], suites.FULL)


def _result(label: str, preset: str, rows: list[tuple[int, float, int]]) -> MethodResult:
    cfg = DecodeConfig.preset(preset, gen_length=64)
    samples = [Sample(p, p, sec, sec, tok, tok, 1, 1, True) for p, sec, tok in rows]
    return MethodResult(Method(label, cfg), len(rows), samples)


def test_paired_speedup_uses_shared_prompts_only():
    ref = _result("vanilla", "vanilla", [(0, 10.0, 10)])
    fast = _result("streaming", "streaming", [(0, 1.0, 10), (1, 100.0, 10)])
    assert metrics.paired_speedup(fast, ref) == pytest.approx(10.0)
    assert metrics.paired_time_speedup(fast, ref) == pytest.approx(10.0)
    silent = _result("vanilla", "vanilla", [(0, 10.0, 0)])
    assert metrics.paired_speedup(fast, silent) is None
    assert metrics.paired_time_speedup(fast, silent) == pytest.approx(10.0)
    assert metrics.paired_speedup(fast, None) is None
    assert metrics.find_reference([fast, ref], "vanilla", fast.method.config) is ref


def _scored(preset: str, correct: list[bool]) -> MethodResult:
    cfg = DecodeConfig.preset(preset, gen_length=64)
    samples = [Sample(p, p, 1.0, 1.0, 1, 1, 1, 1, c) for p, c in enumerate(correct)]
    return MethodResult(Method(preset, cfg), len(samples), samples)


def test_paired_accuracy_delta_counts_disagreements_on_shared_prompts():
    ref = _scored("vanilla", [True, True, False, False])
    fast = _scored("streaming", [True, False, True, True, False])  # prompt 4: vanilla never decoded it
    d = metrics.paired_accuracy_delta(fast, ref)
    assert d["n"] == 4 and (d["better"], d["worse"]) == (2, 1)
    assert d["delta"] == pytest.approx(0.25)
    # adjusted Wald: (2 + 1) / 6 up, (1 + 1) / 6 down, centre 1/6, variance (5/6 - 1/36) / 6
    lo, hi = d["ci95"]
    half = 1.96 * math.sqrt((5 / 6 - 1 / 36) / 6)
    assert (lo, hi) == (pytest.approx(1 / 6 - half), pytest.approx(1 / 6 + half))
    assert metrics.paired_accuracy_delta(fast, None) is None
    one = metrics.paired_accuracy_delta(_scored("streaming", [True]), _scored("vanilla", [False]))
    assert one["delta"] == 1.0 and one["ci95"][1] == 1.0 and one["ci95"][0] < 0  # clipped, and wide


def test_paired_accuracy_delta_interval_stays_wide_when_methods_agree():
    ref = _scored("vanilla", [True, False] * 4)
    d = metrics.paired_accuracy_delta(ref, ref)
    assert d["delta"] == 0 and (d["better"], d["worse"]) == (0, 0)
    lo, hi = d["ci95"]
    assert lo == pytest.approx(-hi) and hi == pytest.approx(1.96 * math.sqrt(0.2 / 10))  # +-27.7 points
    answers = [True, False] * 200
    big = metrics.paired_accuracy_delta(_scored("streaming", answers), _scored("vanilla", answers))
    assert big["ci95"][1] < 0.01  # 400 prompts without a disagreement: under one point


def test_percentile_and_summary():
    assert metrics.percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    assert math.isnan(metrics.percentile([], 50))
    s = metrics.summarize(_result("x", "vanilla", [(0, 2.0, 4), (1, 2.0, 0)]).samples)
    assert s["throughput_tok_s"] == pytest.approx(1.0) and s["accuracy"] == 1.0 and s["n"] == 2


def test_cpu_peak_memory_sees_a_large_allocation():
    from streaming_dllm.bench.memory import PeakMemory

    tracker = PeakMemory(torch.device("cpu"))
    if not tracker.available:
        pytest.skip("no /proc/self/clear_refs here")
    with tracker:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del block
    assert tracker.peak_bytes >= 48 * 2**20


def test_methods_run_records_no_suite(tiny_checkpoint, tmp_path):
    """--methods replaces the suites: the recorded command must not claim a --suite."""
    rc = main(["bench", "--quick", "--methods", "fast-dllm", "streaming", "--gen-lengths", "64",
               "--model", str(tiny_checkpoint), "--device", "cpu", "--threads", "1", "--out", str(tmp_path),
               "--no-progress", "--no-plots"])
    assert rc == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    assert "--suite" not in record["command"]
    assert record["command"][record["command"].index("--methods") + 1:][:2] == ["fast-dllm", "streaming"]
    assert [m["label"] for m in record["groups"][0]["methods"]] == ["fast-dllm", "streaming"]
