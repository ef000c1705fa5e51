"""Loading checkpoints: a local folder, a hub id or a built-in name; safetensors only by default.

The model is built on the meta device and the weights are assigned shard by shard, already cast
to the requested dtype and placed on the requested device, so an 8B checkpoint never needs a
float32 copy in host memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .models.base import DiffusionLM
from .models.registry import family_for

BUILTIN_NAME = "builtin"
BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTINS = {BUILTIN_NAME: BUILTIN_DIR, "builtin-bd": Path(__file__).parent / "builtin_bd"}
"""Shipped checkpoints by name: the LLaDA-layout demo and the block-diffusion (SDAR) one."""

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
    """A local folder holding config.json: a ``BUILTINS`` name, an existing folder, or a hub download."""
    name = str(name_or_path)
    if name in BUILTINS:
        folder = BUILTINS[name]
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"the built-in checkpoint is missing from {folder} (broken install?)")
        return folder
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


MAX_JSON_BYTES = 100 * 2**20
"""Largest JSON file (config, index, tokenizer files) or safetensors header that is read."""

MAX_HEADER_BYTES = 100 * 2**20

SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
"""The safetensors dtypes a header may declare, with their size in bytes."""


class CheckpointWarning(UserWarning):
    """A checkpoint that loads but will not work as expected (NaN or inf weights)."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line: the CLI prints errors as a single line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json_object(path: Path, what: str = "") -> dict[str, Any]:
    """A JSON object from ``path``, or a CheckpointError naming the file and what is wrong."""
    label = f"{path}{what}"
    if not path.is_file():
        raise CheckpointError(f"{label}: not a regular file")
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{label}: {size} bytes, larger than {MAX_JSON_BYTES} for a JSON file")
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{label}: cannot be read ({_one_line(exc)})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{label}: not UTF-8 text ({_one_line(exc)})") from exc
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of over 4300 digits
        raise CheckpointError(f"{label}: invalid JSON ({_one_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{label}: expected a JSON object, got a JSON {type(obj).__name__}")
    return obj


def read_config(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / "config.json")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_config(cls: type[DiffusionLM], config: dict[str, Any], path: Path) -> int:
    """The family's own checks plus the special ids, naming config.json; returns the vocab size."""
    try:
        cls.check_config(config)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{path}: missing or invalid key {exc}") from exc
    vocab = cls.vocab_size_of(config)
    assert vocab is not None  # check_config refuses a config without one
    for key in ("mask_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        if value is None:
            continue
        values = value if key == "eos_token_id" and isinstance(value, list) else [value]
        if not values:
            raise CheckpointError(f"{path}: {key}=[] must name at least one token id")
        for v in values:
            if not (_is_int(v) and 0 <= v < vocab):
                raise CheckpointError(
                    f"{path}: {key}={value!r} is not a token id of the vocabulary [0, {vocab})"
                )
    return vocab


def _confinement_root(folder: Path) -> Path:
    """The folder every weight file must resolve into.

    A local checkpoint is confined to its own (resolved) folder. A hub-cache snapshot
    (``models--org--name/snapshots/<rev>/``) links each file to ``../../blobs/``, so it is
    confined to its repo folder instead.
    """
    real = folder.resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real


def _confined(folder: Path, name: str, root: Path, source: Path) -> Path:
    """``folder / name``, refused when it names or links to a file outside ``root``."""
    path = folder / name
    real = path.resolve()
    if not real.is_relative_to(root):
        raise CheckpointError(
            f"{source}: weight file {name!r} resolves to {real}, outside the checkpoint folder {root}; "
            "refused"
        )
    return path


def _weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    root = _confinement_root(folder)
    single = folder / "model.safetensors"
    if single.exists() or single.is_symlink():
        path = _confined(folder, "model.safetensors", root, single)
        if not path.is_file():
            raise CheckpointError(f"{single}: not a regular file (a directory or a broken link?)")
        return [path]
    index = folder / "model.safetensors.index.json"
    if index.exists() or index.is_symlink():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in weight_map.items()
        ):
            raise CheckpointError(
                f"{index}: weight_map must be an object of weight names to shard file names"
            )
        if not weight_map:
            raise CheckpointError(f"{index}: weight_map is empty")
        files = [_confined(folder, f, root, index) for f in sorted(set(weight_map.values()))]
        missing = [str(f.relative_to(folder)) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: shards listed in the index are missing: {missing[:3]}")
        return files
    files = [_confined(folder, f.name, root, f) for f in sorted(folder.glob("*.safetensors"))]
    if files:
        bad = [f for f in files if not f.is_file()]
        if bad:
            raise CheckpointError(f"{bad[0]}: not a regular file")
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
    return [_confined(folder, f.name, root, f) for f in pickles]


TensorInfo = tuple[str, tuple[int, ...]]
"""(dtype, shape) of a tensor as its safetensors header declares it."""


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of a safetensors file, validated before any data is read.

    The header length must fit the file (and ``MAX_HEADER_BYTES``), the header must be a JSON
    object, every tensor must have a known dtype, a shape of non-negative ints and data offsets
    that match its shape and tile the data section exactly, as the format requires.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CheckpointError(f"{path}: {size} bytes, truncated or empty, not a safetensors file")
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8:
                raise CheckpointError(
                    f"{path}: header length {n} exceeds the file size {size}; truncated or not safetensors"
                )
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path}: header length {n} is larger than {MAX_HEADER_BYTES} bytes")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({_one_line(exc)})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    return _header_tensors(path, header, size - 8 - n)


