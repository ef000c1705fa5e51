"""Moved to ``streaming_dllm.training``; run ``python -m streaming_dllm.training.train_demo``.

A shim for the old path, kept only until its last users (tests/test_builtin.py, tests/test_bench.py,
the README's training command) name the new one; then delete it.
"""

from .training import TrainConfig, fact_accuracy, model_config, save_checkpoint
from .training.train_demo import main

__all__ = ["TrainConfig", "fact_accuracy", "main", "model_config", "save_checkpoint"]

if __name__ == "__main__":
    main()
