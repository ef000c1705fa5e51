"""Tensor parallel on CPU with two real gloo ranks launched by torchrun.

Tiny random checkpoints of every family are written to disk (plus the shipped ``builtin`` and
``builtin-bd``). One ``python -m torch.distributed.run --nproc_per_node 2`` launch runs this file
as a worker: each rank loads every checkpoint with ``tensor_parallel=2``, records logits (plain and
K/V-cached forwards), its K/V cache's head count and the tokens of ``sd.generate`` for every preset
the family runs. The test process computes the same single-process and compares.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import streaming_dllm as sd
from streaming_dllm.config import PRESETS, DecodeConfig
from streaming_dllm.models.registry import family_for
from streaming_dllm.parallel.tensor import shard_model

WORLD = 2
LOGIT_TOL = 1e-5
SRC = Path(__file__).resolve().parents[1] / "src"
BLOCK_PRESETS = ("sdar", "fast-dllm-v2", "llada2", "llada2.1")
FULL_PRESETS = tuple(p for p in PRESETS if p not in BLOCK_PRESETS)
BLOCK_ONLY_ON_BUILTIN = ("llada2",)
"""The block-diffusion presets the full-attention built-in model also accepts."""

_QWEN = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
         "intermediate_size": 96, "vocab_size": 320, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
         "mask_token_id": 319, "eos_token_id": 5, "pad_token_id": 0, "rope_theta": 10000.0}
CONFIGS: dict[str, dict] = {
    "llada": {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": 64, "n_heads": 4,
              "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 96, "vocab_size": 320, "embedding_size": 320,
              "include_bias": True, "max_sequence_length": 256, "mask_token_id": 319, "eos_token_id": 5,
              "pad_token_id": 0},
    "dream": {**_QWEN, "model_type": "dream", "architectures": ["DreamModel"]},
    "sdar": {**_QWEN, "model_type": "sdar", "architectures": ["SDARForCausalLM"], "head_dim": 16,
             "tie_word_embeddings": True, "block_size": 4},
    "fast_dllm_v2": {**_QWEN, "model_type": "fast_dllm_qwen", "architectures": ["Fast_dLLM_QwenForCausalLM"],
                     "bd_size": 4},
    "llada2": {**_QWEN, "model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"], "head_dim": 16,
               "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_experts": 8, "num_experts_per_tok": 2,
               "n_group": 2, "topk_group": 1, "moe_intermediate_size": 32, "num_shared_experts": 1,
               "use_qkv_bias": True, "use_bias": True, "partial_rotary_factor": 0.5},
}


def write_checkpoint(folder: Path, config: dict, seed: int = 0) -> Path:
    """A random checkpoint of ``config``'s family (config.json + model.safetensors)."""
    cls = family_for(config)
    torch.manual_seed(seed)
    model = cls(config)
    tied = set(cls.tied_weights(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.1) + (1.0 if "norm" in name else 0.0))
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# ---------------------------------------------------------------- what each rank and the single process run
def run_case(model, case: dict) -> dict:
    """Logits (plain, then K/V-cached), the cache's K/V head count and every preset's tokens."""
    ids = torch.tensor([case["prompts"][0]])
    n = ids.shape[1]
    pos = torch.arange(n)[None]
    half = n // 2
    out: dict = {}
    with torch.inference_mode():
        out["logits"] = model(ids, pos)
        cache = model.new_cache()
        cache.store(n)
        model(ids[:, :half], pos[:, :half], cache)
        cache.attend()
        out["cached_logits"] = model(ids[:, half:], pos[:, half:], cache)
    out["cache_kv_heads"] = cache.keys[0].shape[1]
    out["tokens"], out["nfe"] = {}, {}
    for name in case["presets"]:
        cfg = DecodeConfig.preset(name, **case["decode"])
        if cfg.sub_block_length and cfg.block_length % cfg.sub_block_length:
            cfg = cfg.replace(sub_block_length=cfg.block_length // 2)
        result = sd.generate(model, case["prompts"], cfg, seeds=[11, 12])
        out["tokens"][name] = result.sequences.tolist()
        out["nfe"][name] = result.nfe
    return out


def worker(out_dir: str, spec_file: str) -> None:
    """One rank: every case loaded with tensor_parallel=2, its results saved for the test."""
    spec = json.loads(Path(spec_file).read_text())
    results: dict = {}
    for case in spec["cases"]:
        model = sd.load_model(case["path"], tensor_parallel=WORLD)
        results[case["name"]] = run_case(model, case)
    errors = {}
    for name, path, tp in (("kv_heads", spec["indivisible"], WORLD), ("world", "builtin", 4)):
        try:
            sd.load_model(path, tensor_parallel=tp)
        except ValueError as exc:
            errors[name] = str(exc)
    results["errors"] = errors
    rank = torch.distributed.get_rank()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


# ---------------------------------------------------------------- the test process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _builtin_prompts(name: str) -> list[list[int]]:
    from streaming_dllm.tasks import arith
    from streaming_dllm.tasks.arith_eval import encode_prompts

    return encode_prompts(sd.load_tokenizer(name), arith.problems("test", 2))


def _cases(root: Path) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rand = [torch.randint(10, 300, (k,), generator=gen).tolist() for k in (9, 6)]
    full = {"gen_length": 16, "block_length": 8}
    block = {"gen_length": 16, "block_length": 4}
    cases = [
        {"name": "builtin", "path": "builtin", "prompts": _builtin_prompts("builtin"),
         "presets": FULL_PRESETS + BLOCK_ONLY_ON_BUILTIN, "decode": {"gen_length": 32, "block_length": 8}},
        {"name": "builtin-bd", "path": "builtin-bd", "prompts": _builtin_prompts("builtin-bd"),
         "presets": BLOCK_PRESETS, "decode": {"gen_length": 16, "block_length": 4}},
    ]
    for family, config in CONFIGS.items():
        block_family = family_for(config).traits.block_causal
        presets = BLOCK_PRESETS if block_family else FULL_PRESETS
        path = write_checkpoint(root / family, config)
        cases.append({"name": family, "path": str(path), "prompts": rand, "presets": presets,
                      "decode": block if block_family else full})
    return cases


def _torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *argv]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[list[dict], list[dict]]:
    """(cases, the two ranks' results) of one torchrun launch."""
    root = tmp_path_factory.mktemp("tp")
    cases = _cases(root)
    spec = root / "cases.json"
    indivisible = write_checkpoint(root / "kv1", {**CONFIGS["dream"], "num_key_value_heads": 1})
    spec.write_text(json.dumps({"cases": cases, "indivisible": str(indivisible)}))
    cmd = _torchrun(__file__, "worker", str(root), str(spec))
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    ranks = [torch.load(root / f"rank{r}.pt") for r in range(WORLD)]
    return cases, ranks


