"""``python -m streaming_dllm.lm_eval_tasks`` prints the task folder, for ``--include_path``."""

from . import TASKS_DIR

print(TASKS_DIR)
