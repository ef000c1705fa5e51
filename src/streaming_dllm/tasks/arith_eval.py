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


def used_positions(ids: list[int], stop_ids: set[int]) -> int:
    """Generated positions up to and including the first stop token (all of them if none)."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return i + 1
    return len(ids)


def answer_text(tokenizer, ids: list[int], stop_ids: set[int]) -> str:
    """The answer as a user (or the harness) sees it: the text before the first stop token.

    A stray token left in the EOS region after the end of turn is not part of the answer, so
    it must not be scored.
    """
    from ..text import answer_ids

    return tokenizer.decode(answer_ids(ids, stop_ids), skip_special_tokens=True)


def encode_prompts(tokenizer, problems: list[arith.Problem]) -> list[list[int]]:
    """Chat-templated prompt ids, ready for ``generate``."""
    texts = [tokenizer.apply_chat_template(arith.messages(p), add_generation_prompt=True, tokenize=False)
             for p in problems]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def evaluate(model, tokenizer, problems: list[arith.Problem], config, batch_size: int = 25,
             progress: bool = False) -> EvalResult:
    """Decode every problem with ``config`` (a ``DecodeConfig``) and score the answers."""
    from tqdm import tqdm

    from ..engine import generate
    from ..text import stop_ids

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


def main(argv: list[str] | None = None) -> None:
    import torch

    from .. import DecodeConfig, load_model, load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--method", default="vanilla")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=None, help="how many problems (default: the whole split)")
    parser.add_argument("--offset", type=int, default=0,
                        help="skip this many problems first (to split one evaluation across processes)")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    split = arith.problems(args.split)
    if args.offset < 0 or (args.n is not None and args.n < 1):
        parser.error("--offset must be >= 0 and --n >= 1")
    problems = split[args.offset : None if args.n is None else args.offset + args.n]
    if not problems:
        parser.error(f"no problems left: the {args.split} split has {len(split)}")
    config = DecodeConfig.preset(args.method, gen_length=args.gen_length, block_length=args.block_length)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    tokenizer = load_tokenizer(model)
    result = evaluate(model, tokenizer, problems, config, args.batch_size,
                      progress=not args.no_progress)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
