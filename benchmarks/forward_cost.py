"""Benchmark: time per forward of a decode on a random checkpoint with LLaDA's 126,464-token vocabulary.

With a 126k vocabulary the LM head and the confidence over the vocabulary dominate a small
model's step, so this shows what running the head on the masked rows only, the logsumexp
confidence and the in-place K/V cache save. Run it on two trees side by side to compare:

    PYTHONPATH=src python benchmarks/forward_cost.py --out after.json
    PYTHONPATH=/path/to/old/src python benchmarks/forward_cost.py --out before.json

Prints a Markdown table (method, nfe, seconds, ms per forward) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import streaming_dllm as sd


def random_checkpoint(folder: Path, vocab: int, d_model: int, layers: int, seed: int = 0) -> Path:
    """A LLaDA-layout checkpoint with random weights (no tokenizer: ids are used directly)."""
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": d_model, "n_heads": 4,
              "n_kv_heads": 4, "n_layers": layers, "mlp_hidden_size": 2 * d_model, "vocab_size": vocab,
              "embedding_size": vocab, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
              "max_sequence_length": 4096, "mask_token_id": vocab - 128, "eos_token_id": vocab - 383,
              "pad_token_id": vocab - 383}
    from streaming_dllm.models.llada import LLaDAModel

    torch.manual_seed(seed)
    model = LLaDAModel(config)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=126464)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["streaming", "fast-dllm", "fast-dllm-dual"])
    p.add_argument("--repeats", type=int, default=2, help="decodes per method (the fastest is kept)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="forward_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = sd.load_model(random_checkpoint(Path(tmp), args.vocab, args.d_model, args.layers))
    prompt = [list(range(100, 164))]
    rows = []
    for name in args.methods:
        cfg = sd.DecodeConfig.preset(name, gen_length=args.gen_length, block_length=32, early_exit=False)
        sd.generate(model, prompt, cfg.replace(gen_length=64))  # warm-up
        best, nfe = float("inf"), 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = sd.generate(model, prompt, cfg)
            best, nfe = min(best, time.perf_counter() - start), out.nfe
        rows.append({"method": name, "nfe": nfe, "seconds": round(best, 3),
                     "ms_per_forward": round(1000 * best / nfe, 2)})
    print("| method | nfe | seconds | ms per forward |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['nfe']} | {r['seconds']} | {r['ms_per_forward']} |")
    record = {"settings": vars(args), "torch": torch.__version__, "results": rows}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