def _header_tensors(path: Path, header: dict[str, Any], data_size: int) -> dict[str, TensorInfo]:
    """Each tensor entry checked; together their data must tile the ``data_size`` bytes exactly."""
    out: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise CheckpointError(f"{path}: __metadata__ is not a JSON object")
            continue
        out[name] = _header_tensor(path, name, info, data_size)
        spans.append((info["data_offsets"][0], info["data_offsets"][1], name))
    end = 0
    for lo, hi, name in sorted(spans):
        if lo != end:
            raise CheckpointError(
                f"{path}: tensor {name!r} data at byte {lo} overlaps or leaves a gap at {end}"
            )
        end = hi
    if end != data_size:
        raise CheckpointError(f"{path}: tensors cover {end} of the {data_size} data bytes")
    return out


def _header_tensor(path: Path, name: str, info: Any, data_size: int) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) of one header entry whose offsets fit the data and match its size."""
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: tensor {name!r}: expected an object with dtype, shape, data_offsets")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise CheckpointError(
            f"{path}: tensor {name!r} has data_offsets {offsets!r} outside the {data_size} data bytes"
        )
    nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{path}: tensor {name!r} of shape {shape} {dtype} needs {nbytes} bytes, "
            f"its data_offsets span {offsets[1] - offsets[0]}"
        )
    return dtype, tuple(shape)


def _check_layers(cls: type[DiffusionLM], config: dict[str, Any], names: dict[str, Any], cfg_path: Path,
                  where: Path) -> None:
    """The config's layer count against the layer indices the weights have, before building."""
    n_layers = config.get(cls.layers_key)
    if not _is_int(n_layers):
        return
    found = set()
    for name in names:
        if name.startswith(cls.layer_prefix):
            head = name[len(cls.layer_prefix):].split(".", 1)[0]
            if head.isascii() and head.isdigit():
                found.add(int(head))
    if not found:
        raise CheckpointError(
            f"{where}: weights do not match the {cls.family} architecture (no weights under "
            f"{cls.layer_prefix!r}; {cfg_path.name} has {cls.layers_key}={n_layers})"
        )
    if found != set(range(n_layers)):
        have = f"layers {min(found)}-{max(found)} ({len(found)} in all)"
        raise CheckpointError(
            f"{cfg_path}: {cls.layers_key}={n_layers}, but the weights in {where} have {have} "
            f"under {cls.layer_prefix!r}"
        )


