"""``streaming-dllm serve``: argument parsing and start-up of the OpenAI-compatible server.

Wire into a CLI with ``add_serve_parser(subparsers)``; the parser's default ``func`` is
``run_serve(args)``. ``python -m streaming_dllm.server`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from ..config import PRESETS
from .settings import Limits, ServerSettings

log = logging.getLogger("streaming_dllm.server")

_LIMIT_FLAGS = {
    "max_body_bytes": "largest request body in bytes (413 beyond)",
    "max_prompt_tokens": "most prompt tokens per prompt",
    "max_tokens": "largest max_tokens a request may ask for",
    "default_max_tokens": "max_tokens of a request that gives none (default: min(128, --max-tokens))",
    "max_n": "largest n (choices per prompt)",
    "max_prompts": "most prompts in one /v1/completions request",
    "max_batch_size": "most rows decoded together in one engine batch",
    "max_queue": "most requests waiting for a batch (429 at once beyond)",
    "batch_wait_ms": "how long an idle worker waits for more requests to batch",
}


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand; its default ``func`` is ``run_serve``."""
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                              description="OpenAI-compatible server: /v1/completions, /v1/chat/completions, "
                              "/v1/models, /health, /metrics.")
    _add_arguments(p)
    p.set_defaults(func=run_serve)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="builtin", help="checkpoint folder, hub id or 'builtin' (default)")
    p.add_argument("--served-model-name", help="the model id clients send (default: --model as given)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (default)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's tokenizer code")
    p.add_argument("--method", default="streaming", choices=sorted(PRESETS), help="default decoding method")
    p.add_argument("--block-length", type=int, help="block length of every method")
    p.add_argument("--threshold", type=float, help="confidence threshold of the default method")
    p.add_argument("--alpha", type=float, help="dynamic-threshold alpha of the default method")
    p.add_argument("--window", type=int, help="suffix window of the default method")
    p.add_argument("--methods", default=",".join(PRESETS),
                   help="comma-separated methods a request may pick (default: all)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("STREAMING_DLLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $STREAMING_DLLM_API_KEY, else none)")
    defaults = Limits()
    for name, text in _LIMIT_FLAGS.items():
        flag = f"--{name.replace('_', '-')}"
        if name == "default_max_tokens":
            p.add_argument(flag, type=int, default=None, help=text)
            continue
        value = getattr(defaults, name)
        p.add_argument(flag, type=type(value), default=value, help=f"{text} (default {value})")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Server settings from parsed arguments (validated; raises ValueError naming the flag)."""
    limits = Limits(**{name: getattr(args, name) for name in _LIMIT_FLAGS},
                    methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    shared = {"block_length": args.block_length} if args.block_length is not None else {}
    own = {k: getattr(args, k) for k in ("threshold", "alpha", "window") if getattr(args, k) is not None}
    settings = ServerSettings(model_name=args.served_model_name or args.model, method=args.method,
                              shared_overrides=shared, method_overrides=own, api_key=args.api_key or None,
                              limits=limits)
    settings.validate()
    return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """Load the model and serve it until interrupted."""
    import torch
    import uvicorn

    from .. import load_model, load_tokenizer
    from .app import create_app

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=fmt)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host) and not settings.api_key:
        log.warning("binding %s without --api-key: anyone who can reach this address can use the model",
                    args.host)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype,
                       trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(model)
    app = create_app(model, tokenizer, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming_dllm.server")
    _add_arguments(parser)
    try:
        return run_serve(parser.parse_args(argv))
    except ValueError as exc:  # e.g. a checkpoint that cannot be loaded
        parser.exit(2, f"error: {exc}\n")
