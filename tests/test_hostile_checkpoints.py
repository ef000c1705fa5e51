"""Hostile checkpoints through the CLI: one line naming the file, rc 2, no traceback, fast.

Each row breaks a copy of a checkpoint (the llada-tiny fixture, or the built-in model where the
tokenizer matters) in ``tmp_path``; ``DIR`` in its argv is that copy.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from fixture_cases import FIXTURES
from hostile import CLI, Case, check

from streaming_dllm.loading import BUILTIN_DIR

ARGV = [*CLI, "generate", "--model", "DIR", "--prompt", "x", "--device", "cpu", "--gen-length", "32"]


def _edit(name: str, **changes) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        cfg = json.loads((folder / name).read_text())
        cfg.update(changes)
        (folder / name).write_text(json.dumps(cfg))

    return breaker


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        path.write_bytes(data)

    return breaker


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _huge_shape(folder: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 2**64]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)


def _weights_dir(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()


def _escaping_index(folder: Path) -> None:
    outside = folder.parent / "elsewhere"
    outside.mkdir()
    shutil.move(folder / "model.safetensors", outside / "x.safetensors")
    from safetensors import safe_open

    with safe_open(str(outside / "x.safetensors"), "pt") as f:
        names = list(f.keys())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "../elsewhere/x.safetensors" for n in names}})
    )


def _escaping_link(folder: Path) -> None:
    outside = folder.parent / "outside.safetensors"
    shutil.move(folder / "model.safetensors", outside)
    (folder / "model.safetensors").symlink_to(outside)


def _index(obj) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        (folder / "model.safetensors").unlink()
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        (folder / "model.safetensors.index.json").write_bytes(data)

    return breaker


def _case(name: str, expect: str) -> Case:
    return Case(name, ARGV, expect)


FIXTURE, BUILTIN = "fixture", "builtin"
TABLE: list[tuple[Case, str, Callable[[Path], None]]] = [
    (_case("empty weights", "model.safetensors"), FIXTURE, _write("model.safetensors", b"")),
    (_case("random weights", "model.safetensors"), FIXTURE,
     _write("model.safetensors", bytes(range(256)) * 99)),
    (_case("truncated weights", "model.safetensors"), FIXTURE, _truncate),
    (_case("2^62 header", "model.safetensors"), FIXTURE,
     _write("model.safetensors", struct.pack("<Q", 2**62) + b"{}")),
    (_case("huge shape", "model.safetensors"), FIXTURE, _huge_shape),
    (_case("weights a directory", "model.safetensors"), FIXTURE, _weights_dir),
    (_case("n_heads 0", "config.json"), FIXTURE, _edit("config.json", n_heads=0)),
    (_case("d_model negative", "config.json"), FIXTURE, _edit("config.json", d_model=-128)),
    (_case("config a list", "config.json"), FIXTURE, _write("config.json", b"[1, 2, 3]")),
    (_case("config invalid JSON", "config.json"), FIXTURE, _write("config.json", b'{"n_layers": ')),
    (_case("config not UTF-8", "config.json"), FIXTURE, _write("config.json", b'{"a": "\xff\xfe"}')),
    (_case("mask outside vocab", "mask_token_id"), FIXTURE, _edit("config.json", mask_token_id=10**6)),
    (_case("eos outside vocab", "eos_token_id"), FIXTURE, _edit("config.json", eos_token_id=-3)),
    (_case("100000 layers", "config.json"), FIXTURE, _edit("config.json", n_layers=100000)),
    (_case("index invalid JSON", "model.safetensors.index.json"), FIXTURE, _index(b"{oops")),
    (_case("index not an object", "model.safetensors.index.json"), FIXTURE, _index(["x"])),
    (_case("index weight_map of ints", "model.safetensors.index.json"), FIXTURE,
     _index({"weight_map": {"w": 1}})),
    (_case("index escapes the folder", "outside the checkpoint folder"), FIXTURE, _escaping_index),
    (_case("link escapes the folder", "outside the checkpoint folder"), FIXTURE, _escaping_link),
    (_case("tokenizer.json invalid", "tokenizer.json"), BUILTIN, _write("tokenizer.json", b"{oops")),
    (_case("tokenizer.json not a tokenizer", "tokenizer.json"), BUILTIN,
     _write("tokenizer.json", b'{"a": 1}')),
    (_case("tokenizer_config.json invalid", "tokenizer_config.json"), BUILTIN,
     _write("tokenizer_config.json", b"\xff{")),
    (_case("tokenizer_config.json a list", "tokenizer_config.json"), BUILTIN,
     _write("tokenizer_config.json", b"[]")),
]


@pytest.mark.parametrize("case,source,breaker", TABLE, ids=[c.name for c, _, _ in TABLE])
def test_hostile_checkpoint(tmp_path, case, source, breaker):
    folder = tmp_path / "ckpt"
    if source == BUILTIN:
        shutil.copytree(BUILTIN_DIR, folder)
    else:
        folder.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(FIXTURES / "llada-tiny" / name, folder / name)
    breaker(folder)
    argv = [str(folder) if a == "DIR" else a for a in case.argv]
    res = check(Case(case.name, argv, case.expect, case.rc, case.stdin, case.env))
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("streaming-dllm: error: "), last
    assert str(folder) in last, last
