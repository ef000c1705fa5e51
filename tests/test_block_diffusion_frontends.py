"""The front ends run a block-diffusion model unchanged: `builtin-bd` (SDAR layout, blocks of 4)
through the CLI, the lm-eval adapter, the server with the real openai client, and the bench."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import openai
import pytest
from server_helpers import LiveServer

import streaming_dllm as sd
from streaming_dllm.cli.options import fit_to_model
from streaming_dllm.server import Limits, ServerSettings
from streaming_dllm.tasks import arith

CLI = [sys.executable, "-m", "streaming_dllm.cli"]
QUESTION = ("Mia has 12 apples. Mia buys 7 apples. Mia gives 5 apples to Tom. "
            "How many apples does Mia have now?")


@pytest.fixture(scope="module")
def bd():
    model = sd.load_model("builtin-bd")
    return model, sd.load_tokenizer(model)


def test_configs_follow_the_trained_block_size_unless_told(bd):
    model, _ = bd
    cfg = sd.DecodeConfig.preset("streaming", gen_length=30 * 4 + 8)
    assert fit_to_model(cfg, model, argparse.Namespace()).block_length == model.block_size == 4
    told = argparse.Namespace(block_length=8)
    assert fit_to_model(cfg.replace(block_length=8), model, told).block_length == 8
    fdv2 = sd.DecodeConfig.preset("fast-dllm-v2")
    fitted = fit_to_model(fdv2, model, argparse.Namespace())
    assert (fitted.block_length, fitted.sub_block_length) == (4, None)


def test_serve_uses_the_trained_block_size_unless_told(bd):
    from streaming_dllm.server.cli import add_serve_parser, settings_for_model, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    model, _ = bd
    for argv, block in ((["--model", "builtin-bd"], 4),
                        (["--model", "builtin-bd", "--block-length", "8"], 8)):
        args = parser.parse_args(["serve", *argv])
        settings = settings_for_model(settings_from_args(args), model, args)
        assert settings.decode_config("streaming", {}).block_length == block


def test_cli_generate_answers_with_the_default_method():
    out = subprocess.run([*CLI, "generate", "--model", "builtin-bd", "--prompt", QUESTION],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "The answer is 14." in out.stdout
    assert "[streaming]" in out.stderr


def test_lm_eval_adapter_generates_solo_answers(bd):
    from test_lm_eval import Req

    from streaming_dllm.lm_eval_adapter.model import StreamingDLLMEval

    lm = StreamingDLLMEval(pretrained="builtin-bd", device="cpu", method="sdar", batch_size=3,
                           show_speed=False)
    assert lm.decode_config.block_length == 4
    probs = arith.problems("test", n=4)
    greedy = {"until": [], "do_sample": False, "max_gen_toks": 96}
    reqs = [Req((lm.apply_chat_template(arith.messages(p)), dict(greedy))) for p in probs]
    texts = lm.generate_until(reqs)
    assert sum(arith.score(t, p.answer) for t, p in zip(texts, probs, strict=True)) >= 3
    lm.batch_size = 1
    assert lm.generate_until(reqs) == texts


def test_server_with_the_openai_client(bd):
    model, tok = bd
    settings = ServerSettings(model_name="builtin-bd", shared_overrides={"block_length": 4},
                              limits=Limits(default_max_tokens=64, max_tokens=128))
    with LiveServer(model, tok, settings) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        msgs = [{"role": "user", "content": QUESTION}]
        for method in ("sdar", "streaming"):
            reply = client.chat.completions.create(model="builtin-bd", messages=msgs, max_tokens=64,
                                                   extra_body={"method": method})
            assert "The answer is 14." in reply.choices[0].message.content, method
        streamed = client.chat.completions.create(model="builtin-bd", messages=msgs, max_tokens=64,
                                                  stream=True, extra_body={"method": "sdar"})
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert "The answer is 14." in text


def test_bench_runs_block_diffusion_presets(tmp_path):
    out = subprocess.run([*CLI, "bench", "--model", "builtin-bd", "--methods", "sdar", "streaming",
                          "--block-length", "4", "--gen-lengths", "64", "--n", "2", "--no-plots",
                          "--no-progress", "--threads", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "bench.json").read_text())
    assert "sdar" in json.dumps(data) and "| sdar" in out.stdout
