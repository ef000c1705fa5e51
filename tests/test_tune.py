"""``streaming-dllm tune`` and preset files: the rule, the pieces, bad input, and a tiny real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import streaming_dllm as sd
from streaming_dllm.bench.results import Method, MethodResult, Sample
from streaming_dllm.cli.commands import build_parser
from streaming_dllm.cli.options import config_from_args
from streaming_dllm.config import FIELDS, ConfigError, DecodeConfig
from streaming_dllm.preset_files import FORMAT, load_config, save_config
from streaming_dllm.tuning import rule, scorers, search, space, speed
from streaming_dllm.tuning.tasks import jsonl_task, load_task

CLI = [sys.executable, "-m", "streaming_dllm.cli"]


def _run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


# --- preset files -------------------------------------------------------------------------------


def test_preset_file_round_trip_holds_every_field(tmp_path):
    cfg = DecodeConfig.preset("streaming", window=16, alpha=0.6, gen_length=128, seed=3)
    path = save_config(cfg, tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["version"] == 1 and data["preset"] == "streaming"
    assert set(data["config"]) == set(FIELDS)
    back = load_config(path)
    assert back.key() == cfg.key() and back.preset_name == "streaming"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"config": {"windw": 8}}, "windw"),
        ({"config": {"threshold": 2.0}}, "threshold"),
        ({"config": {"gen_length": 100, "block_length": 32}}, "gen_length"),
        ({"config": {}, "extra": 1}, "extra"),
        ({"config": {}, "version": 99}, "version"),
    ],
)
def test_preset_file_errors_name_the_file_and_the_field(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": FORMAT, "version": 1, **content}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == field and str(path) in str(err.value) and field in str(err.value)


def test_preset_file_not_json_or_not_ours(tmp_path):
    for text in ("{not json", json.dumps({"config": {}})):
        path = tmp_path / "x.json"
        path.write_text(text)
        with pytest.raises(ConfigError, match="x.json"):
            load_config(path)


def test_decode_config_save_load_methods(tmp_path):
    if not hasattr(DecodeConfig, "save") or not hasattr(DecodeConfig, "load"):
        pytest.skip("DecodeConfig.save / DecodeConfig.load not added yet (they delegate to preset_files)")
    cfg = DecodeConfig.preset("fast-dllm", threshold=0.8)
    cfg.save(tmp_path / "c.json")
    assert DecodeConfig.load(tmp_path / "c.json").key() == cfg.key()


def test_preset_file_flag_is_the_base_and_flags_override(tmp_path):
    path = save_config(DecodeConfig.preset("streaming", window=16, alpha=0.6), tmp_path / "p.json")
    argv = ["generate", "--prompt", "x", "--preset-file", str(path), "--window", "8"]
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args, gen_length=64)  # a command default does not override the file
    assert (cfg.window, cfg.alpha, cfg.gen_length) == (8, 0.6, 256)
    bad = build_parser().parse_args(["generate", "--preset-file", str(tmp_path / "missing.json")])
    with pytest.raises(ConfigError, match="--preset-file: .*missing.json"):
        config_from_args(bad)


# --- the rule, the space, scorers and tasks -----------------------------------------------------


def _result(correct: list[bool], seconds: float = 1.0) -> MethodResult:
    samples = [Sample(i, 0, seconds, seconds, 10, 10, 1, 10, c) for i, c in enumerate(correct)]
    return MethodResult(Method("m", DecodeConfig()), len(samples), samples)


def test_rule_statuses():
    base = _result([True] * 300)
    assert rule.judge(_result([True] * 300), base, 0.01).status == "confirmed"  # 300 agreements prove it
    assert rule.judge(_result([True] * 20), _result([True] * 20), 0.01).status == "accepted"
    assert rule.judge(_result([False] + [True] * 19), _result([True] * 20), 0.01).status == "below"
    assert rule.judge(_result([False] * 20), _result([True] * 20), 0.01).status == "rejected"
    fast = rule.judge(_result([True] * 20, seconds=0.5), _result([True] * 20), 0.01)
    assert fast.tok_s == pytest.approx(20.0) and rule.rank_key(fast) > rule.rank_key(None)


def test_space_is_valid_and_follows_the_family():
    base = DecodeConfig.preset("vanilla", gen_length=64)
    pool = space.candidates(base, max_configs=30)
    labels = [c.label for c in pool]
    assert len(pool) == 30 and "streaming" in labels and len(set(c.config.key() for c in pool)) == 30
    assert all(64 % c.config.block_length == 0 for c in pool)
    costs = [space.cost(c.config) for c in pool]
    assert costs == sorted(costs)  # cheap configurations first
    causal = space.candidates(base, block_causal=True, max_configs=20)
    assert all(c.config.window is None and c.config.block_length == 32 for c in causal)


def test_space_seeds_streaming_neighbours_first():
    base = DecodeConfig.preset("vanilla", gen_length=128)
    pool = space.candidates(base, max_configs=48)
    seeded = [c for c in pool if c.seeded]
    near = space.neighbours(DecodeConfig.preset("streaming", gen_length=128))
    assert {c.key() for c in near} <= {c.config.key() for c in seeded}
    assert any(c.cache == "dual" and c.block_length == 64 for c in near)
    assert all(128 % c.block_length == 0 and c.unmask == "dynamic" for c in near)
    small = space.candidates(base, max_configs=6)  # the anchors and neighbours come before the sample
    assert len(small) == 6 and all(c.seeded for c in small)
    anchor = next(c for c in pool if c.label == "streaming")
    kept = search.affordable(pool, anchor, 0.1, 0.1 * 8 * 2 * len(seeded) * 1.5, 8, 2)
    assert all(c.seeded for c in kept[: len(seeded)])


def test_choice_prefers_accuracy_among_equally_fast_configs():
    """The final pick: confirmed before accepted; among acceptable configs within SPEED_TIE of the
    fastest, the most accurate; a clearly faster acceptable config still wins."""
    cands = [search.Candidate(f"c{i}", DecodeConfig.preset("streaming", window=8 + i)) for i in range(4)]
    base = _result([True] * 19 + [False])
    v = {cands[0].config.key(): rule.judge(_result([True] * 18 + [False] * 2), base, 0.06),  # -5 points
         cands[1].config.key(): rule.judge(_result([True] * 20), base, 0.06),  # +5 points
         cands[2].config.key(): rule.judge(_result([True] * 19 + [False]), base, 0.06),  # equal
         cands[3].config.key(): rule.judge(_result([False] * 20), base, 0.06)}  # rejected
    assert [v[c.config.key()].status for c in cands] == ["accepted", "accepted", "accepted", "rejected"]
    key = [c.config.key() for c in cands]
    tie = {key[0]: 1.20, key[1]: 1.17, key[2]: 1.19, key[3]: 2.0}
    assert search.choose(cands, v, tie) is cands[1]  # 1.17 is within 5% of 1.20: the most accurate
    apart = {key[0]: 1.30, key[1]: 1.17, key[2]: 1.19, key[3]: 2.0}
    assert search.choose(cands, v, apart) is cands[0]  # 1.30 is clearly faster
    assert search.choose(cands[3:], v, tie) is None


def test_relative_speed_is_paired_and_ignores_a_burst():
    ref = _result([True] * 9, seconds=1.0)
    fast = _result([True] * 9, seconds=0.8)
    fast.samples[0].share = 50.0  # one decode hit by a burst of load
    assert speed.relative_speed(fast, ref) == pytest.approx(1.25)
    assert speed.relative_speed(fast, _result([])) is None


def test_halving_keeps_a_fast_config_that_lost_one_answer():
    ref = search.Candidate("streaming", DecodeConfig.preset("streaming"))
    cands = [search.Candidate(f"c{i}", DecodeConfig.preset("streaming", window=8 + i)) for i in range(6)]
    alive = [ref, *cands]
    base = _result([True] * 8)
    v = {c.config.key(): rule.judge(_result([True] * 8), base, 0.01) for c in alive}
    v[cands[0].config.key()] = rule.judge(_result([False] + [True] * 7), base, 0.01)  # one answer lost
    v[cands[1].config.key()] = rule.judge(_result([False] * 8), base, 0.01)  # rejected
    v[cands[2].config.key()] = rule.judge(_result([False] * 3 + [True] * 5), base, 0.01)  # below, far
    speeds = {c.config.key(): 1.0 + i for i, c in enumerate(alive)}
    speeds[ref.config.key()] = 0.5
    kept = search.select(alive, v, speeds, 0.01, ref)
    keys = {c.config.key() for c in kept}
    assert v[cands[0].config.key()].status == "below" and cands[0].config.key() in keys
    assert cands[1].config.key() not in keys and cands[2].config.key() not in keys
    assert ref.config.key() in keys  # the speed reference stays
    assert kept[0].config.key() == cands[5].config.key()  # acceptable and fastest first


def test_scorers(tmp_path, monkeypatch):
    assert scorers.resolve("exact", scorers.exact)(" 42 ", 42)
    rx = scorers.resolve(r"regex:answer is (\d+)", scorers.exact)
    assert rx("so the answer is 7.", "7") and not rx("no", "7")
    with pytest.raises(ValueError, match="--scorer"):
        scorers.resolve("regex:(", scorers.exact)
    (tmp_path / "myscore.py").write_text("def boom(a, r):\n    raise KeyError('x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = scorers.resolve("myscore:boom", scorers.exact)
    with pytest.raises(ValueError, match="--scorer: boom raised KeyError on sample 's1'"):
        scorers.safe_score(fn, "a", "b", "s1")
    with pytest.raises(ValueError, match="has no function"):
        scorers.resolve("myscore:nothing", scorers.exact)


def test_jsonl_task_seeded_split_and_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "reference": str(i)}) for i in range(10)) + "\n")
    a, b = jsonl_task(path, seed=1), jsonl_task(path, seed=1)
    assert [i.id for i in a.dev] == [i.id for i in b.dev] and len(a.dev) + len(a.held_out) == 10
    assert not {i.id for i in a.dev} & {i.id for i in a.held_out}
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl has 0 prompt"):
        jsonl_task(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        jsonl_task(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task("nope")


def test_lm_eval_task_loads_offline():
    pytest.importorskip("lm_eval")
    task = load_task("lm_eval:streaming-dllm-arith")
    assert len(task.dev) + len(task.held_out) == 500 and task.gen_length == 128
    doc = task.dev[0].reference
    assert task.scorer(f"The answer is {doc['answer']}.", doc)


# --- command line: one clear error each ---------------------------------------------------------


def _one_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and text in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("streaming-dllm: error:")


def test_cli_bad_input_is_one_line(tmp_path):
    out = str(tmp_path / "o")
    _one_error(_run("tune", "--task", "nope", "--out", out), "--task: unknown task 'nope'")
    _one_error(_run("tune", "--epsilon", "-1", "--out", out), "--epsilon: must be")
    (tmp_path / "e.jsonl").write_text("")
    _one_error(_run("tune", "--task", str(tmp_path / "e.jsonl"), "--out", out), "has 0 prompt(s)")


def test_cli_raising_scorer_and_tiny_budget(tmp_path):
    (tmp_path / "badscore.py").write_text("def score(a, r):\n    raise RuntimeError('broken')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    common = ["--baseline", "fast-dllm", "--gen-length", "32", "--no-progress", "--threads", "1"]
    proc = _run("tune", *common, "--scorer", "badscore:score", "--out", str(tmp_path / "a"), env=env)
    _one_error(proc, "--scorer: score raised RuntimeError")
    proc = _run("tune", "--budget-min", "0.01", "--no-progress", "--out", str(tmp_path / "b"))
    _one_error(proc, "--budget-min: 0.01 min is too small to measure the baseline")


# --- a real (tiny) run --------------------------------------------------------------------------


def test_tune_tiny_budget_writes_preset_report_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    model = sd.load_model("builtin")
    kw = dict(
        baseline="fast-dllm", gen_length=32, block_length=16, budget_min=0.25, max_configs=6, progress=False
    )
    res = sd.tune(model, "arith", out=tmp_path, **kw)
    cfg, table = res
    assert isinstance(cfg, DecodeConfig) and table[0]["status"] == "baseline" and len(table) >= 2
    assert load_config(tmp_path / "preset.json").key() == cfg.key()
    report = (tmp_path / "report.md").read_text()
    assert "held out" in report and "Overfit" in report and "pareto.png" in report
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.held_out.n >= 1 and res.held_out.chosen is not None
    lines = len((tmp_path / "measurements.jsonl").read_text().splitlines())
    again = sd.tune(model, "arith", out=tmp_path, **kw)  # resumes: what was measured is not decoded again
    assert again.plan.baseline_s == res.plan.baseline_s  # the calibration decode came from the cache
    assert again.held_out.n >= 1  # its size follows the time left (the cache saves some)
    assert len((tmp_path / "measurements.jsonl").read_text().splitlines()) >= lines
    argv = ["generate", "--prompt", "x", "--preset-file", str(tmp_path / "preset.json")]
    args = build_parser().parse_args(argv)
    assert config_from_args(args).key() == again.config.key()  # the second run wrote the file last


# --- every front end reads a preset file --------------------------------------------------------


def test_front_ends_read_a_preset_file(tmp_path):
    cfg = DecodeConfig.preset("streaming", window=16, gen_length=64).replace(preset_name="tuned")
    path = str(save_config(cfg, tmp_path / "p.json"))
    from streaming_dllm.server.cli import settings_from_args

    serve = build_parser().parse_args(["serve", "--preset-file", path])
    settings = settings_from_args(serve)
    assert settings.decode_config(max_tokens=100).window == 16
    assert settings.decode_config("vanilla").window is None
    plan = _run("bench", "--preset-file", path, "--plan")
    assert plan.returncode == 0 and "file: tuned" in plan.stdout, plan.stderr
    _one_error(_run("bench", "--preset-file", str(tmp_path / "no.json"), "--plan"), "--preset-file: ")
    pytest.importorskip("lm_eval")
    from streaming_dllm.lm_eval_adapter.model import build_decode_config

    assert build_decode_config(preset_file=path, alpha=0.5).key() == cfg.replace(alpha=0.5).key()
    with pytest.raises(ValueError, match="preset_file="):
        build_decode_config(preset_file=path, method="vanilla")
