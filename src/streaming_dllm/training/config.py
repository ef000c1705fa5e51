"""The run's knobs (``TrainConfig``) and the LLaDA-layout ``config.json`` of the model it trains."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..tasks import tokenizer as tok_lib


@dataclass
class TrainConfig:
    """Every knob of a run; saved next to the checkpoint so a run can be repeated."""

    out: str = "runs/builtin"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden_size: int = 384
    steps: int = 100_000
    batch_size: int = 32
    batch_tokens: int = 6144
    lr: float = 5e-4
    tie_embeddings: bool = True
    digit_embeddings: bool = False
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.01
    train_problems: int = 200_000
    pad_lengths: tuple[int, ...] = (64, 96, 128, 256, 512, 1024)
    pad_weights: tuple[float, ...] = (0.55, 0.22, 0.12, 0.06, 0.03, 0.02)
    drill_frac: float = 0.25
    suffix_frac: float = 0.25
    drill_equations: int = 10
    eps: float = 1e-3
    seed: int = 0
    threads: int = 2
    save_every: int = 100
    eval_every: int = 2000
    eval_n: int = 32
    time_limit_min: float = 60.0
    arch: str = "llada"
    """``llada`` (bidirectional) or ``sdar`` (block diffusion, ``training.block_diffusion``)."""
    block_size: int = 4
    """sdar only: the block size of the block-causal attention and of the loss's masking ratios."""
    init_from: str = ""
    """sdar only: a LLaDA checkpoint (e.g. ``builtin``) whose weights start the model."""


def model_config(cfg: TrainConfig, tokenizer) -> dict:
    """The checkpoint's config.json (LLaDA layout, or SDAR with ``arch="sdar"``); ids from the tokenizer."""
    if cfg.arch == "sdar":
        from .block_diffusion import sdar_model_config

        return sdar_model_config(model_config(replace(cfg, arch="llada"), tokenizer), cfg.block_size)
    ids = tok_lib.special_ids(tokenizer)
    vocab = len(tokenizer)
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_heads,
        "n_layers": cfg.n_layers,
        "mlp_hidden_size": cfg.mlp_hidden_size,
        "mlp_ratio": cfg.mlp_hidden_size / cfg.d_model,
        "vocab_size": vocab,
        "embedding_size": vocab,
        "rope": True,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "include_bias": False,
        "weight_tying": False,
        "max_sequence_length": 4096,
        "torch_dtype": "float32",
        **ids,
    }
