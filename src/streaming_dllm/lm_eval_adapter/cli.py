"""``streaming-dllm-eval``: the ``lm_eval`` command with streaming-dllm's plugins in place.

lm-evaluation-harness releases up to 0.4.13 do not read the ``lm_eval.models`` entry points that
installed packages declare (newer harness versions do). This command does that discovery, then
runs the harness's own CLI unchanged, with the package's task folder as ``--include_path`` unless
one is given. Every ``lm_eval`` argument works the same way.
"""

from __future__ import annotations

import sys

from ..lm_eval_tasks import TASKS_DIR


def register_plugins() -> list[str]:
    """Register every installed ``lm_eval.models`` entry point the harness does not know yet.

    The same registration the startup hook does (``streaming_dllm_lm_eval_hook``), run here
    directly so this command also works where ``.pth`` files are skipped. Entries are lazy
    ("module:object" placeholders) and built-in models are never shadowed. Returns the names added.
    """
    import lm_eval.models  # noqa: F401  (built-in models first, so they keep precedence)

    from streaming_dllm_lm_eval_hook import register_entry_points

    return register_entry_points()


def with_task_path(argv: list[str]) -> list[str]:
    """``argv`` plus ``--include_path <our tasks>`` when the user gave none."""
    if any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        return list(argv)
    return [*argv, "--include_path", str(TASKS_DIR)]


def main(argv: list[str] | None = None) -> None:
    """Run ``lm_eval`` (same arguments) after registering plugins and our task folder."""
    from lm_eval.__main__ import cli_evaluate

    register_plugins()
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["lm-eval", *with_task_path(args)]
    cli_evaluate()


if __name__ == "__main__":
    main()
