"""Data-parallel lm-evaluation-harness runs: two processes (torch.distributed.run, gloo on CPU).

The real harness CLI runs the offline arithmetic tasks with the built-in model twice, once as one
process and once as two ranks, and the two runs must agree: the merged metrics exactly, and every
answer (generate_until through the engine's Scheduler, and the Monte-Carlo loglikelihoods of the
multiple-choice task) document by document. The number of documents is odd, so the split is
uneven and the harness pads the shorter rank with a copy of its last request.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streaming_dllm.loading import BUILTIN_DIR

pytest.importorskip("lm_eval")

MODEL = os.environ.get("STREAMING_DLLM_LM_EVAL_MODEL", "builtin")
pytestmark = pytest.mark.skipif(
    MODEL == "builtin" and not (BUILTIN_DIR / "config.json").is_file(),
    reason="built-in checkpoint not present in src/streaming_dllm/builtin",
)

N_DOCS = 7  # odd: rank 0 gets docs 0, 2, 4, 6; rank 1 gets 1, 3, 5 and one padding request
TASKS = ("streaming-dllm-arith", "streaming-dllm-arith-mc")  # generate_until, loglikelihood
MODEL_ARGS = f"pretrained={MODEL},method=streaming,gen_length=64,window=32,mc_num=8"
TIMEOUT_S = 300  # per run; a hung rendezvous or collective fails the test instead of blocking CI

# The harness arguments of both runs; the 2-process run prefixes the launcher.
HARNESS = [
    "-m", "streaming_dllm.lm_eval_adapter",
    "--model", "streaming-dllm", "--model_args", MODEL_ARGS,
    "--tasks", ",".join(TASKS), "--limit", str(N_DOCS), "--apply_chat_template",
    "--batch_size", "8", "--device", "cpu", "--log_samples",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    # One intra-op thread in every process of both runs (torchrun's own default for its workers),
    # so the only difference between the runs is how the documents are split.
    return {
        **os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip


def _launch(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args,
    ]  # fmt: skip


def _run(cmd: list[str], timeout: float = TIMEOUT_S, **env: str) -> str:
    """Run ``cmd`` in its own process group; return its output; fail with it on error or timeout.

    On timeout the whole group is killed, so no rank is left behind waiting on a collective.
    """
    proc = subprocess.Popen(
        cmd,
        env={**_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{out[-4000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}: {' '.join(cmd)}\n{out[-6000:]}"
    return out


def _results(out_dir: Path) -> dict:
    files = list(out_dir.rglob("results_*.json"))
    assert len(files) == 1, f"expected one results file (rank 0 writes it), found {files}"
    return json.loads(files[0].read_text())


def _samples(out_dir: Path, task: str) -> list[dict]:
    files = list(out_dir.rglob(f"samples_{task}_*.jsonl"))
    assert len(files) == 1, f"expected one samples file for {task}, found {files}"
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def _speed_lines(out: str) -> dict[tuple[int, int], int]:
    """(rank, world size) -> samples decoded, from the adapter's per-rank speed lines."""
    return {
        (int(r), int(w)): int(n)
        for r, w, n in re.findall(r"\[streaming-dllm rank (\d+)/(\d+)\] (\d+) samples", out)
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, tuple[str, Path]]:
    """nproc -> (output, output folder) of the same harness run on 1 and on 2 processes."""
    done = {}
    for nproc in (1, 2):
        out_dir = tmp_path_factory.mktemp(f"lm_eval_{nproc}proc")
        done[nproc] = (_run(_launch(nproc, [*HARNESS, "--output_path", str(out_dir)])), out_dir)
    return done


