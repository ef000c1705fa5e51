"""Loading checkpoints: a local folder, a hub id or ``"builtin"``; safetensors only by default.

The model is built on the meta device and the weights are assigned shard by shard, already cast
to the requested dtype and placed on the requested device, so an 8B checkpoint never needs a
float32 copy in host memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .models.base import DiffusionLM
from .models.registry import family_for

BUILTIN_NAME = "builtin"
BUILTIN_DIR = Path(__file__).parent / "builtin"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or is not understood."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device: {device!r} is not a torch device (try 'cpu' or 'cuda')") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype: {dtype} is not one of float32, bfloat16, float16")
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder holding config.json: ``builtin``, an existing folder, or a hub download."""
    name = str(name_or_path)
    if name == BUILTIN_NAME:
        if not (BUILTIN_DIR / "config.json").is_file():
            raise CheckpointError(f"the built-in checkpoint is missing from {BUILTIN_DIR} (broken install?)")
        return BUILTIN_DIR
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{name}: expected a checkpoint folder, got a file")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{name}: no config.json in this folder, not a Hugging Face checkpoint")
        return path
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"{name}: no such folder, and not a hub id of the form 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # network, auth, missing repo: one clear message
        raise CheckpointError(f"{name}: could not download from the hub: {exc}") from exc


def read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: invalid JSON ({exc})") from exc


def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shards listed in the index are missing: {missing[:3]}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
    if pickles and not allow_pickle:
        raise CheckpointError(
            f"{folder}: only pickle weights ({pickles[0].name}) found; pickles can run code when "
            "loaded, so they are refused. Convert to safetensors, or pass allow_pickle=True "
            "(--allow-pickle) if you trust this checkpoint."
        )
    if not pickles:
        raise CheckpointError(f"{folder}: no weights found (*.safetensors)")
    return pickles


def _read_weights(path: Path, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                # copy=True: never keep parameters backed by the file (a rewrite of it would change them)
                out[key] = f.get_tensor(key).to(device=device, dtype=dtype, copy=True)
        return out
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.to(device=device, dtype=dtype) for k, v in state.items()}


def load_model(
    name_or_path: str | os.PathLike = BUILTIN_NAME,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "float32",
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> DiffusionLM:
    """Load a dLLM checkpoint as one of our model families (see ``models.registry``).

    ``auto_map`` / modeling code shipped with a checkpoint is never executed: a known family is
    built from our own code, an unknown one is refused. ``trust_remote_code`` only lets
    ``load_tokenizer`` run a checkpoint's custom tokenizer class.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder = resolve_checkpoint(name_or_path, revision)
    config = read_config(folder)
    try:
        cls = family_for(config)
    except ValueError as exc:
        if config.get("auto_map"):
            raise CheckpointError(
                f"{name_or_path}: {exc}. This checkpoint ships its own modeling code (auto_map); "
                "streaming-dllm never executes checkpoint code, so it cannot load this family."
            ) from exc
        raise CheckpointError(f"{name_or_path}: {exc}") from exc
    files = _weight_files(folder, allow_pickle)
    try:
        with torch.device("meta"):
            model = cls(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'}: missing or invalid key {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(_read_weights(f, dt, dev))
    expected = dict(model.named_parameters())
    for name in cls.tied_weights(config):
        state.pop(name, None)
        expected.pop(name, None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match the {cls.family} architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{folder}: weight {name} has shape {tuple(tensor.shape)}, config implies "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False, assign=True)
    model.post_load(dev)
    model.name_or_path = str(folder)
    model.trust_remote_code = trust_remote_code
    return model.eval().requires_grad_(False)


def load_tokenizer(model_or_path: DiffusionLM | str | os.PathLike, trust_remote_code: bool = False):
    """The checkpoint's tokenizer through ``transformers.AutoTokenizer``.

    Custom tokenizer code shipped with a checkpoint runs only with ``trust_remote_code=True``;
    otherwise a checkpoint with a ``tokenizer.json`` is loaded as a fast tokenizer.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if isinstance(model_or_path, DiffusionLM):
        folder = Path(model_or_path.name_or_path)
        trust_remote_code = trust_remote_code or model_or_path.trust_remote_code
    else:
        folder = resolve_checkpoint(model_or_path)
    has_tok = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    if not has_tok:
        raise CheckpointError(f"{folder}: this checkpoint has no tokenizer files")
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    fast_file = (folder / "tokenizer.json").is_file()
    remote = bool(tok_cfg.get("auto_map")) and not trust_remote_code
    if fast_file and (remote or tok_cfg.get("tokenizer_class") in (None, "PreTrainedTokenizerFast")):
        # Direct load: AutoTokenizer would consult config.json, whose dLLM model_type it does not know.
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    if remote:
        raise CheckpointError(
            f"{folder}: the tokenizer needs code shipped with the checkpoint; pass "
            "trust_remote_code=True (--trust-remote-code) if you trust it"
        )
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
