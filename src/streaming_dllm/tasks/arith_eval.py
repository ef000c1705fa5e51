"""Accuracy of a model on the arithmetic task under a decoding preset.

``python -m streaming_dllm.tasks.arith_eval --method vanilla --gen-length 256`` prints one JSON
line: exact-match accuracy, how many generated positions the answers use (up to and including
the end-of-turn / EOS), forward passes and wall time. Used for the built-in model's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

from . import arith


@dataclass
class EvalResult:
    method: str
    n: int
    correct: int
    accuracy: float
    median_used: float
    max_used: int
    gen_length: int
    nfe: int
    seconds: float


def answer_text(tokenizer, ids: list[int], stop_ids: set[int]) -> str:
    """The answer as a user (or the harness) sees it: the text before the first stop token
    (``text.answer_ids``). A stray token left in the EOS region after the end of turn is not part
    of the answer, so it must not be scored."""
    from ..text import answer_ids

    return tokenizer.decode(answer_ids(ids, stop_ids), skip_special_tokens=True)


def encode_prompts(tokenizer, problems: list[arith.Problem]) -> list[list[int]]:
    """Chat-templated prompt ids, ready for ``generate`` (``text.encode_chat`` of each problem)."""
    from ..text import encode_chat

    return [encode_chat(tokenizer, arith.messages(p)) for p in problems]


def evaluate(model, tokenizer, problems: list[arith.Problem], config, batch_size: int = 25,
             progress: bool = False) -> EvalResult:
    """Decode every problem with ``config`` (a ``DecodeConfig``) and score the answers."""
    from tqdm import tqdm

    from ..engine import generate
    from ..text import stop_ids, used_positions

    stop = stop_ids(model, tokenizer)
    correct, used, nfe = 0, [], 0
    start = time.perf_counter()
    bar = tqdm(total=len(problems), desc=config.preset_name or "eval", disable=not progress, unit="problem")
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        out = generate(model, encode_prompts(tokenizer, chunk), config)
        nfe += out.nfe
        for row, p in enumerate(chunk):
            gen = out.generated(row)
            used.append(used_positions(gen, stop))
            correct += arith.score(answer_text(tokenizer, gen, stop), p.answer)
        bar.update(len(chunk))
        bar.set_postfix(acc=f"{correct / len(used):.3f}")
    bar.close()
    return EvalResult(
        method=config.preset_name or "custom",
        n=len(problems),
        correct=correct,
        accuracy=correct / max(1, len(problems)),
        median_used=statistics.median(used) if used else 0.0,
        max_used=max(used, default=0),
        gen_length=config.gen_length,
        nfe=nfe,
        seconds=time.perf_counter() - start,
    )


GEN_LENGTH, BLOCK_LENGTH = 256, 32
MAX_BATCH, MAX_THREADS = 1024, 1024


def build_parser() -> argparse.ArgumentParser:
    from ..cli.options import add_decode_args, add_model_args, presets_text

    parser = argparse.ArgumentParser(
        prog="python -m streaming_dllm.tasks.arith_eval", description=__doc__.split("\n")[0],
        epilog=presets_text(gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--split", default="test", help="problem split: test (default) | dev")
    parser.add_argument("--n", type=int, default=None, help="how many problems (default: the whole split)")
    parser.add_argument("--offset", type=int, default=0,
                        help="skip this many problems first (to split one evaluation across processes)")
    parser.add_argument("--batch-size", type=int, default=25,
                        help=f"prompts per generate call (default 25, at most {MAX_BATCH})")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(parser)
    add_decode_args(parser, default_method="vanilla")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Evaluate and print one JSON line; a user error exits with one line and code 2."""
    import sys

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        _run(parser, argv)
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    from ..cli.options import (
        check_argv,
        check_context,
        check_model_args,
        check_token_ids,
        config_from_args,
        fit_to_model,
        load_from_args,
    )

    check_argv(argv)
    args = parser.parse_args(argv)
    if args.offset < 0:
        raise ValueError(f"--offset: must be >= 0, got {args.offset}")
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n: must be >= 1, got {args.n}")
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise ValueError(f"--batch-size: must be in [1, {MAX_BATCH}], got {args.batch_size}")
    if not 0 <= args.threads <= MAX_THREADS:
        raise ValueError(f"--threads: must be in [0, {MAX_THREADS}], got {args.threads}")
    config = config_from_args(args, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH)
    check_model_args(args)
    try:
        split = arith.problems(args.split)
    except ValueError as exc:
        raise ValueError(f"--split: {exc}") from None
    problems = split[args.offset : None if args.n is None else args.offset + args.n]
    if not problems:
        raise ValueError(f"--offset: no problems left: the {args.split} split has {len(split)}")
    import torch  # after every flag is checked

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_from_args(args)
    config = fit_to_model(config, model, args)
    check_token_ids(model, config)
    check_context(model, max(map(len, encode_prompts(tokenizer, problems))), config, "--split")
    result = evaluate(model, tokenizer, problems, config, args.batch_size, progress=not args.no_progress)
    print(json.dumps({**asdict(result), "dtype": str(model.dtype).replace("torch.", ""),
                      "device": str(model.device)}))


if __name__ == "__main__":
    main()
