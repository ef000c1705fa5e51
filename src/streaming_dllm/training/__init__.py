"""Training of the built-in demo dLLM on the arithmetic task (``streaming_dllm.tasks.arith``).

``python -m streaming_dllm.training.train_demo`` is the command line (see its docstring and
``builtin/TRAINING.md``). The modules: ``config`` (``TrainConfig``, the checkpoint's
config.json), ``data`` (tokenizer, batches, masks), ``loss`` (the diffusion objective),
``embeddings`` (init and the embedding options), ``probes`` (the checks logged during
training), ``export`` (the plain checkpoint), ``loop`` (``train``) and ``block_diffusion``
(``--arch sdar``: the block-causal two-stream loss and the LLaDA -> SDAR init behind
``builtin-bd``, see ``builtin_bd/TRAINING.md``).
"""

from .config import TrainConfig, model_config
from .data import encode_data, get_tokenizer, make_batch, sample_mask
from .embeddings import (
    DigitFactoredRows,
    add_digit_embeddings,
    init_weights,
    number_tokens,
    start_head_as_embedding,
    tie_embeddings,
)
from .export import CHECKPOINT_FILES, export_checkpoint, plain_state_dict, save_checkpoint
from .loop import adapt_threads, lr_at, train
from .loss import diffusion_loss
from .probes import fact_accuracy, quick_eval

__all__ = [
    "CHECKPOINT_FILES", "DigitFactoredRows", "TrainConfig", "adapt_threads", "add_digit_embeddings",
    "diffusion_loss", "encode_data", "export_checkpoint", "fact_accuracy", "get_tokenizer", "init_weights",
    "lr_at", "make_batch", "model_config", "number_tokens", "plain_state_dict", "quick_eval",
    "sample_mask", "save_checkpoint", "start_head_as_embedding", "tie_embeddings", "train",
]
