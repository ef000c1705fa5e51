"""Block-diffusion (BD3-LM / SDAR) training: the two-stream block-causal loss, the init from the
LLaDA built-in and a teacher-forced probe.

The noisy copy x_t and the clean copy x_0 of a row are fed together with the same position ids.
Noisy block b attends to itself (bidirectionally) and to the clean blocks before it; clean block b
attends to the clean blocks up to and including itself. So every block is denoised exactly as
the block-causal decoder sees it: the previous blocks clean (their K/V cached), the future absent.
Blocks are counted from position 0, as SDAR's decoder counts them.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.qwen_bd import SDARModel
from ..tasks import arith
from .data import encode_data, make_batch

LLADA_TO_SDAR = {
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}
"""LLaDA block weight names -> SDAR (Qwen3) layer weight names (the MLP is silu(ff_proj) * up_proj)."""


def two_stream_mask(n: int, block_size: int, noisy_start: int = 0) -> torch.Tensor:
    """[M, M] bool (True = attend) over the noisy positions ``[noisy_start, n)`` then the clean ``[0, n)``.

    Noisy positions in blocks wholly before ``noisy_start`` (prompt only) are left out: they carry
    no loss, and no clean token attends to a noisy one.
    """
    noisy_blk = torch.arange(noisy_start, n) // block_size
    clean_blk = torch.arange(n) // block_size
    nn_ = noisy_blk[:, None] == noisy_blk[None, :]
    nc = clean_blk[None, :] < noisy_blk[:, None]
    cc = clean_blk[None, :] <= clean_blk[:, None]
    cn = torch.zeros(n, len(noisy_blk), dtype=torch.bool)
    return torch.cat([torch.cat([nn_, nc], 1), torch.cat([cn, cc], 1)], 0)


def sample_block_mask(region: torch.Tensor, block_size: int, eps: float,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A ratio t ~ U(eps, 1] per (row, block), the response positions masked with it: (masked, t [B, N])."""
    b, n = region.shape
    blocks = math.ceil(n / block_size)
    t_blk = torch.rand(b, blocks, generator=gen) * (1 - eps) + eps
    t = t_blk.repeat_interleave(block_size, dim=1)[:, :n]
    masked = (torch.rand(b, n, generator=gen) < t) & region
    return masked, t


def bd_forward(model: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, block_size: int,
               noisy_start: int) -> torch.Tensor:
    """Logits of the noisy positions ``[noisy_start, N)`` from one two-stream forward."""
    b, n = clean.shape
    mask = two_stream_mask(n, block_size, noisy_start).to(clean.device)
    ids = torch.cat([noisy[:, noisy_start:], clean], 1)
    pos = torch.cat([torch.arange(noisy_start, n), torch.arange(n)]).to(clean.device).expand(b, -1)
    rows = slice(0, n - noisy_start)
    return model(ids, pos, key_mask=mask.expand(b, -1, -1), logits_rows=rows)


def bd_loss(model: nn.Module, ids: torch.Tensor, region: torch.Tensor, mask_id: int, eps: float,
            gen: torch.Generator, block_size: int) -> torch.Tensor:
    """BD3-LM loss: CE on the masked response tokens of each block given the clean earlier blocks,
    weighted by 1/t of the block and normalised by the response length (LLaDA's normalisation)."""
    b, n = ids.shape
    masked, t = sample_block_mask(region, block_size, eps, gen)
    first = int(region.float().argmax(1).min())  # the earliest response position of the batch
    start = first // block_size * block_size
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = bd_forward(model, noisy, ids, block_size, start)
    m = masked[:, start:]
    ce = F.cross_entropy(logits[m], ids[:, start:][m], reduction="none")
    weight = (1.0 / t[:, start:])[m] / region.sum(1, keepdim=True).expand(b, n - start)[m]
    return (ce * weight).sum() / b


def sdar_state_from_llada(llada: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The LLaDA built-in's weights under SDAR (Qwen3) names; the QK-norm weights are not in it."""
    out = {
        "model.embed_tokens.weight": llada["model.transformer.wte.weight"],
        "model.norm.weight": llada["model.transformer.ln_f.weight"],
        "lm_head.weight": llada["model.transformer.ff_out.weight"],
    }
    for i in range(n_layers):
        for src, dst in LLADA_TO_SDAR.items():
            out[f"model.layers.{i}.{dst}.weight"] = llada[f"model.transformer.blocks.{i}.{src}.weight"]
    return out


def init_from_llada(model: nn.Module, folder: str, n_layers: int) -> list[str]:
    """Load the LLaDA checkpoint in ``folder`` into an SDAR model; returns the names left at their init
    (the per-head QK RMSNorm weights, which start at 1)."""
    from safetensors.torch import load_file

    from ..loading import resolve_checkpoint

    state = sdar_state_from_llada(load_file(str(resolve_checkpoint(folder) / "model.safetensors")), n_layers)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"unexpected weights: {result.unexpected_keys}")
    return list(result.missing_keys)