def _count_nonfinite(t: torch.Tensor, chunk: int = 1 << 24) -> int:
    if not t.is_floating_point():
        return 0
    flat = t.reshape(-1)
    return sum(int((~torch.isfinite(part)).sum()) for part in flat.split(chunk))


def _warn_nonfinite(path: Path, name: str, t: torch.Tensor) -> None:
    bad = _count_nonfinite(t)
    if bad:
        warnings.warn(
            f"{path}: weight {name} has {bad} NaN/inf values (as {str(t.dtype).removeprefix('torch.')}); "
            "outputs will be garbage",
            CheckpointWarning,
            stacklevel=4,
        )


def _read_weights(path: Path, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out = {}
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    # copy=True: never keep parameters backed by the file (a rewrite of it would change them)
                    out[key] = f.get_tensor(key).to(device=device, dtype=dtype, copy=True)
                    _warn_nonfinite(path, key, out[key])
        except CheckpointError:
            raise
        except Exception as exc:  # the header was checked; anything else is a damaged file
            raise CheckpointError(f"{path}: cannot read the weights ({_one_line(exc)})") from exc
        return out
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({_one_line(exc)})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    out = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    for k, v in out.items():
        _warn_nonfinite(path, k, v)
    return out


def load_model(
    name_or_path: str | os.PathLike = BUILTIN_NAME,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "float32",
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    tensor_parallel: int = 1,
) -> DiffusionLM:
    """Load a dLLM checkpoint as one of our model families (see ``models.registry``).

    ``auto_map`` / modeling code shipped with a checkpoint is never executed: a known family is
    built from our own code, an unknown one is refused. ``trust_remote_code`` only lets
    ``load_tokenizer`` run a checkpoint's custom tokenizer class.

    ``tensor_parallel=N`` > 1 (in a process started by ``torchrun --nproc_per_node N``) joins the
    process group and returns this rank's shard (``parallel.tensor``): heads and MLP split N ways.
    """
    from .parallel.tensor import check_size

    tp = check_size(tensor_parallel)
    dev = resolve_device(device)
    tp_group = None
    if tp > 1:
        from .parallel.tensor import init_tensor_parallel, rank_device

        dev = rank_device(dev)
        tp_group = init_tensor_parallel(tp, dev)
    dt = resolve_dtype(dtype, dev)
    folder = resolve_checkpoint(name_or_path, revision)
    config = read_config(folder)
    cls = _family(name_or_path, config)
    cfg_path = folder / "config.json"
    _check_config(cls, config, cfg_path)
    files = _weight_files(folder, allow_pickle)
    where = files[0] if len(files) == 1 else folder
    # Shapes first, from the safetensors headers (no data read) or from the loaded pickles, so a
    # config that does not match its weights fails before the model is built or anything is read.
    shapes, state = _weight_shapes(files, dt, dev)
    _check_layers(cls, config, shapes, cfg_path, where)
    try:
        with torch.device("meta"), _no_random_init():
            model = cls(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: missing or invalid key {exc}") from exc
    tied = cls.tied_weights(config)
    _check_names_and_shapes(model, shapes, set(tied), cfg_path, where)
    state = _read_state(model, files, state, dt, dev, tp_group)
    for name in tied:
        state.pop(name, None)
    model.load_state_dict(state, strict=False, assign=True)
    model.post_load(dev)
    model.name_or_path = str(folder)
    model.trust_remote_code = trust_remote_code
    return model.eval().requires_grad_(False)


def _read_state(model: DiffusionLM, files: list[Path], state: dict[str, torch.Tensor] | None,
                dt: torch.dtype, dev: torch.device, tp) -> dict[str, torch.Tensor]:
    """The weights to assign; under tensor parallel the meta model is sharded first and each file
    is read on the CPU and cut to this rank's part, so a rank never holds the whole model."""
    if tp is None:
        if state is None:
            state = {}
            for f in files:
                state.update(_read_weights(f, dt, dev))
        return state
    from .parallel.tensor import local_state, shard_model

    takes = shard_model(model, tp.rank, tp.size)
    if state is not None:
        return local_state(state, takes, dev)
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(local_state(_read_weights(f, dt, torch.device("cpu")), takes, dev))
    return out


_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "trunc_normal_")
_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_random_init() -> Iterator[None]:
    """Skip the random init of layers built on the meta device: the checkpoint assigns every
    weight, and torch's meta-device init imports its compiler stack (seconds per load)."""
    with _INIT_LOCK:
        saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        try:
            yield
        finally:
            for name, fn in saved.items():
                setattr(torch.nn.init, name, fn)


def _family(name_or_path: str | os.PathLike, config: dict[str, Any]) -> type[DiffusionLM]:
    """The family the config describes; never a checkpoint's own code."""
    try:
        return family_for(config)
    except ValueError as exc:
        if config.get("auto_map"):
            raise CheckpointError(
                f"{name_or_path}: {exc}. This checkpoint ships its own modeling code (auto_map); "
                "streaming-dllm never executes checkpoint code, so it cannot load this family."
            ) from exc
        raise CheckpointError(f"{name_or_path}: {exc}") from exc


def _weight_shapes(files: list[Path], dt: torch.dtype, dev: torch.device):
    """(name -> (shape, file), the loaded state or None): safetensors from their headers only,
    pickles by loading them (they have no header)."""
    shapes: dict[str, tuple[tuple[int, ...], Path]] = {}
    if all(f.suffix == ".safetensors" for f in files):
        for f in files:
            for name, (_, shape) in read_safetensors_header(f).items():
                if name in shapes:
                    raise CheckpointError(f"{f}: weight {name} is also in {shapes[name][1]}")
                shapes[name] = (shape, f)
        return shapes, None
    state: dict[str, torch.Tensor] = {}
    for f in files:
        part = _read_weights(f, dt, dev)
        shapes.update({k: (tuple(v.shape), f) for k, v in part.items()})
        state.update(part)
    return shapes, state


def _check_names_and_shapes(model: DiffusionLM, shapes: dict[str, tuple[tuple[int, ...], Path]],
                            tied: set[str], cfg_path: Path, where: Path) -> None:
    """Every parameter present with the shape the config implies, nothing unexpected."""
    expected = {k: v for k, v in model.named_parameters() if k not in tied}
    names = set(shapes) - tied
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the {model.family} architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for name in sorted(names):
        shape, f = shapes[name]
        if shape != tuple(expected[name].shape):
            raise CheckpointError(
                f"{f}: weight {name} has shape {shape}, {cfg_path.name} implies {tuple(expected[name].shape)}"
            )


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
    # The small JSON files are checked here, so a broken one is named instead of surfacing as
    # whatever transformers makes of it.
    tok_cfg = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json"):
        path = folder / name
        if path.exists() or path.is_symlink():
            obj = read_json_object(path)
            if name == "tokenizer_config.json":
                tok_cfg = obj
    fast_file = (folder / "tokenizer.json").is_file()
    remote = bool(tok_cfg.get("auto_map")) and not trust_remote_code
    if fast_file and (remote or tok_cfg.get("tokenizer_class") in (None, "PreTrainedTokenizerFast")):
        # Direct load: AutoTokenizer would consult config.json, whose dLLM model_type it does not know.
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(folder))
        except Exception as exc:
            raise CheckpointError(
                f"{folder / 'tokenizer.json'}: cannot be loaded as a tokenizer ({_one_line(exc)})"
            ) from exc
    if remote:
        raise CheckpointError(
            f"{folder}: the tokenizer needs code shipped with the checkpoint; pass "
            "trust_remote_code=True (--trust-remote-code) if you trust it"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:
        names = ("tokenizer_config.json", "tokenizer.json", "vocab.json")
        files = [f for f in names if (folder / f).exists()]
        raise CheckpointError(
            f"{folder}: the tokenizer ({', '.join(files)}) cannot be loaded ({_one_line(exc)})"
        ) from exc