def test_two_process_metrics_equal_one_process(runs):
    one, two = _results(runs[1][1]), _results(runs[2][1])
    for task in TASKS:
        assert one["n-samples"][task]["effective"] == two["n-samples"][task]["effective"] == N_DOCS
        m1, m2 = one["results"][task], two["results"][task]
        assert m1.keys() == m2.keys()
        for key in m1:
            if "stderr" in key:  # summed in another order: equal up to rounding
                assert m2[key] == pytest.approx(m1[key], rel=1e-9, abs=1e-12), (task, key)
            else:
                assert m2[key] == m1[key], (task, key, m1[key], m2[key])
    print({t: {k: v for k, v in one["results"][t].items() if "stderr" not in k} for t in TASKS})


@pytest.mark.parametrize("task", TASKS)
def test_two_process_answers_equal_one_process_doc_by_doc(runs, task):
    one = {s["doc_id"]: s for s in _samples(runs[1][1], task)}
    two = {s["doc_id"]: s for s in _samples(runs[2][1], task)}
    assert sorted(one) == sorted(two) == list(range(N_DOCS))
    for doc_id, ref in one.items():
        got = two[doc_id]
        assert got["arguments"] == ref["arguments"], doc_id  # the same requests
        assert got["filtered_resps"] == ref["filtered_resps"], doc_id  # what the metrics scored
        # Every response recorded for a request (the padding copy's too) equals the 1-process one.
        for r_ref, r_got in zip(ref["resps"], got["resps"], strict=True):
            assert len(r_ref) == 1 and all(r == r_ref[0] for r in r_got), (doc_id, r_ref, r_got)
        assert {k: got[k] for k in ref["metrics"]} == {k: ref[k] for k in ref["metrics"]}, doc_id
    if task == "streaming-dllm-arith":
        assert all(s["resps"][0][0].strip() for s in one.values()), "empty answers prove nothing"


def test_both_ranks_did_work(runs):
    out1, out2 = runs[1][0], runs[2][0]
    # generate_until: each rank decoded its own share; rank 1's 3 documents + 1 padding request.
    assert _speed_lines(out1) == {(0, 1): N_DOCS}, out1[-3000:]
    assert _speed_lines(out2) == {(0, 2): 4, (1, 2): 4}, out2[-3000:]
    for task in TASKS:
        # The harness gives rank r the documents r, r + 2, ...; rank 0 gathers its own, then rank 1's.
        order = [s["doc_id"] for s in _samples(runs[2][1], task)]
        assert order == [0, 2, 4, 6, 1, 3, 5], (task, order)
        assert f"Building contexts for {task} on rank 1" in out2


COLLECTIVES = """
import os, torch
from streaming_dllm.lm_eval_adapter.model import StreamingDLLMEval
lm = StreamingDLLMEval(pretrained=os.environ["MODEL"], show_speed=False)
r = int(os.environ["RANK"])
assert (lm.rank, lm.world_size, lm.device.type) == (r, 2, "cpu")
assert lm.all_gather(torch.tensor(r + 3)).tolist() == [3, 4]           # lm-eval >= 0.4.12
assert lm.all_gather(torch.tensor([r, 10 + r])).tolist() == [0, 10, 1, 11]
assert lm.accelerator.gather(torch.tensor(r + 3)).tolist() == [3, 4]   # lm-eval 0.4.5 - 0.4.11
assert (lm.accelerator.process_index, lm.accelerator.num_processes) == (r, 2)
lm.barrier()
lm.accelerator.wait_for_everyone()
got = lm.gather_object({"rank": r}, dst=0)
assert got == ([{"rank": 0}, {"rank": 1}] if r == 0 else None), got
print(f"collectives ok on rank {r}", flush=True)
"""


def test_collectives_of_both_harness_protocols(tmp_path):
    """The adapter's collectives under torch.distributed.run with gloo: the model methods the harness
    calls since 0.4.12, and the ``accelerator`` calls of 0.4.5 - 0.4.11 (the pinned range)."""
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    out = _run(_launch(2, [str(script)]), timeout=180, MODEL=MODEL)
    assert "collectives ok on rank 0" in out and "collectives ok on rank 1" in out, out[-3000:]
