"""The ``streaming-dllm`` parser: one subcommand per front end, errors as one line with rc 2."""

from __future__ import annotations

import argparse
import os
import sys

from ..bench.cli import add_bench_parser
from ..server.cli import add_serve_parser
from ..tuning.cli import add_tune_parser
from .generate import add_generate_parser
from .options import MissingExtra, check_argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streaming-dllm",
        description="Fast inference for diffusion language models (Streaming-dLLM, Fast-dLLM, vanilla).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (add_generate_parser, add_serve_parser, add_bench_parser, add_tune_parser):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        check_argv(argv)
    except ValueError as exc:
        parser.exit(2, f"streaming-dllm: error: {exc}\n")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, MissingExtra) as exc:
        parser.exit(2, f"streaming-dllm: error: {exc}\n")
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as exc:  # a file or folder the command could not read or write
        parser.exit(2, f"streaming-dllm: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
