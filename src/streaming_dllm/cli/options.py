"""The front-end kit: the flags, rules and error reporting every command shares.

``generate``, ``bench``, ``serve`` and ``python -m streaming_dllm.tasks.arith_eval`` all take
their model flags from ``add_model_args`` and their decoding flags from ``add_decode_args``, and
build their ``DecodeConfig`` with ``config_from_args``; a ``ConfigError`` names the flag the user
typed (``--gen-length``), not only the ``DecodeConfig`` field.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Any

from ..config import FIELDS, PRESETS, ConfigError, DecodeConfig, gen_length_for

_KNOBS: list[tuple[str, Any, str]] = [
    ("gen_length", int, "tokens to generate after the prompt (multiple of --block-length)"),
    ("block_length", int, "positions decoded together, block by block"),
    ("steps", int, "total steps of the fixed schedule (--unmask steps); default: one token per step"),
    ("unmask", str, "commit rule: steps | threshold | dynamic | factor | threshold_topk | sequential"),
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
    ("top_k", int, "sampling filter: keep the k most probable tokens (0 = off; block-diffusion families)"),
    ("top_p", float, "sampling filter: keep the top-p nucleus (1 = off; block-diffusion families)"),
    ("sub_block_length", int, "block-diffusion: decode each block in sub-blocks of this length"),
    ("edit_threshold", float, "LLaDA2.1 editing: re-write a decoded token above this probability"),
    ("max_post_steps", int, "with editing: forwards a block may take after its last mask"),
    ("early_exit_at", str, "block (after the block holding EOS) | eos (as soon as EOS is final)"),
    ("span", str, "block-diffusion: cover (blocks covering gen_length) | blocks (gen_length/block_length)"),
]
KNOB_NAMES = tuple(k[0] for k in _KNOBS) + ("early_exit",)
assert set(KNOB_NAMES) == set(FIELDS), "every DecodeConfig field has a flag"


def flag(field: str) -> str:
    """The CLI flag of a ``DecodeConfig`` field (``gen_length`` -> ``--gen-length``)."""
    return "--" + field.replace("_", "-")


def _window(value: str) -> int | None:
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window must be an integer or 'none', got {value!r}") from None


def add_decode_args(parser: argparse.ArgumentParser, default_method: str = "streaming") -> None:
    """The --method preset plus one flag per DecodeConfig knob (only given flags override)."""
    g = parser.add_argument_group(
        "decoding (a preset, then any knob overridden; each knob's default is the preset's value, "
        "listed under 'presets' below)"
    )
    g.add_argument("--method", default=default_method, choices=sorted(PRESETS), help="decoding preset")
    g.add_argument("--preset-file", default=None, metavar="JSON",
                   help="a saved DecodeConfig (e.g. tune's preset.json) as the base instead of --method; "
                   "the knob flags given still override it")
    for name, typ, help_text in _KNOBS:
        g.add_argument(flag(name), dest=name, type=typ or _window, default=argparse.SUPPRESS, help=help_text)
    g.add_argument(
        "--early-exit",
        dest="early_exit",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="stop after a finished block containing EOS (default: per preset)",
    )


def config_from_args(args: argparse.Namespace, **defaults: Any) -> DecodeConfig:
    """DecodeConfig of the chosen preset (or --preset-file) with the flags that were given; errors name
    the flag."""
    given = {name: getattr(args, name) for name in KNOB_NAMES if hasattr(args, name)}
    preset_file = getattr(args, "preset_file", None)
    try:
        if preset_file is not None:
            # The file is the whole base: a command's own defaults do not override what it says.
            return base_from_file(preset_file).replace(**given)
        return DecodeConfig.preset(args.method, **{**defaults, **given})
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{flag(exc.field)}: {exc}") from None


def base_from_file(path: str) -> DecodeConfig:
    """The config saved in ``path``; an error names --preset-file, the file and the field."""
    from ..preset_files import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigError("preset_file", f"{exc}") from None


def fit_to_model(cfg: DecodeConfig, model: Any, args: argparse.Namespace) -> DecodeConfig:
    """A block-diffusion checkpoint decodes in the block size it was trained with (its
    ``block_size``) unless ``--block-length`` or a preset file says otherwise: blocks of 32 on a
    model trained with blocks of 4 give wrong answers (builtin-bd: 7.8% instead of 90.8%)."""
    if hasattr(args, "block_length") or getattr(args, "preset_file", None) is not None:
        return cfg
    return in_trained_blocks(cfg, model)


def in_trained_blocks(cfg: DecodeConfig, model: Any) -> DecodeConfig:
    """``cfg`` in the block size a block-causal model declares (gen_length rounded up to whole
    blocks, a sub-block length that no longer divides dropped); other models: ``cfg`` as is."""
    size = getattr(model, "block_size", None)
    if not (model.traits.block_causal and size) or cfg.block_length == size:
        return cfg
    sub = cfg.sub_block_length
    return cfg.replace(block_length=size, gen_length=gen_length_for(cfg.gen_length, size), steps=None,
                       sub_block_length=sub if sub and size % sub == 0 else None)


def presets_text(**defaults: Any) -> str:
    """Each preset's field values (the defaults of the knobs for that --method), one line each;
    ``defaults`` are a command's own defaults (as given to ``config_from_args``)."""
    varied = [k for k in FIELDS if any(k in p for p in PRESETS.values())]
    lines = ["presets (--method): the value each knob takes unless its flag is given"]
    for name in sorted(PRESETS):
        cfg = DecodeConfig.preset(name, **defaults)
        lines.append(f"  {name}: " + ", ".join(f"{k}={_show(getattr(cfg, k))}" for k in varied))
    base = DecodeConfig(**defaults)
    common = ", ".join(f"{k}={_show(getattr(base, k))}" for k in FIELDS if k not in varied)
    lines.append(f"  every preset: {common}")
    lines.append("  (steps=None: one token per step; mask_id/eos_id=None: from the checkpoint)")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")