@pytest.fixture(scope="module")
def single(launched) -> dict:
    cases, _ = launched
    return {case["name"]: run_case(sd.load_model(case["path"]), case) for case in cases}


CASE_NAMES = ["builtin", "builtin-bd", *CONFIGS]


def _tolerance(reference: torch.Tensor) -> float:
    """1e-5, scaled up for a trained model whose logits exceed 1 in size: float32 rounding is
    relative (the built-in model's logits reach ~14, where one float32 run already differs from a
    float64 one by 1.3e-5)."""
    return LOGIT_TOL * max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("name", CASE_NAMES)
def test_logits_equal_a_single_process(launched, single, name):
    _, ranks = launched
    for key in ("logits", "cached_logits"):
        ref = single[name][key]
        tol = _tolerance(ref) if name.startswith("builtin") else LOGIT_TOL
        for rank in ranks:
            diff = (rank[name][key] - ref).abs().max().item()
            assert diff <= tol, (name, key, diff)
        assert torch.equal(ranks[0][name][key], ranks[1][name][key]), (name, key)


@pytest.mark.parametrize("name", ["builtin", "builtin-bd"])
def test_sharded_logits_are_as_close_to_float64_as_a_single_process(launched, single, name):
    """On the trained models the sharded float32 logits differ from the single process's by more
    than 1e-5; both are float32 roundings of the same function: against the float64 model, the
    sharded logits are no further off than the single process's (within a factor of 2)."""
    cases, ranks = launched
    case = next(c for c in cases if c["name"] == name)
    ids = torch.tensor([case["prompts"][0]])
    with torch.inference_mode():
        exact = sd.load_model(case["path"]).double()(ids, torch.arange(ids.shape[1])[None])
    single_err = (single[name]["logits"].double() - exact).abs().max().item()
    sharded_err = (ranks[0][name]["logits"].double() - exact).abs().max().item()
    assert sharded_err <= 2 * single_err + 1e-6, (sharded_err, single_err)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_generate_tokens_equal_on_every_rank_and_a_single_process(launched, single, name):
    cases, ranks = launched
    case = next(c for c in cases if c["name"] == name)
    assert list(ranks[0][name]["tokens"]) == list(case["presets"])
    for preset in case["presets"]:
        want = single[name]["tokens"][preset]
        for rank in ranks:
            assert rank[name]["tokens"][preset] == want, (name, preset)
            assert rank[name]["nfe"][preset] == single[name]["nfe"][preset], (name, preset)


