"""Hostile input to the command line (generate, bench, arith_eval): each case is a real process that
must end within the time limit with one line naming the flag, rc 2 and no traceback."""

from __future__ import annotations

import sys

import pytest
from hostile import CLI, Case, check

from streaming_dllm.loading import BUILTIN_DIR

ARITH_EVAL = [sys.executable, "-m", "streaming_dllm.tasks.arith_eval"]
GEN = [*CLI, "generate", "--device", "cpu"]
PROMPT = ["--prompt", "Mia has 12 apples. Mia buys 7 apples. How many apples does Mia have now?"]
BAD_ARGV = "{}: the value is not valid UTF-8"
UNDER_A_FILE = __file__ + "/out"  # a path whose parent is a file: no folder can be made there

CASES = [
    Case("huge gen-length", [*GEN, *PROMPT, "--gen-length", "1000000000"], "--gen-length"),
    Case("huge steps", [*GEN, *PROMPT, "--method", "vanilla", "--gen-length", "32", "--steps", "1000000000"],
         "--steps"),
    Case("huge seed", [*GEN, *PROMPT, "--seed", str(10**25)], "--seed"),
    Case("negative seed", [*GEN, *PROMPT, "--seed", "-1"], "--seed"),
    Case("device meta", [*GEN[:-2], *PROMPT, "--device", "meta"], "--device"),
    Case("device nonsense", [*GEN[:-2], *PROMPT, "--device", "tpu:0"], "--device"),
    Case("dtype nonsense", [*GEN, *PROMPT, "--dtype", "float8"], "--dtype"),
    Case("device cuda:7 without CUDA", [*GEN[:-2], *PROMPT, "--device", "cuda:7"], "--device"),
    Case("invalid UTF-8 on stdin", GEN, "stdin: not valid UTF-8", stdin=b"\xff\xfe bad"),
    Case("invalid UTF-8 in --prompt", [*GEN, "--prompt", "bad \udcff"], BAD_ARGV.format("--prompt")),
    Case("invalid UTF-8 in --prompt=", [*GEN, "--prompt=\udcff"], BAD_ARGV.format("--prompt")),
    Case("prompt beyond the context", GEN, "--prompt (stdin)", stdin=("1 + " * 12000).encode()),
    Case("gen-length beyond the context", [*GEN, *PROMPT, "--gen-length", "8192"],
         "--gen-length: 8192 exceeds the model's context of 4096"),
    Case("mask id equal to EOS", [*GEN, *PROMPT, "--mask-id", "1"], "mask_id"),
    # The engine never commits the mask id, so a mask id the model may predict still ends.
    Case("mask id a vocabulary word, fast-dllm", [*GEN, *PROMPT, "--method", "fast-dllm", "--mask-id", "20",
                                                  "--gen-length", "64"], "[fast-dllm]", rc=0),
    Case("mask id outside the vocab", [*GEN, *PROMPT, "--mask-id", "100000"], "--mask-id"),
    Case("empty prompt", GEN, "the prompt is empty", stdin=b" \n"),
    Case("window not a number", [*GEN, *PROMPT, "--window", "wide"], "--window"),
    Case("bench --out under a file", [*CLI, "bench", "--quick", "--out", UNDER_A_FILE], "--out"),
    Case("bench --out is a file", [*CLI, "bench", "--quick", "--out", __file__], "--out"),
    Case("bench --update-doc under a file", [*CLI, "bench", "--quick", "--out", "/tmp/sd_hostile_bench",
                                             "--update-doc", UNDER_A_FILE], "--update-doc"),
    Case("bench --update-doc is a folder", [*CLI, "bench", "--quick", "--out", "/tmp/sd_hostile_bench",
                                            "--update-doc", "/tmp"], "--update-doc"),
    Case("bench --n 0", [*CLI, "bench", "--quick", "--n", "0"], "--n"),
    Case("bench --batch-size 0", [*CLI, "bench", "--quick", "--batch-size", "0"], "--batch-size"),
    Case("bench --batch-size huge", [*CLI, "bench", "--quick", "--batch-size", "100000000"], "--batch-size"),
    Case("bench --threads negative", [*CLI, "bench", "--quick", "--threads", "-1"], "--threads"),
    Case("bench --threads huge", [*CLI, "bench", "--quick", "--threads", "1000000"], "--threads"),
    Case("bench --budget nan", [*CLI, "bench", "--quick", "--budget", "nan"], "--budget"),
    Case("bench --block-length huge", [*CLI, "bench", "--quick", "--block-length", "1000000"],
         "--block-length"),
    Case("bench --gen-lengths not whole blocks",
         [*CLI, "bench", "--methods", "vanilla", "--gen-lengths", "100"], "--gen-lengths"),
    Case("bench --gen-lengths beyond the context",
         [*CLI, "bench", "--methods", "streaming", "--gen-lengths", "8192", "--out", "/tmp/sd_hostile_bench"],
         "--gen-lengths"),
    Case("bench --device meta", [*CLI, "bench", "--quick", "--device", "meta"], "--device"),
    Case("bench invalid UTF-8 in --out", [*CLI, "bench", "--out", "\udcff"], "--out"),
    Case("arith_eval --split bad", [*ARITH_EVAL, "--split", "validation"], "--split"),
    Case("arith_eval --device meta", [*ARITH_EVAL, "--device", "meta"], "--device"),
    Case("arith_eval --device cuda", [*ARITH_EVAL, "--device", "cuda", "--n", "1"], "CUDA is not available"),
    Case("arith_eval --gen-length huge", [*ARITH_EVAL, "--gen-length", "1000000000"], "--gen-length"),
    Case("arith_eval --batch-size 0", [*ARITH_EVAL, "--batch-size", "0"], "--batch-size"),
    Case("arith_eval --threads negative", [*ARITH_EVAL, "--threads", "-3"], "--threads"),
    Case("arith_eval --n 0", [*ARITH_EVAL, "--n", "0"], "--n"),
    Case("arith_eval --offset past the split", [*ARITH_EVAL, "--offset", "100000"], "--offset"),
    Case("arith_eval --seed huge", [*ARITH_EVAL, "--seed", str(10**25)], "--seed"),
]
"""Every case the CLI handles. Not here: ``bench --quick`` itself (a minute or more)."""

ALSO = {
    "prompt beyond the context": ["the prompt is 240", "context of 4096 tokens"],
    "mask id equal to EOS": ["--mask-id", "EOS"],
}
"""Further words the last line must hold (the flag and the model's limit)."""


needs_builtin = pytest.mark.skipif(not (BUILTIN_DIR / "model.safetensors").is_file(),
                                   reason="built-in weights not built")


@needs_builtin
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_cli(case: Case):
    res = check(case)
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    for words in ALSO.get(case.name, []):
        assert words in last, f"{case.name}: {words!r} not in {last!r}"