def check_model_args(args: argparse.Namespace) -> None:
    """Refuse a --device the engine cannot run on (e.g. ``meta``) before anything is loaded."""
    device = str(args.device)
    if not DEVICE_RE.match(device):
        raise ValueError(f"--device: {device!r} is not one of cpu, cuda, cuda:N, mps, auto")
    if device.startswith("cuda:"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and int(device[5:]) >= count:
            raise ValueError(f"--device: {device!r}: this machine has {count} CUDA device(s)")


def check_token_ids(model, cfg: DecodeConfig) -> None:
    """The --mask-id / --eos-id of a run must be usable on this model; errors name the flag."""
    try:
        model.token_ids(cfg.mask_id, cfg.eos_id)
    except ValueError as exc:
        name = "eos_id" if str(exc).startswith("eos_id") else "mask_id"
        raise ValueError(f"{flag(name)}: {exc}") from None


def check_context(model, prompt_tokens: int, cfg: DecodeConfig, prompt_flag: str = "--prompt") -> None:
    """Refuse a run whose prompt + gen_length exceeds the model's context, before decoding."""
    limit = getattr(model, "max_context", None)
    if limit is None:
        return
    if cfg.gen_length > limit:
        raise ValueError(f"--gen-length: {cfg.gen_length} exceeds the model's context of {limit} tokens")
    if prompt_tokens + cfg.gen_length > limit:
        raise ValueError(
            f"{prompt_flag}: the prompt is {prompt_tokens} tokens; with --gen-length {cfg.gen_length} that "
            f"exceeds the model's context of {limit} tokens (at most {limit - cfg.gen_length} prompt tokens)"
        )


def check_argv(argv: list[str]) -> None:
    """Refuse an argument that is not valid UTF-8 (Python keeps its bytes as lone surrogates)."""
    for i, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            if arg.startswith("--"):
                name = arg.split("=", 1)[0]
            elif i and argv[i - 1].startswith("--"):
                name = argv[i - 1].split("=", 1)[0]
            else:
                name = f"argument {i + 1}"
            name = name.encode("utf-8", "backslashreplace").decode("utf-8")
            raise ValueError(f"{name}: the value is not valid UTF-8") from None


def read_stdin_text() -> str:
    """stdin decoded strictly as UTF-8: invalid bytes are one clear error, not a traceback."""
    data = sys.stdin.buffer.read() if sys.stdin is not None else b""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1]
        raise ValueError(f"stdin: not valid UTF-8 (byte {exc.start}: {bad!r})") from None


MAX_TENSOR_PARALLEL = 64


def _tensor_parallel(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_TENSOR_PARALLEL:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_TENSOR_PARALLEL}, got {value!r}")
    return n


def add_model_args(parser: argparse.ArgumentParser, tensor_parallel: bool = False) -> None:
    """--model, --device, --dtype, --revision, --allow-pickle, --trust-remote-code, and
    --tensor-parallel for the commands that run under torchrun (``generate``, ``serve``)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="builtin", help="local folder, hub id, or 'builtin' (default)")
    g.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | mps | auto (default)")
    g.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (bf16 on CUDA)")
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument("--allow-pickle", action="store_true", help="allow .bin pickle weights (can run code)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's tokenizer code")
    if not tensor_parallel:
        return
    g.add_argument("--tensor-parallel", type=_tensor_parallel, default=1, metavar="N",
                   help="shard heads and MLP over N ranks (1..64; launch with torchrun --nproc_per_node N)")


def load_from_args(args: argparse.Namespace):
    """(model, tokenizer) as the model flags say."""
    from ..loading import load_model, load_tokenizer

    check_model_args(args)
    try:
        model = load_model(
            args.model,
            device=args.device,
            dtype=args.dtype,
            revision=args.revision,
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
            tensor_parallel=getattr(args, "tensor_parallel", 1),
        )
    except ValueError as exc:
        # The loader names its parameter ("device: ..."); the user typed the flag.
        msg = str(exc)
        for name in ("device", "dtype", "revision"):
            if msg.startswith(f"{name}:"):
                raise ValueError(f"--{msg}") from None
        if msg.startswith("tensor_parallel="):
            raise ValueError(f"--tensor-parallel: {msg}") from None
        raise
    return model, load_tokenizer(model, trust_remote_code=args.trust_remote_code)


def require_extra(module: str, extra: str, command: str) -> None:
    """Fail with a message naming the extra to install when ``module`` cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{command} needs the [{extra}] extra ({exc.name or module} is not installed): "
            f"pip install 'streaming-dllm[{extra}]'"
        ) from None


class MissingExtra(RuntimeError):
    """An optional dependency group a command needs is not installed."""