def sdar_model_config(base: dict[str, Any], block_size: int) -> dict[str, Any]:
    """The HF SDAR config.json of a model as wide as the LLaDA config ``base``; ids copied from it."""
    ids = {k: base[k] for k in ("mask_token_id", "eos_token_id", "eot_token_id", "pad_token_id") if k in base}
    return {
        "architectures": ["SDARForCausalLM"],
        "model_type": "sdar",
        "hidden_size": base["d_model"],
        "intermediate_size": base["mlp_hidden_size"],
        "num_attention_heads": base["n_heads"],
        "num_key_value_heads": base["n_kv_heads"],
        "head_dim": base["d_model"] // base["n_heads"],
        "num_hidden_layers": base["n_layers"],
        "vocab_size": base["vocab_size"],
        "max_position_embeddings": base["max_sequence_length"],
        "rms_norm_eps": base["rms_norm_eps"],
        "rope_theta": base["rope_theta"],
        "rope_scaling": None,
        "attention_bias": False,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "block_size": block_size,
        "torch_dtype": "float32",
        **ids,
    }


@torch.no_grad()
def block_probe(model: nn.Module, tokenizer, problems: list[arith.Problem], block_size: int,
                pad_len: int = 64) -> dict[str, float]:
    """Teacher-forced check: every response block fully masked, the earlier blocks clean.

    ``tokens``: share of solution tokens (up to the end of turn) predicted by argmax;
    ``solved``: share of problems whose whole solution is right this way. All of a block is
    predicted at once, so this is stricter than decoding, which commits a block token by token.
    """
    was_training = model.training
    model.eval()
    prompts, responses = encode_data(tokenizer, problems)
    ids, region = make_batch(prompts, responses, pad_len, tokenizer.eos_token_id)
    first = int(region.float().argmax(1).min())
    start = first // block_size * block_size
    noisy = ids.masked_fill(region, tokenizer.mask_token_id)
    pred = bd_forward(model, noisy, ids, block_size, start).argmax(-1)
    solution = torch.zeros_like(region)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        solution[i, len(p): len(p) + len(r)] = True
    sol = solution[:, start:]
    right = (pred == ids[:, start:]) | ~sol
    model.train(was_training)
    return {"tokens": float((pred == ids[:, start:])[sol].float().mean()),
            "solved": float(right.all(1).float().mean())}


@torch.no_grad()
def calibrate_qk_norm(model: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Set each QK RMSNorm weight to the mean per-head RMS of its input on ``ids``.

    The LLaDA weights were trained without QK norm; a norm of weight 1 rescales queries and keys
    to RMS 1 and so changes the attention temperature. With the mean RMS as weight the mapped
    model starts close to the LLaDA one (teacher-forced loss 2.56 against 2.99 with weight 1,
    builtin_bd/TRAINING.md). Layers are calibrated in order within one forward, so each sees the
    already calibrated layers before it.
    """
    scales: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith(("q_norm", "k_norm")):
            def pre(m: nn.Module, args: tuple, name: str = name) -> None:
                scales[name] = float(args[0].float().pow(2).mean(-1).sqrt().mean())
                m.weight.fill_(scales[name])
            hooks.append(mod.register_forward_pre_hook(pre))
    try:
        model(ids, torch.arange(ids.shape[1]).expand_as(ids))
    finally:
        for h in hooks:
            h.remove()
    return scales


def build_sdar(cfg: Any, config: dict[str, Any], tokenizer, log=print) -> nn.Module:
    """The SDAR model of a run: GPT-style init, or the LLaDA checkpoint ``cfg.init_from`` mapped onto
    it with calibrated QK norms; the LM head tied to the embedding when ``cfg.tie_embeddings``."""
    if cfg.digit_embeddings:
        raise ValueError("--digit-embeddings is not supported with --arch sdar")
    model = SDARModel(config)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            residual = name.endswith(("o_proj.weight", "down_proj.weight"))
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers) if residual else 0.02)
    if cfg.init_from:
        left = init_from_llada(model, cfg.init_from, cfg.n_layers)
        prompts, responses = encode_data(tokenizer, arith.problems("train", 64))
        ids, _ = make_batch(prompts, responses, 64, config["eos_token_id"])
        scales = calibrate_qk_norm(model, ids)
        log(f"init from {cfg.init_from}: {len(left)} QK-norm weights calibrated "
            f"({min(scales.values()):.2f} to {max(scales.values()):.2f})")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def copy_tokenizer(init_from: str, out: Path) -> None:
    """A run started from a checkpoint uses its tokenizer (the embedding rows are its ids)."""
    from ..loading import resolve_checkpoint

    src = resolve_checkpoint(init_from)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (out / name).is_file():
            shutil.copy2(src / name, out / name)
