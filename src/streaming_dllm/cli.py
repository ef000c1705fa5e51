"""Command line: ``streaming-dllm generate | serve | bench``; parses, validates and reports."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .config import PRESETS, DecodeConfig

_KNOBS: list[tuple[str, Any, str]] = [
    ("gen_length", int, "tokens to generate after the prompt (multiple of --block-length)"),
    ("block_length", int, "positions decoded together, block by block"),
    ("steps", int, "total steps of the fixed schedule (--unmask steps); default: one token per step"),
    ("unmask", str, "commit rule: steps | threshold | dynamic | factor"),
    ("threshold", float, "tau0 of the threshold / dynamic rules (0 < tau0 <= 1)"),
    ("alpha", float, "dynamic threshold strength: tau0 * (1 - alpha * (1 - mask_ratio)); 0 = fixed"),
    ("factor", float, "f of the factor rule"),
    ("cache", str, "K/V cache: none | prefix | dual"),
    ("window", None, "suffix positions kept after the block ('none' = whole suffix)"),
    ("tail_keep", int, "last positions of the sequence always kept"),
    ("remasking", str, "confidence score: low_confidence | random | entropy | margin | maskgit_plus"),
    ("temperature", float, "0 = argmax; > 0 = Gumbel-max sampling"),
    ("mask_id", int, "[MASK] id (default: from the checkpoint)"),
    ("eos_id", int, "EOS id for early exit (default: from the checkpoint)"),
    ("seed", int, "seed for sampling / random remasking"),
]


def _window(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window must be an integer or 'none', got {value!r}") from None


def add_decode_args(parser: argparse.ArgumentParser, default_method: str = "streaming") -> None:
    """The --method preset plus one flag per DecodeConfig knob (only given flags override)."""
    g = parser.add_argument_group("decoding (a preset, then any knob overridden)")
    g.add_argument("--method", default=default_method, choices=sorted(PRESETS), help="decoding preset")
    for name, typ, help_text in _KNOBS:
        flag = "--" + name.replace("_", "-")
        g.add_argument(flag, dest=name, type=typ or _window, default=argparse.SUPPRESS, help=help_text)
    g.add_argument(
        "--early-exit",
        dest="early_exit",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="stop after a finished block containing EOS (default: per preset)",
    )


def config_from_args(args: argparse.Namespace, **defaults: Any) -> DecodeConfig:
    """DecodeConfig of the chosen preset with the flags that were given; errors name the flag."""
    overrides = dict(defaults)
    for name in [k[0] for k in _KNOBS] + ["early_exit"]:
        if hasattr(args, name):
            overrides[name] = getattr(args, name)
    return DecodeConfig.preset(args.method, **overrides)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="builtin", help="local folder, hub id, or 'builtin' (default)")
    g.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    g.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (bf16 on CUDA)")
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument("--allow-pickle", action="store_true", help="allow .bin pickle weights (can run code)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's tokenizer code")


def load_from_args(args: argparse.Namespace):
    from .loading import load_model, load_tokenizer

    model = load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        revision=args.revision,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    return model, load_tokenizer(model, trust_remote_code=args.trust_remote_code)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .engine import stream
    from .text import answer_ids, encode_prompt, stop_ids

    cfg = config_from_args(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise ValueError("the prompt is empty: pass --prompt TEXT or pipe the prompt on stdin")
    model, tok = load_from_args(args)
    ids = encode_prompt(tok, prompt, chat=not args.no_chat_template and None)
    stops = stop_ids(model, tok)
    start = time.perf_counter()
    generated: list[int] = []
    printed = ""
    nfe = 0
    for chunk in stream(model, [ids], cfg):
        generated += chunk.tokens[0].tolist()
        nfe = chunk.nfe
        answer = answer_ids(generated, stops)
        text = tok.decode(answer, skip_special_tokens=True)
        # The method decides when decoding stops (early exit or not); printing stops at the answer.
        sys.stdout.write(text[len(printed) :] if text.startswith(printed) else "\n" + text)
        sys.stdout.flush()
        printed = text
    elapsed = time.perf_counter() - start
    n_tokens = sum(t != model.eos_id for t in generated)
    print(
        f"\n[{cfg.preset_name}] {n_tokens} tokens, nfe {nfe}, {elapsed:.2f} s, "
        f"{n_tokens / max(elapsed, 1e-9):.1f} tokens/s",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streaming-dllm",
        description="Fast inference for diffusion language models (Streaming-dLLM, Fast-dLLM, vanilla).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text for one prompt, printed block by block")
    gen.add_argument("--prompt", default=None, help="the prompt (default: read stdin)")
    gen.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    add_model_args(gen)
    add_decode_args(gen)
    gen.set_defaults(func=_cmd_generate)
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Subcommands owned by other front ends (server, benchmarks)."""
    out = []
    try:
        from .server.cli import add_serve_parser

        out.append(add_serve_parser)
    except ImportError:
        pass
    try:
        from .bench.cli import add_bench_parser

        out.append(add_bench_parser)
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        parser.exit(2, f"streaming-dllm: error: {exc}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
