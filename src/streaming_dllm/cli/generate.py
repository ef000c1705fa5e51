"""``streaming-dllm generate``: one prompt, its answer printed block by block as it becomes final."""

from __future__ import annotations

import argparse
import sys
import time

from .options import (
    add_decode_args,
    add_model_args,
    check_context,
    check_model_args,
    check_token_ids,
    config_from_args,
    fit_to_model,
    load_from_args,
    presets_text,
    read_stdin_text,
)


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    gen = subparsers.add_parser(
        "generate",
        help="generate text for one prompt, printed block by block",
        description="Generate text for one prompt, printed block by block as it becomes final.",
        epilog=presets_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("--prompt", default=None, help="the prompt (default: read stdin)")
    gen.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    add_model_args(gen, tensor_parallel=True)
    add_decode_args(gen)
    gen.set_defaults(func=_cmd_generate)
    return gen


def _cmd_generate(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    check_model_args(args)
    prompt = args.prompt if args.prompt is not None else read_stdin_text()
    prompt_flag = "--prompt" if args.prompt is not None else "--prompt (stdin)"
    if not prompt.strip():
        raise ValueError("the prompt is empty: pass --prompt TEXT or pipe the prompt on stdin")
    # Flags and the prompt are checked before torch is imported: a mistake is reported at once.
    from ..engine import stream
    from ..parallel.tensor import is_lead
    from ..text import answer_ids, encode_prompt, stop_ids

    model, tok = load_from_args(args)
    lead = is_lead(model)  # under tensor parallel every rank decodes, rank 0 prints
    cfg = fit_to_model(cfg, model, args)
    check_token_ids(model, cfg)
    ids = encode_prompt(tok, prompt, chat=False if args.no_chat_template else None)
    check_context(model, len(ids), cfg, prompt_flag)
    stops = stop_ids(model, tok)
    start = time.perf_counter()
    generated: list[int] = []
    printed = ""
    nfe = 0
    for chunk in stream(model, [ids], cfg):
        generated += chunk.row(0)
        nfe = chunk.nfe
        answer = answer_ids(generated, stops)
        text = tok.decode(answer, skip_special_tokens=True)
        # The method decides when decoding stops (early exit or not); printing stops at the answer.
        if lead:
            sys.stdout.write(text[len(printed) :] if text.startswith(printed) else "\n" + text)
            sys.stdout.flush()
        printed = text
    elapsed = time.perf_counter() - start
    # Counted as the server's completion_tokens: the answer's tokens, up to its end.
    n_tokens = len(answer_ids(generated, stops))
    if not lead:
        return 0
    print(
        f"\n[{cfg.preset_name}] {n_tokens} tokens, nfe {nfe}, {elapsed:.2f} s, "
        f"{n_tokens / max(elapsed, 1e-9):.1f} tokens/s",
        file=sys.stderr,
    )
    return 0
