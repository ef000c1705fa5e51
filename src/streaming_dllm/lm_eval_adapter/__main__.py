"""``python -m streaming_dllm.lm_eval_adapter ...`` = ``streaming-dllm-eval ...``."""

from .cli import main

main()
