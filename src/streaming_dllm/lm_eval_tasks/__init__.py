"""lm-evaluation-harness task configs shipped with streaming-dllm (pass this folder as --include_path)."""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
"""The folder to give the harness as ``--include_path``."""
