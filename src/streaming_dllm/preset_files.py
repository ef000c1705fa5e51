"""A ``DecodeConfig`` as a JSON file: what ``tune`` writes and ``--preset-file`` reads.

The file holds a format tag and version, the preset's label and every field, so a tuned setting
can travel between machines and front ends (generate, serve, bench, the lm-eval adapter) and be
read back exactly. Reading is strict: an unknown field or a value that breaks a rule is one
``ConfigError`` naming the file and the field, never a silently different decode. A field the
file lacks (written before that field existed) keeps the dataclass default.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .config import FIELDS, ConfigError, DecodeConfig

FORMAT = "streaming-dllm/decode-config"
VERSION = 1
MAX_BYTES = 1 << 20
"""Largest preset file read (a real one is well under a kilobyte)."""


def config_record(cfg: DecodeConfig) -> dict[str, Any]:
    """The JSON object ``save_config`` writes: format, version, preset label, every field."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "preset": cfg.preset_name,
        "config": {name: getattr(cfg, name) for name in FIELDS},
    }


def save_config(cfg: DecodeConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` to ``path`` (atomically: a reader never sees half a file); the path."""
    path = Path(path)
    text = json.dumps(config_record(cfg), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError("preset_file", f"{path}: larger than {MAX_BYTES} bytes: not a preset file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("preset_file", f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("preset_file", f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("preset_file", f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(
            "preset_file", f'{path}: not a streaming-dllm preset file (no "format": "{FORMAT}")'
        )
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise ConfigError(
            "version", f"{path}: field version={version!r}: this streaming-dllm reads versions 1 to {VERSION}"
        )
    return data


def load_config(path: str | os.PathLike) -> DecodeConfig:
    """The ``DecodeConfig`` saved in ``path``; a ``ConfigError`` naming the file and the field
    when the file is unreadable, has an unknown field, or a value breaks a rule."""
    path = Path(path)
    data = _read(path)
    unknown = sorted(set(data) - {"format", "version", "preset", "config"})
    if unknown:
        raise ConfigError(unknown[0], f"{path}: unknown top-level field {unknown[0]!r}")
    label = data.get("preset")
    if label is not None and not (isinstance(label, str) and 0 < len(label) <= 200 and label.isprintable()):
        raise ConfigError(
            "preset", f"{path}: field preset={label!r}: must be a short printable string or null"
        )
    fields = data.get("config")
    if not isinstance(fields, dict):
        raise ConfigError("config", f"{path}: field config must be an object of DecodeConfig fields")
    bad = sorted(set(fields) - set(FIELDS))
    if bad:
        raise ConfigError(
            bad[0], f"{path}: unknown field {bad[0]!r} (DecodeConfig fields: {', '.join(FIELDS)})"
        )
    try:
        return DecodeConfig(**fields, preset_name=label)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{path}: field {exc.field}: {exc}") from None
