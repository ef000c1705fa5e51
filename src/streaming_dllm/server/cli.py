"""``streaming-dllm serve``: argument parsing and start-up of the OpenAI-compatible server.

Wire into a CLI with ``add_serve_parser(subparsers)``; the parser's default ``func`` is
``serve_entry(args)``: ``run_serve`` for one process, ``cluster.launch.run_serve_ray`` for
``--replicas N``. ``python -m streaming_dllm.server`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os

from ..cli.options import MissingExtra, add_model_args, flag, load_from_args, require_extra
from ..config import PRESETS, ConfigError
from ..preset_files import load_config
from .settings import BATCHING, BOUNDS, POLICIES, Limits, ServerSettings, SettingsError

log = logging.getLogger("streaming_dllm.server")

_LIMIT_FLAGS = {
    "max_body_bytes": "largest request body in bytes (413 beyond)",
    "max_prompt_tokens": "most prompt tokens per prompt",
    "max_tokens": "largest max_tokens a request may ask for",
    "default_max_tokens": "max_tokens of a request that gives none (default: min(128, --max-tokens))",
    "max_n": "largest n (choices per prompt)",
    "max_prompts": "most prompts in one /v1/completions request",
    "max_batch_size": "most rows (prompts x n) of one request; same-settings: of one batch",
    "max_rows_in_flight": "continuous batching: most rows decoding at once",
    "max_step_tokens": "continuous batching: most tokens one engine step feeds, most urgent "
                       "requests first (0: no bound; -1: 512 on a CPU, no bound on a GPU)",
    "max_kv_tokens": "continuous batching: most K/V positions (rows x (prompt + generation)) at once",
    "max_queue": "most requests waiting for a batch (429 at once beyond)",
    "batch_wait_ms": "same-settings batching: how long an idle worker waits for more requests to batch",
    "body_timeout_s": "longest pause, in seconds, while a client sends its body (408 beyond)",
    "max_block_length": "largest block_length a request may ask for",
    "max_window": "largest window a request may ask for",
    "max_temperature": "largest temperature a request may ask for",
}
# Flags that are not limits of a request, with their (lowest, highest) values.
_PROCESS_BOUNDS = {"port": (0, 65535), "threads": (1, 1024), "timeout_keep_alive": (1, 3600),
                   "replicas": (1, 256)}
MAX_NAME_CHARS = 256


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand; its default ``func`` is ``serve_entry``."""
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                              description="OpenAI-compatible server: /v1/completions, /v1/chat/completions, "
                              "/v1/models, /health, /metrics.")
    _add_arguments(p)
    p.set_defaults(func=serve_entry)
    return p


