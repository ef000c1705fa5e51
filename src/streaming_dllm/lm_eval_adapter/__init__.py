"""lm-evaluation-harness integration: the ``streaming-dllm`` harness model and the paper presets.

The model class lives in ``.model`` (it imports ``lm_eval``); this package stays importable
without the harness installed.
"""

from ..lm_eval_tasks import TASKS_DIR
from .paper_presets import PAPER_PRESETS, PAPER_TASKS, paper_preset, paper_task

__all__ = ["PAPER_PRESETS", "PAPER_TASKS", "TASKS_DIR", "paper_preset", "paper_task"]
