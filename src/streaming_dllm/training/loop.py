"""The training loop: seeded, resumable from ``train_state.pt``, warmup then cosine learning rate."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..models.llada import LLaDAModel
from ..tasks import arith
from .block_diffusion import bd_loss, block_probe, build_sdar, copy_tokenizer
from .config import TrainConfig, model_config
from .data import encode_data, get_tokenizer, make_batch
from .embeddings import add_digit_embeddings, init_weights, start_head_as_embedding, tie_embeddings
from .export import export_checkpoint, save_checkpoint
from .loss import diffusion_loss
from .probes import fact_accuracy, quick_eval


def adapt_threads(current: int, most: int) -> int:
    """Fewer threads when other processes load the machine: oversubscribed cores thrash torch."""
    import os

    others = os.getloadavg()[0] - current
    want = max(1, min(most, int(os.cpu_count() or 1) - round(max(0.0, others))))
    if want != current:
        torch.set_num_threads(want)
    return want


def lr_at(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """Warmup then cosine decay; with a time limit, the decay follows whichever budget runs out first."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    if cfg.time_limit_min:
        frac = max(frac, min(1.0, elapsed / (cfg.time_limit_min * 60)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def build_model(cfg: TrainConfig, config: dict, tokenizer, log=print) -> torch.nn.Module:
    """The run's model before training: LLaDA (``arch="llada"``) or block-diffusion SDAR."""
    if cfg.arch == "sdar":
        return build_sdar(cfg, config, tokenizer, log)
    if cfg.arch != "llada":
        raise ValueError(f"arch={cfg.arch!r}: expected 'llada' or 'sdar'")
    model = LLaDAModel(config)
    init_weights(model, cfg.n_layers)
    if cfg.tie_embeddings:
        tie_embeddings(model)
    else:
        start_head_as_embedding(model)
    if cfg.digit_embeddings:
        add_digit_embeddings(model, tokenizer)
    return model


def periodic_check(model, tokenizer, dev: list[arith.Problem], cfg: TrainConfig) -> tuple[float, str]:
    """(accuracy, log text): decoded dev problems and facts on sheets (LLaDA), or the teacher-forced
    block probe (SDAR: every block masked, earlier blocks clean; its ``solved`` is the accuracy)."""
    if cfg.arch == "sdar":
        probe = block_probe(model, tokenizer, dev, cfg.block_size)
        return probe["solved"], f"dev@{cfg.eval_n} tokens {probe['tokens']:.3f} solved {probe['solved']:.3f}"
    acc = quick_eval(model, tokenizer, dev)
    facts = fact_accuracy(model, tokenizer)["all"]
    return acc, f"dev@{cfg.eval_n} {acc:.3f} facts {facts:.3f}"


def train(cfg: TrainConfig, export: str | None = None, log=print) -> dict:
    """Run (or resume) training; returns a summary with the final quick-eval accuracy."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        copy_tokenizer(cfg.init_from, out)
    tokenizer = get_tokenizer(out, cfg.drill_equations)
    config = model_config(cfg, tokenizer)
    model = build_model(cfg, config, tokenizer, log)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed = 0, 0.0
    state_path = out / "train_state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        log(f"resumed from {state_path} at step {step}")
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    prompts, responses = encode_data(tokenizer, arith.problems("train", cfg.train_problems))
    drill_rng = random.Random(cfg.seed + 1)
    drill_p, drill_r = encode_data(tokenizer, [arith.drill(drill_rng, cfg.drill_equations)
                                               for _ in range(cfg.train_problems // 4)])
    dev = arith.problems("dev", cfg.eval_n)
    eos, mask_id = config["eos_token_id"], config["mask_token_id"]
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M params, vocab {config['vocab_size']}, {len(prompts)} train problems")
    pad_w = torch.tensor(cfg.pad_weights, dtype=torch.float)

    def save_state() -> None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "step": step, "elapsed": elapsed}, state_path)

    model.train()
    threads = adapt_threads(cfg.threads, cfg.threads)
    acc = float("nan")
    t0 = time.time() - elapsed
    bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True)
    while step < cfg.steps:
        pad_len = cfg.pad_lengths[int(torch.multinomial(pad_w, 1, generator=gen))]
        rows = max(2, min(cfg.batch_size, cfg.batch_tokens // (pad_len + 64)))  # long rows: fewer of them
        n_drill = int(torch.binomial(torch.tensor(float(rows)), torch.tensor(cfg.drill_frac), generator=gen))
        idx = torch.randint(len(prompts), (rows - n_drill,), generator=gen).tolist()
        jdx = torch.randint(len(drill_p), (n_drill,), generator=gen).tolist()
        ids, region = make_batch([prompts[i] for i in idx] + [drill_p[j] for j in jdx],
                                 [responses[i] for i in idx] + [drill_r[j] for j in jdx], pad_len, eos)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, time.time() - t0, cfg)
        if cfg.arch == "sdar":
            loss = bd_loss(model, ids, region, mask_id, cfg.eps, gen, cfg.block_size)
        else:
            loss = diffusion_loss(model, ids, region, mask_id, cfg.eps, gen, cfg.suffix_frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed = time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", len=ids.shape[1], thr=threads)
        if step % 10 == 0:
            threads = adapt_threads(threads, cfg.threads)
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_state()
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            acc, line = periodic_check(model, tokenizer, dev, cfg)
            log(f"step {step} loss {loss.item():.4f} {line} elapsed {elapsed / 60:.1f} min")
        if cfg.time_limit_min and elapsed > cfg.time_limit_min * 60:
            log(f"time limit reached at step {step}; stopping early")
            save_state()
            break
    bar.close()
    model.eval()
    save_checkpoint(model, config, out)
    if export:
        dest = Path(export)
        export_checkpoint(out, dest)
        log(f"exported checkpoint to {dest}")
    return {"step": step, "params": n_params, "elapsed_s": elapsed, "dev_acc": acc}