def serve_entry(args: argparse.Namespace) -> int:
    """``serve``: one process (``run_serve``), or ``--replicas N`` engine replicas on Ray Serve."""
    if getattr(args, "replicas", None) is None:
        return run_serve(args)
    from ..cluster.launch import run_serve_ray

    return run_serve_ray(args)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p, tensor_parallel=True)
    p.add_argument("--served-model-name", help="the model id clients send (default: --model as given)")
    p.add_argument("--method", default="streaming", choices=sorted(PRESETS), help="default decoding method")
    p.add_argument("--block-length", type=int, help="block length of every method")
    p.add_argument("--threshold", type=float, help="confidence threshold of the default method")
    p.add_argument("--alpha", type=float, help="dynamic-threshold alpha of the default method")
    p.add_argument("--window", type=int, help="suffix window of the default method")
    p.add_argument("--preset-file", default=None, metavar="JSON",
                   help="a saved DecodeConfig (e.g. tune's preset.json) as the default method's settings; "
                   "--block-length / --threshold / --alpha / --window and request knobs still override it")
    p.add_argument("--methods", default=",".join(PRESETS),
                   help="comma-separated methods a request may pick (default: all)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port, 0..65535 (default 8000; 0 = any free)")
    p.add_argument("--api-key", default=os.environ.get("STREAMING_DLLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $STREAMING_DLLM_API_KEY, else none)")
    p.add_argument("--batching", default="continuous", choices=BATCHING,
                   help="continuous: requests with any settings join the running batch at every step "
                   "(default); same-settings: batches of identical settings, each run to its end; "
                   "serial: one request at a time")
    p.add_argument("--batch-policy", default="split", choices=POLICIES,
                   help="continuous batching: run block starts apart from in-block steps (split, "
                   "default), every ready forward together (joint), or forwards of similar lengths "
                   "together (buckets); each group is one packed forward")
    defaults = Limits()
    g = p.add_argument_group("limits (a request outside them is refused; each flag has a range)")
    for name, text in _LIMIT_FLAGS.items():
        lo, hi = BOUNDS[name]
        if name == "default_max_tokens":
            g.add_argument(flag(name), type=int, default=None, help=text)
            continue
        value = getattr(defaults, name)
        g.add_argument(flag(name), type=type(value), default=value,
                       help=f"{text} (default {value}; {lo:g}..{hi:g})")
    g.add_argument("--timeout-keep-alive", type=int, default=5,
                   help="seconds an idle keep-alive connection is held open (default 5; 1..3600)")
    p.add_argument("--threads", type=int, help="torch CPU threads, 1..1024 (default: torch's choice; with "
                   "--replicas on CPU: the cores divided by the replicas)")
    r = p.add_argument_group("replicas on Ray Serve (the [cluster] extra)")
    r.add_argument("--replicas", type=int, default=None,
                   help="serve N engine replicas behind one endpoint on Ray Serve, 1..256 (default: one "
                   "process, no Ray); each replica owns a GPU, or on CPU a share of the cores")
    r.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. 'auto' or 'ray://head:10001'; default: start a local "
                   "Ray instance)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _check_process_flags(args: argparse.Namespace) -> None:
    for name, (lo, hi) in _PROCESS_BOUNDS.items():
        value = getattr(args, name, None)
        if value is not None and not lo <= value <= hi:
            raise ValueError(f"{flag(name)}: must be in [{lo}, {hi}], got {value}")
    name = args.served_model_name
    if name is not None and not (0 < len(name) <= MAX_NAME_CHARS and name.isprintable()):
        raise ValueError(f"--served-model-name: must be 1 to {MAX_NAME_CHARS} printable characters")


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Server settings from parsed arguments, every flag checked against its bounds; raises a
    ValueError whose message starts with the flag (``--batch-wait-ms: ...``)."""
    _check_process_flags(args)
    limits = Limits(**{name: getattr(args, name) for name in _LIMIT_FLAGS},
                    methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    shared = {"block_length": args.block_length} if args.block_length is not None else {}
    own = {k: getattr(args, k) for k in ("threshold", "alpha", "window") if getattr(args, k) is not None}
    base = base_from_file(args.preset_file) if getattr(args, "preset_file", None) else None
    settings = ServerSettings(model_name=args.served_model_name or args.model, method=args.method,
                              shared_overrides=shared, method_overrides=own, api_key=args.api_key or None,
                              limits=limits, base=base, batching=args.batching,
                              batch_policy=args.batch_policy)
    try:
        settings.validate()
    except (SettingsError, ConfigError) as exc:
        raise ValueError(f"{flag(exc.field)}: {exc}") from None
    return settings


def settings_for_model(settings: ServerSettings, model, args: argparse.Namespace) -> ServerSettings:
    """A block-diffusion checkpoint is served in the block size it was trained with, unless
    ``--block-length`` or ``--preset-file`` says otherwise (as ``generate`` does)."""
    size = getattr(model, "block_size", None)
    if args.block_length is not None or getattr(args, "preset_file", None) or not (
            model.traits.block_causal and size):
        return settings
    shared = {**settings.shared_overrides, "block_length": size}
    fitted = dataclasses.replace(settings, shared_overrides=shared)
    fitted.validate()
    return fitted


def base_from_file(path: str):
    """The ``--preset-file`` config; an unreadable file or a bad field is one line naming both."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ValueError(f"--preset-file: {exc}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """Check every flag, then load the model and serve it until interrupted.

    Raises ValueError (a flag out of bounds, a checkpoint that cannot be loaded) and
    ``MissingExtra`` (the ``[server]`` extra is not installed) before the model is loaded."""
    settings = settings_from_args(args)
    if getattr(args, "tensor_parallel", 1) > 1 and settings.batching == "same-settings":
        raise ValueError("--batching: same-settings cannot run under --tensor-parallel (every rank must run "
                         "the same forwards); use continuous or serial")
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require_extra(module, "server", "serve")
    import torch
    import uvicorn

    from .app import create_app

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=fmt)
    if not _is_loopback(args.host) and not settings.api_key:
        log.warning("binding %s without --api-key: anyone who can reach this address can use the model",
                    args.host)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_from_args(args)
    settings = settings_for_model(settings, model, args)

    def serve() -> None:
        app = create_app(model, tokenizer, settings)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=5, timeout_keep_alive=args.timeout_keep_alive)

    if getattr(model, "tensor_parallel", None) is None:
        serve()
    else:  # rank 0 serves HTTP, the other ranks replay its engine steps
        from ..parallel.lockstep import serve_ranks

        serve_ranks(model, serve)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming_dllm.server")
    _add_arguments(parser)
    try:
        return serve_entry(parser.parse_args(argv))
    except (ValueError, MissingExtra) as exc:  # a flag out of bounds, a checkpoint that cannot be loaded
        parser.exit(2, f"error: {exc}\n")
