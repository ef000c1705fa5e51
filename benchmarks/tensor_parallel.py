"""Time per forward of a tensor-parallel model (TP=2, two gloo ranks) against one process (TP=1).

CPU figures: they show that the sharded forward runs and what its all-reduces cost here, not GPU
speed. TP=2 runs two processes of one thread each; TP=1 runs once with one thread (the same
compute per process) and once with two (the same cores). Models: the built-in checkpoint (0.9M
parameters: the all-reduces dominate) and a random LLaDA-layout checkpoint written here, wide
enough (d_model 1024, 4 layers, ~57M parameters) that the matmuls do.

Each round runs every setting once (the order rotated); the table is the median over rounds.
Forwards: a prefill of ``--prefill`` tokens (no cache) and an in-block step of ``--block`` tokens
that attends to a K/V cache of the prefill (what a cached decoding step costs).

    python benchmarks/tensor_parallel.py --json benchmarks/results/tensor_parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDE = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": 1024, "n_heads": 16,
        "n_kv_heads": 16, "n_layers": 4, "mlp_hidden_size": 3072, "vocab_size": 1024, "embedding_size": 1024,
        "max_sequence_length": 4096, "mask_token_id": 3, "eos_token_id": 1, "pad_token_id": 0}


def write_wide(folder: Path) -> str:
    """A random checkpoint of the ``WIDE`` config (seeded)."""
    import torch
    from safetensors.torch import save_file

    from streaming_dllm.models.registry import family_for

    torch.manual_seed(0)
    model = family_for(WIDE)(WIDE)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(WIDE))
    return str(folder)


def measure(path: str, tp: int, prefill: int, block: int, reps: int) -> dict[str, float]:
    """Median ms of a prefill forward and of a cached block step (after one warm-up each)."""
    import torch

    import streaming_dllm as sd

    model = sd.load_model(path, tensor_parallel=tp)
    vocab = model.vocab_size
    ids = torch.randint(10, vocab - 1, (1, prefill + block), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(prefill + block)[None]
    times: dict[str, list[float]] = {"prefill": [], "step": []}
    with torch.inference_mode():
        for rep in range(reps + 1):
            cache = model.new_cache()
            cache.store(prefill + block)
            t0 = time.perf_counter()
            model(ids[:, :prefill], pos[:, :prefill], cache)
            t1 = time.perf_counter()
            cache.attend()
            model(ids[:, prefill:], pos[:, prefill:], cache)
            t2 = time.perf_counter()
            if rep:  # the first is a warm-up
                times["prefill"].append((t1 - t0) * 1e3)
                times["step"].append((t2 - t1) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = measure(args.path, args.tp, args.prefill, args.block, args.reps)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        Path(args.out).write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(path: str, tp: int, threads: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(threads)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    worker = [__file__, "--worker", "--path", path, "--tp", str(tp), "--threads", str(threads),
              "--out", str(out), "--prefill", str(args.prefill), "--block", str(args.block),
              "--reps", str(args.reps)]
    launch = [sys.executable]
    if tp > 1:
        launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(tp), "--master_addr", "127.0.0.1",
                   "--master_port", str(_free_port())]
    subprocess.run(launch + worker, env=env, check=True, capture_output=True, timeout=1800)
    return json.loads(out.read_text())


SETTINGS = ((1, 1), (1, 2), (2, 1))
"""(tensor parallel, threads per rank) of each measured setting."""


def _rounds(args: argparse.Namespace) -> list[dict]:
    """Every setting once per round, the order rotated each round (the machine's load drifts)."""
    times: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(ROOT / "src"))
        models = {"builtin": "builtin", "llada-wide-57M": write_wide(Path(tmp) / "wide")}
        runs = [(name, tp, threads) for name in models for tp, threads in SETTINGS]
        for r in range(args.rounds):
            for name, tp, threads in runs[r % len(runs):] + runs[:r % len(runs)]:
                ms = _run(models[name], tp, threads, args, Path(tmp) / "out.json")
                times.setdefault((name, tp, threads), []).append(ms)
    return [{"model": name, "tp": tp, "threads_per_rank": threads,
             **{k: statistics.median(m[k] for m in ms) for k in ("prefill", "step")},
             "rounds": ms} for (name, tp, threads), ms in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--prefill", type=int, default=256, help="tokens of the prefill forward (default 256)")
    p.add_argument("--block", type=int, default=32, help="tokens of the cached block step (default 32)")
    p.add_argument("--reps", type=int, default=5, help="timed forwards per setting (median; default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every setting (default 3)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    load_before = os.getloadavg()
    rows = _rounds(args)
    print(f"prefill {args.prefill} tokens; cached step {args.block} tokens; median over {args.rounds} "
          f"rounds of the median of {args.reps} (ms)")
    print(f"{'model':<16} {'setting':<22} {'prefill ms':>11} {'step ms':>9}")
    for r in rows:
        setting = f"TP={r['tp']} ({r['threads_per_rank']} thread/rank)"
        print(f"{r['model']:<16} {setting:<22} {r['prefill']:>11.1f} {r['step']:>9.1f}")
    if args.json:
        meta = {"prefill_tokens": args.prefill, "block_tokens": args.block, "reps": args.reps,
                "rounds": args.rounds,
                "cpu_count": os.cpu_count(), "load_average": [load_before[0], os.getloadavg()[0]],
                "note": "CPU figures (gloo): they prove function, not GPU speed"}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
