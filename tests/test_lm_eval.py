"""lm-evaluation-harness integration: presets, registration, the estimator, and the offline task.

The end-to-end test runs the harness CLI on the built-in arithmetic task, offline, and checks
that its accuracy (and every answer) equals our own decoding of the same problems.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

import streaming_dllm as sd
from streaming_dllm.loading import BUILTIN_DIR

pytest.importorskip("lm_eval")

from streaming_dllm.lm_eval_adapter import PAPER_PRESETS, TASKS_DIR, paper_preset  # noqa: E402
from streaming_dllm.lm_eval_adapter.loglikelihood import mc_loglikelihood  # noqa: E402
from streaming_dllm.lm_eval_adapter.model import StreamingDLLMEval, build_decode_config  # noqa: E402
from streaming_dllm.tasks import arith, arith_eval  # noqa: E402

# The checkpoint under test: the shipped built-in model (override for development only).
MODEL = os.environ.get("STREAMING_DLLM_LM_EVAL_MODEL", "builtin")
# The harness's console script of this interpreter's environment.
LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))
needs_model = pytest.mark.skipif(
    MODEL == "builtin" and not (BUILTIN_DIR / "config.json").is_file(),
    reason="built-in checkpoint not present in src/streaming_dllm/builtin",
)


@dataclass
class Req:
    """The part of a harness Instance the model reads."""

    args: tuple


# ------------------------------------------------------------------ presets and config
def test_paper_presets_match_table_11():
    assert len(PAPER_PRESETS) == 24  # 3 families x 4 tasks x 2 lengths
    assert paper_preset("llada-1.5/gsm8k/512") == dict(
        gen_length=512, block_length=32, window=128, threshold=0.9, alpha=0.6
    )
    assert paper_preset("dream/humaneval/256")["window"] == 192
    assert paper_preset("dream/humaneval/256")["alpha"] == 0.7
    assert paper_preset("llada/math/512")["window"] == 256
    assert paper_preset("llada/math/512")["alpha"] == 0.2
    with pytest.raises(ValueError, match="preset='llada/gsm8k/1024'"):
        paper_preset("llada/gsm8k/1024")


def test_decode_config_from_model_args():
    cfg = build_decode_config(preset="llada-1.5/gsm8k/512")
    assert (cfg.preset_name, cfg.cache, cfg.unmask, cfg.early_exit) == (
        "streaming",
        "prefix",
        "dynamic",
        True,
    )
    assert (cfg.gen_length, cfg.window, cfg.alpha, cfg.block_length) == (512, 128, 0.6, 32)
    # explicit args win over the paper preset; the method is a preset name
    cfg = build_decode_config(method="fast-dllm", preset="llada/gsm8k/256", gen_length=128, early_exit="true")
    assert (cfg.cache, cfg.unmask, cfg.gen_length, cfg.early_exit) == ("prefix", "threshold", 128, True)
    with pytest.raises(ValueError, match="window_size"):
        build_decode_config(window_size=96)
    with pytest.raises(ValueError, match="method='nope'"):
        build_decode_config(method="nope")
    with pytest.raises(ValueError, match="gen_length"):
        build_decode_config(gen_length=100, block_length=32)


# ------------------------------------------------------------------ registration
def test_entry_point_declared_and_resolves():
    eps = {ep.name: ep for ep in entry_points(group="lm_eval.models")}
    assert "streaming-dllm" in eps, "reinstall the package (pip install -e .) to refresh entry points"
    assert eps["streaming-dllm"].load() is StreamingDLLMEval


def test_plain_lm_eval_finds_the_model_through_the_startup_hook():
    """A fresh interpreter (what the ``lm_eval`` command is) resolves our model by name."""
    code = ("from lm_eval.api.registry import get_model, model_registry; "
            "print(get_model('streaming-dllm').__name__, model_registry._objs['hf'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    hint = "reinstall the package (pip install -e .) to install the .pth hook\n"
    assert proc.returncode == 0, hint + proc.stderr
    assert proc.stdout.split() == ["StreamingDLLMEval", "lm_eval.models.huggingface:HFLM"]


def test_register_plugins_makes_model_resolvable():
    from lm_eval.api.registry import get_model, model_registry

    from streaming_dllm.lm_eval_adapter.cli import register_plugins, with_task_path

    register_plugins()
    assert get_model("streaming-dllm") is StreamingDLLMEval
    assert model_registry._objs["hf"] == "lm_eval.models.huggingface:HFLM"  # built-ins untouched
    assert with_task_path(["--tasks", "x"])[-2:] == ["--include_path", str(TASKS_DIR)]
    assert with_task_path(["--include_path", "/mine"]) == ["--include_path", "/mine"]
    assert (TASKS_DIR / "streaming_dllm_arith" / "streaming_dllm_arith.yaml").is_file()


# ------------------------------------------------------------------ the estimator
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_mc_loglikelihood_single_token_is_exact(tiny_models, family):
    """With one target token every sample masks it, so the estimate is exactly log p(y | x)."""
    model = tiny_models[family]
    prefix, y = [5, 17, 42, 9], 23
    est = mc_loglikelihood(model, prefix, [y], n_samples=4, batch_size=2)
    ids = torch.tensor([prefix + [model.mask_id]])
    logits = model(ids, torch.arange(5)[None]).double().log_softmax(-1)
    row = 3 if model.traits.logit_shift else 4  # Dream: logits at i-1 predict token i
    assert est == pytest.approx(float(logits[0, row, y]), rel=1e-5)  # float32 cross-entropy


def test_mc_loglikelihood_is_seeded(llada_tiny):
    a = mc_loglikelihood(llada_tiny, [1, 2, 3], [4, 5, 6, 7], n_samples=8, batch_size=4, seed=3)
    b = mc_loglikelihood(llada_tiny, [1, 2, 3], [4, 5, 6, 7], n_samples=8, batch_size=8, seed=3)
    assert a == b < 0


# ------------------------------------------------------------------ with the built-in model
@pytest.fixture(scope="module")
def lm() -> StreamingDLLMEval:
    return StreamingDLLMEval(
        pretrained=MODEL,
        device="cpu",
        method="streaming",
        gen_length=64,
        window=32,
        batch_size=4,
        mc_num=32,
        mc_batch_size=16,
        show_speed=False,
    )


def _chat(lm: StreamingDLLMEval, problem: arith.Problem) -> str:
    return lm.apply_chat_template(arith.messages(problem))


@needs_model
def test_generate_until_batching_until_and_max_gen_toks(lm):
    probs = arith.problems("test", n=6)
    greedy = {"until": [], "do_sample": False}
    reqs = [Req((_chat(lm, p), dict(greedy))) for p in probs]
    batched = lm.generate_until(reqs)
    lm.batch_size = 1
    try:
        alone = lm.generate_until(reqs)
    finally:
        lm.batch_size = 4
    assert batched == alone  # answers stay with their requests whatever the batching
    cut = lm.generate_until([Req((_chat(lm, probs[0]), {"until": ["="], "do_sample": False}))])[0]
    assert "=" not in cut and batched[0].startswith(cut)
    short = lm.generate_until([Req((_chat(lm, probs[0]), {"max_gen_toks": 5, "do_sample": False}))])[0]
    assert len(lm.tok_encode(short, add_special_tokens=False)) <= 5
    assert lm.speed["samples"] == 1 and lm.speed["nfe"] > 0 and lm.speed["tokens_per_second"] > 0


def test_request_config_rounds_with_for_budget_and_groups_by_key():
    """max_gen_toks becomes gen_length by DecodeConfig.for_budget; requests whose configs have
    equal keys (the preset's name is only a label) share a batch."""
    lm = StreamingDLLMEval.__new__(StreamingDLLMEval)
    lm.decode_config = build_decode_config("fast-dllm", block_length=32)
    lm.fixed_gen_length, lm._warned = False, set()
    for toks in (1, 31, 32, 33, 200):
        cfg, max_toks = lm._request_config({"max_gen_toks": toks})
        assert max_toks == toks and cfg == lm.decode_config.for_budget(toks)
        assert cfg.gen_length == sd.config.gen_length_for(toks, 32)
    a, _ = lm._request_config({"max_gen_toks": 40})
    b = sd.DecodeConfig.preset("fast-dllm", gen_length=64, block_length=32).replace(preset_name="other")
    assert a.key() == b.key()


@needs_model
def test_loglikelihood_ranks_the_right_answer_first(lm):
    """Tiny multiple choice: the worked solution's final line, right number vs three wrong ones."""
    ranked_first = 0
    probs = arith.problems("test", n=4)
    for p in probs:
        work = p.solution.rsplit(" The answer is", 1)[0]
        context = _chat(lm, p) + work
        wrong = [p.answer + 1, p.answer + 10, max(0, p.answer - 7)]
        choices = [p.answer] + [w for w in wrong if w != p.answer]
        scores = [ll for ll, _ in lm.loglikelihood([Req((context, f"The answer is {c}.")) for c in choices])]
        ranked_first += int(max(range(len(choices)), key=scores.__getitem__) == 0)
    assert ranked_first == len(probs)


def _our_answers(model, tok, problems: list[arith.Problem], cfg: sd.DecodeConfig) -> list[str]:
    """Each answer of our own decoding, up to the end of turn / EOS."""
    out = sd.generate(model, arith_eval.encode_prompts(tok, problems), cfg)
    stops = {model.eos_id, model.config.get("eot_token_id")}
    answers = []
    for r in range(len(problems)):
        ids = out.generated(r)
        end = next((j for j, t in enumerate(ids) if t in stops), len(ids))
        answers.append(tok.decode(ids[:end], skip_special_tokens=True))
    return answers


@needs_model
def test_harness_cli_offline_accuracy_equals_our_decoding(tmp_path):
    # 80 problems, so that the accuracies compared below are not zero (asserted below).
    n, gen_length, window = 80, 128, 32
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    model_args = f"pretrained={MODEL},method=streaming,gen_length={gen_length},window={window},mc_num=8"
    tasks = "streaming-dllm-arith,streaming-dllm-arith-mc"
    # The harness's own command: the model is found through our entry point, the tasks through
    # --include_path (streaming-dllm-eval would add it by itself).
    cmd = [LM_EVAL, "--model", "streaming-dllm", "--include_path", str(TASKS_DIR)]
    cmd += ["--model_args", model_args, "--tasks", tasks, "--limit", str(n), "--apply_chat_template"]
    cmd += ["--batch_size", "8", "--device", "cpu", "--log_samples", "--output_path", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tokens/s" in proc.stdout and "nfe" in proc.stdout  # the show_speed report
    results = json.loads(next(Path(tmp_path).rglob("results_*.json")).read_text())
    harness_acc = results["results"]["streaming-dllm-arith"]["exact_match,none"]
    sample_file = next(Path(tmp_path).rglob("samples_streaming-dllm-arith_*.jsonl"))
    harness = {}
    for line in sample_file.read_text().splitlines():
        sample = json.loads(line)
        harness[sample["doc_id"]] = sample["resps"][0][0]

    # Our own bench on the same problems and settings.
    cfg = sd.DecodeConfig.preset("streaming", gen_length=gen_length, window=window)
    model = sd.load_model(MODEL)
    tok = sd.load_tokenizer(model)
    probs = arith.problems("test", n=n)
    bench = arith_eval.evaluate(model, tok, probs, cfg, batch_size=8)
    print(f"harness exact_match={harness_acc:.4f}  bench accuracy={bench.accuracy:.4f}  (n={n})")
    assert bench.accuracy > 0
    assert harness_acc == pytest.approx(bench.accuracy)
    assert [harness[i] for i in range(n)] == _our_answers(model, tok, probs, cfg)  # answer by answer

    # The multiple-choice variant goes through the harness's loglikelihood path.
    # (Its accuracy measures the model, not the adapter: it is reported, not asserted.)
    mc_acc = results["results"]["streaming-dllm-arith-mc"]["acc,none"]
    print(f"harness multiple-choice acc={mc_acc:.4f} (n={n}, 4 choices, chance 0.25)")
    mc_file = next(Path(tmp_path).rglob("samples_streaming-dllm-arith-mc_*.jsonl"))
    mc = [json.loads(line) for line in mc_file.read_text().splitlines()]
    assert len(mc) == n and all(len(m["resps"]) == 4 for m in mc)
    assert all(-1e6 < float(r[0][0]) < 0 for m in mc for r in m["resps"])
    speed = results["config"]["streaming_dllm"]["speed"]
    assert speed["samples"] == n and speed["nfe"] > 0