def test_every_preset_runs_under_tensor_parallel(launched):
    """Every preset is checked on a model that runs it: the full-attention ones on ``builtin``, the
    block-diffusion ones on ``builtin-bd``."""
    _, ranks = launched
    covered = set(ranks[0]["builtin"]["tokens"]) | set(ranks[0]["builtin-bd"]["tokens"])
    assert covered == set(PRESETS)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_kv_cache_holds_the_local_heads(launched, single, name):
    _, ranks = launched
    full = single[name]["cache_kv_heads"]
    assert full % WORLD == 0 and full >= WORLD
    for rank in ranks:
        assert rank[name]["cache_kv_heads"] == full // WORLD


def test_errors_under_torchrun(launched):
    _, ranks = launched
    errors = ranks[0]["errors"]
    assert "num_key_value_heads" in errors["kv_heads"] and "not divisible by 2" in errors["kv_heads"]
    assert "tensor_parallel=4" in errors["world"] and "2 ranks" in errors["world"]


# ---------------------------------------------------------------- the command line under torchrun
PROMPT = "Tom has 3 apples and buys 4. How many apples does Tom have now?"


def test_generate_command_prints_once_on_rank_zero():
    argv = ["-m", "streaming_dllm", "generate", "--model", "builtin", "--device", "cpu", "--prompt", PROMPT]
    one = subprocess.run([sys.executable, *argv], env=_env(), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    tp = subprocess.run(_torchrun(*argv, "--tensor-parallel", str(WORLD)), env=_env(), capture_output=True,
                        text=True, timeout=120)
    assert tp.returncode == 0, tp.stderr[-3000:]
    assert one.stdout.strip() and tp.stdout == one.stdout
    assert tp.stderr.count("tokens, nfe") == 1


def test_serve_refuses_same_settings_batching():
    argv = ["-m", "streaming_dllm", "serve", "--tensor-parallel", "2", "--batching", "same-settings"]
    proc = subprocess.run([sys.executable, *argv], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--batching: same-settings cannot run under --tensor-parallel" in proc.stderr


SERVE_REQUESTS = [
    {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 48},
    {"messages": [{"role": "user", "content": "Ann has 9 pens and gives away 2. How many are left?"}],
     "max_tokens": 32, "extra_body": {"method": "fast-dllm"}},
    {"messages": [{"role": "user", "content": "Bob has 5 cards, gets 6 more. How many cards now?"}],
     "max_tokens": 64, "extra_body": {"method": "vanilla"}},
    {"messages": [{"role": "user", "content": "A box has 8 eggs; 3 break. How many are whole?"}],
     "max_tokens": 40, "n": 2, "temperature": 0.7, "seed": 5},
]


def _answers(url: str) -> list[list[str]]:
    """Every request at once from its own thread (they share continuous batches), then a stream
    that the client drops after its first chunk, then the first request again."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def ask(kw: dict) -> list[str]:
        reply = client.chat.completions.create(model="builtin", **kw)
        return [c.message.content for c in reply.choices]

    with ThreadPoolExecutor(len(SERVE_REQUESTS)) as pool:
        answers = list(pool.map(ask, SERVE_REQUESTS))
    stream = client.chat.completions.create(model="builtin", stream=True, **SERVE_REQUESTS[2])
    next(iter(stream))
    stream.close()
    return [*answers, ask(SERVE_REQUESTS[0])]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the tensor-parallel server did not start")


def _rank_zero(launcher: int) -> int:
    """The pid of the launcher's worker with RANK=0 (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher and b"RANK=0" in environ:
            return int(entry.name)
    raise AssertionError("no rank 0 worker found")


def test_serve_under_tensor_parallel_answers_as_one_process():
    from server_helpers import LiveServer

    from streaming_dllm.server.cli import add_serve_parser, settings_from_args

    port = _free_port()
    argv = ["-m", "streaming_dllm", "serve", "--model", "builtin", "--device", "cpu", "--port", str(port),
            "--served-model-name", "builtin", "--tensor-parallel", str(WORLD), "--log-level", "warning"]
    proc = subprocess.Popen(_torchrun(*argv), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        tp_answers = _answers(f"http://127.0.0.1:{port}")
        os.kill(_rank_zero(proc.pid), signal.SIGINT)  # rank 0 stops serving: the follower must end too
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    parser = argparse.ArgumentParser()
    args = add_serve_parser(parser.add_subparsers()).parse_args(["--model", "builtin", "--device", "cpu",
                                                                 "--served-model-name", "builtin"])
    model = sd.load_model("builtin")
    with LiveServer(model, sd.load_tokenizer(model), settings_from_args(args)) as server:
        one_answers = _answers(server.url)
    assert tp_answers == one_answers
    assert all(a and all(a) for a in tp_answers)


# ---------------------------------------------------------------- errors without a launch
def test_tensor_parallel_outside_torchrun_says_how_to_launch(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"torchrun --nproc_per_node 2"):
        sd.load_model("builtin", tensor_parallel=2)


@pytest.mark.parametrize("value", [0, 65, True, 2.0, "2"])
def test_tensor_parallel_out_of_range(value):
    with pytest.raises(ValueError, match=r"tensor_parallel=.*from 1 to 64"):
        sd.load_model("builtin", tensor_parallel=value)


@pytest.mark.parametrize("command", [["bench"], ["tune", "--task", "arith"]])
def test_only_generate_and_serve_take_the_flag(command):
    """bench and tune would print and write once per rank: they do not offer --tensor-parallel."""
    out = subprocess.run([sys.executable, "-m", "streaming_dllm", *command, "--tensor-parallel", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unrecognized arguments: --tensor-parallel 2" in out.stderr, out.stderr


def test_tensor_parallel_one_changes_nothing():
    model = sd.load_model("builtin", tensor_parallel=1)
    assert not hasattr(model, "tensor_parallel")
    assert model.model.transformer.blocks[0].heads == model.config["n_heads"]


def _meta(config: dict):
    with torch.device("meta"):
        return family_for(config)(config)


@pytest.mark.parametrize(("family", "change", "size", "key"), [
    ("dream", {}, 3, "num_attention_heads"),
    ("dream", {}, 4, "num_key_value_heads"),
    ("llada", {"n_kv_heads": 4, "mlp_hidden_size": 98}, 4, "mlp_hidden_size"),
    ("sdar", {"num_key_value_heads": 4, "intermediate_size": 90}, 4, "intermediate_size"),
    ("llada2", {"num_key_value_heads": 4, "moe_intermediate_size": 30}, 4, "moe_intermediate_size"),
    ("llada", {}, 4, "n_kv_heads"),
])
def test_not_divisible_names_the_config_key(family, change, size, key):
    model = _meta({**CONFIGS[family], **change})
    with pytest.raises(ValueError, match=rf"tensor_parallel={size}: {key} .*not divisible by {size}"):
        shard_model(model, 0, size)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2], sys.argv[3])
