"""Train the built-in demo dLLM on the arithmetic task: ``python -m streaming_dllm.training.train_demo``.

The objective is LLaDA's SFT recipe: the chat-templated prompt is never masked; the response
(worked solution, ``<|eot|>``, then ``<|endoftext|>`` padding up to the row's length) is masked
token by token with probability t ~ U(eps, 1], and the cross-entropy on masked positions is
weighted by 1/t and normalised by the response length. Padding lengths vary per batch (some up
to 1024 tokens), so the model learns to fill long generation regions with EOS as an instruct
dLLM does. A quarter of the rows (``--drill-frac``) are practice sheets of equations
(``arith.drill``), so every arithmetic fact the problems use is seen often. In a quarter of
the rows (``--suffix-frac``) the masked positions are the last ``ceil(t * n)`` of the response
rather than random ones (same ratio, weight and normalisation): the known-prefix, masked-suffix
context that semi-autoregressive decoding gives, without which the model loses count of the
steps of a solution (``builtin/TRAINING.md``).

Training is seeded and resumable: ``train_state.pt`` in ``--out`` is picked up automatically;
the final checkpoint (config, safetensors, tokenizer) is written to ``--out`` and, with
``--export DIR``, copied to DIR (``src/streaming_dllm/builtin`` for the shipped one). The
shipped checkpoint came from these defaults (a 60-minute time limit on a
2-core CPU; with a time limit the cosine decay follows the elapsed time). Its figures and what
was tried are in ``builtin/TRAINING.md``.

``--arch sdar --block-size 4 --init-from builtin`` trains the block-diffusion built-in
(``builtin-bd``, SDAR layout) instead: ``training.block_diffusion`` and ``builtin_bd/TRAINING.md``.
"""

from __future__ import annotations

import argparse
import json

from .config import TrainConfig
from .loop import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = TrainConfig()
    for name in ("out", "d_model", "n_layers", "n_heads", "mlp_hidden_size", "steps", "batch_size",
                 "batch_tokens", "lr", "drill_frac", "suffix_frac", "drill_equations",
                 "warmup", "train_problems", "seed", "threads", "save_every", "eval_every", "eval_n",
                 "time_limit_min", "block_size", "init_from"):
        default = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    parser.add_argument("--pad-lengths", type=int, nargs="+", default=list(defaults.pad_lengths))
    parser.add_argument("--pad-weights", type=float, nargs="+", default=list(defaults.pad_weights))
    parser.add_argument("--untied-embeddings", action="store_true",
                        help="train separate input embedding and LM head matrices "
                             "(the head starts as a copy)")
    parser.add_argument("--digit-embeddings", action=argparse.BooleanOptionalAction,
                        default=defaults.digit_embeddings,
                        help="number tokens' embedding rows share a tens and a units vector during training")
    parser.add_argument("--arch", choices=("llada", "sdar"), default=defaults.arch,
                        help="llada: bidirectional (the builtin); sdar: block diffusion (builtin-bd), "
                             "see training/block_diffusion.py")
    parser.add_argument("--export", default=None,
                        help="copy the final checkpoint here (e.g. src/streaming_dllm/builtin)")
    args = vars(parser.parse_args(argv))
    export = args.pop("export")
    args["tie_embeddings"] = not args.pop("untied_embeddings")
    args["pad_lengths"], args["pad_weights"] = tuple(args["pad_lengths"]), tuple(args["pad_weights"])
    if len(args["pad_lengths"]) != len(args["pad_weights"]):
        parser.error("--pad-lengths and --pad-weights need the same number of values")
    summary = train(TrainConfig(**args), export=export)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
