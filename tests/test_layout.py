"""The code's own rules that a review would check: small functions in the core layers."""

from __future__ import annotations

import ast
from pathlib import Path

import streaming_dllm

SRC = Path(streaming_dllm.__file__).parent
CORE = ("engine", "models")
CORE_FILES = ("config.py", "loading.py", "kv_cache.py")
MAX_LINES = 60


def test_no_function_over_60_lines_in_the_core():
    files = [p for d in CORE for p in (SRC / d).rglob("*.py")] + [SRC / f for f in CORE_FILES]
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert len(files) > 10
    assert not long, long
