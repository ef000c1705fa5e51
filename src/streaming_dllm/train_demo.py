"""Train the built-in demo dLLM on the arithmetic task: ``python -m streaming_dllm.train_demo``.

The objective is LLaDA's SFT recipe: the chat-templated prompt is never masked; the response
(worked solution, ``<|eot|>``, then ``<|endoftext|>`` padding up to the row's length) is masked
token by token with probability t ~ U(eps, 1], and the cross-entropy on masked positions is
weighted by 1/t and normalised by the response length. Padding lengths vary per batch (some up
to 1024 tokens), so the model learns to fill long generation regions with EOS as an instruct
dLLM does. A quarter of the rows (``--drill-frac``) are practice sheets of equations
(``arith.drill``), so every arithmetic fact the problems use is seen often. In a quarter of
the rows (``--suffix-frac``) the masked positions are the last ``ceil(t * n)`` of the response
rather than random ones (same ratio, weight and normalisation): the known-prefix, masked-suffix
context that semi-autoregressive decoding gives, without which the model loses count of the
steps of a solution (``builtin/TRAINING.md``).

Training is seeded and resumable: ``train_state.pt`` in ``--out`` is picked up automatically;
the final checkpoint (config, safetensors, tokenizer) is written to ``--out`` and, with
``--export DIR``, copied to DIR (``src/streaming_dllm/builtin`` for the shipped one). The
shipped checkpoint came from these defaults (a 60-minute time limit on a
2-core CPU; with a time limit the cosine decay follows the elapsed time). Its figures and what
was tried are in ``builtin/TRAINING.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .models.llada import LLaDAModel
from .tasks import arith
from .tasks import tokenizer as tok_lib
from .tasks.arith_eval import encode_prompts

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


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
    extra: dict = field(default_factory=dict)


def model_config(cfg: TrainConfig, tokenizer) -> dict:
    """A LLaDA-layout config.json whose special ids come from the tokenizer."""
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


def get_tokenizer(out: Path, drill_equations: int = 10):
    """Load the run's tokenizer, training it on task text the first time."""
    from transformers import AutoTokenizer

    if (out / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(out))
    rng = random.Random(0)
    texts = [p.prompt + "\n" + p.solution for p in arith.problems("train", 20_000)]
    texts += [p.prompt + "\n" + p.solution for p in (arith.drill(rng, drill_equations) for _ in range(2000))]
    tokenizer = tok_lib.train_tokenizer(texts, numbers=arith.MAX_VALUE)
    tok_lib.save_tokenizer(tokenizer, out)
    return AutoTokenizer.from_pretrained(str(out))


def encode_data(tokenizer, problems: list[arith.Problem]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and response ids (solution + end-of-turn) per problem."""
    eot = tokenizer.convert_tokens_to_ids(tok_lib.EOT)
    responses = tokenizer([p.solution for p in problems], add_special_tokens=False)["input_ids"]
    return encode_prompts(tokenizer, problems), [r + [eot] for r in responses]


def make_batch(prompts, responses, pad_len: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of prompt + response + EOS padding, all of length max(prompt) + pad_len.

    Returns the ids and a bool mask of the response region (the part that may be masked).
    """
    width = max(len(p) for p in prompts) + max(pad_len, max(len(r) for r in responses))
    ids = torch.full((len(prompts), width), eos, dtype=torch.long)
    region = torch.ones((len(prompts), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, : len(p)] = torch.tensor(p)
        ids[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        region[i, : len(p)] = False
    return ids, region


def sample_mask(region: torch.Tensor, eps: float, gen: torch.Generator,
                suffix_frac: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row a ratio t ~ U(0, 1] (stratified over the batch) and the response positions to mask.

    Each response position is masked with probability t. With ``suffix_frac`` > 0, that share of
    the rows masks the last ``ceil(t * n)`` response positions instead: the context that
    semi-autoregressive decoding gives the model (what comes before is known, everything after
    is masked), which random masking almost never shows it. Returns (masked, t).
    """
    b, n = region.shape
    t = (torch.randperm(b, generator=gen) + torch.rand(b, generator=gen)) / b
    t = t.clamp(min=eps)
    masked = (torch.rand(b, n, generator=gen) < t[:, None]) & region
    if suffix_frac > 0:
        suffix_rows = torch.rand(b, generator=gen) < suffix_frac
        k = torch.ceil(t * region.sum(1)).long()  # the region runs to the end of the row
        suffix = torch.arange(n)[None, :] >= (n - k)[:, None]
        masked = torch.where(suffix_rows[:, None], suffix & region, masked)
    return masked, t


def diffusion_loss(model, ids: torch.Tensor, region: torch.Tensor, mask_id: int, eps: float,
                   gen: torch.Generator, suffix_frac: float = 0.0) -> torch.Tensor:
    """LLaDA SFT loss: mask the response with ratio t per row, CE on masked tokens weighted 1/t."""
    b, n = ids.shape
    masked, t = sample_mask(region, eps, gen, suffix_frac)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    pos = torch.arange(n).expand(b, n)
    logits = model(noisy, pos)
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    weight = (1.0 / t[:, None]).expand(b, n)[masked] / region.sum(1, keepdim=True).expand(b, n)[masked]
    return (ce * weight).sum() / b


@torch.no_grad()
def greedy_decode(model, prompts: list[list[int]], gen_length: int, block_length: int, mask_id: int,
                  pad_id: int) -> list[list[int]]:
    """Vanilla low-confidence decoding, one token per step: a self-contained check for training."""
    b = len(prompts)
    plen = max(len(p) for p in prompts)
    x = torch.full((b, plen + gen_length), mask_id, dtype=torch.long)
    valid = torch.ones_like(x, dtype=torch.bool)
    for i, p in enumerate(prompts):
        x[i, : plen - len(p)] = pad_id
        valid[i, : plen - len(p)] = False
        x[i, plen - len(p) : plen] = torch.tensor(p)
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    rows = torch.arange(b)
    for start in range(plen, plen + gen_length, block_length):
        for _ in range(block_length):
            logits = model(x, pos, key_mask=valid)[:, start : start + block_length].double()
            conf, pred = logits.softmax(-1).max(-1)
            is_mask = x[:, start : start + block_length] == mask_id
            conf = torch.where(is_mask, conf, torch.full_like(conf, -1.0))
            j = conf.argmax(-1)
            keep = is_mask[rows, j]
            x[rows[keep], start + j[keep]] = pred[rows[keep], j[keep]]
    return [x[i, plen:].tolist() for i in range(b)]


def quick_eval(model, tokenizer, problems: list[arith.Problem], gen_length: int = 128) -> float:
    """Exact-match accuracy with ``greedy_decode`` on a few problems."""
    model.eval()
    outs = greedy_decode(model, encode_prompts(tokenizer, problems), gen_length, 32,
                         tokenizer.mask_token_id, tokenizer.pad_token_id)
    model.train()
    texts = tokenizer.batch_decode(outs, skip_special_tokens=True)
    return sum(arith.score(t, p.answer) for t, p in zip(texts, problems, strict=True)) / len(problems)


@torch.no_grad()
def fact_accuracy(model, tokenizer, per_sheet: int = 10) -> dict[str, float]:
    """Share of ``arith.facts()`` whose result the model predicts, by operation and overall.

    Every fact appears once on practice sheets of ``per_sheet`` equations (followed by EOS
    padding, as in training); all results are masked at once and the operands stay visible.
    Problems need every one of their 2 to 4 results right, so this is the number to watch when
    accuracy on problems stalls. It measures the facts on sheets only: a model can know them
    there and still get the same equation wrong inside a solution (see builtin/TRAINING.md).
    """
    was_training = model.training
    model.eval()
    eos, mask_id = tokenizer.eos_token_id, tokenizer.mask_token_id
    (equals,) = tokenizer(" =", add_special_tokens=False)["input_ids"]
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for kind, eqs in arith.facts().items():
        sheets = [arith.sheet(eqs[i : i + per_sheet]) for i in range(0, len(eqs), per_sheet)]
        prompts, responses = encode_data(tokenizer, sheets)
        ids, region = make_batch(prompts, responses, 64, eos)  # EOS padding as in training
        after_equals = torch.zeros_like(region)
        after_equals[:, 1:] = (ids[:, :-1] == equals) & region[:, :-1]
        logits = model(ids.masked_fill(after_equals, mask_id), torch.arange(ids.shape[1]).expand_as(ids))
        right[kind] = int((logits.argmax(-1) == ids)[after_equals].sum())
        total[kind] = int(after_equals.sum())
    model.train(was_training)
    out = {kind: right[kind] / total[kind] for kind in total}
    out["all"] = sum(right.values()) / sum(total.values())
    return out


def init_weights(model: LLaDAModel, n_layers: int) -> None:
    """GPT-style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)."""
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("attn_out.weight", "ff_out.weight")) \
                and ".blocks." in name else 0.02
            torch.nn.init.normal_(p, std=std)


def tie_embeddings(model: LLaDAModel) -> None:
    """Share the input embedding with the LM head during training.

    Copying a name or a number from the story is then close to the identity map through the
    residual stream, which a tiny model finds in far fewer steps than with two separate matrices.
    The checkpoint still stores both (equal) matrices, so it loads as a plain LLaDA checkpoint.
    """
    t = model.model.transformer
    t.ff_out.weight = t.wte.weight


def start_head_as_embedding(model: LLaDAModel) -> None:
    """Untied training: the LM head starts as a copy of the input embedding, then learns alone.

    The copy gives the identity map for copying tokens from the story at step 0, as tying does;
    afterwards the head is free to score N and N + 1 apart while the embedding keeps a number line.
    """
    t = model.model.transformer
    with torch.no_grad():
        t.ff_out.weight.copy_(t.wte.weight)


class DigitFactoredRows(nn.Module):
    """Parametrization of an embedding matrix: each number token's row gains a tens and a units vector.

    ``row(N) = free(N) + tens[N // 10] + units[N % 10]``. The tens and units tables are shared by
    all numbers, so with the tied LM head the logit of N is the sum of a tens score and a units
    score: the model can get the units digit exactly right (a 10 x 10 table for ``a + b``) while
    its magnitude is off, which is where the plain one-vector-per-number model fails (most wrong
    results were off by one, see builtin/TRAINING.md). It is a training-time parametrization
    only: the exported checkpoint stores the summed rows, a plain LLaDA embedding.
    """

    def __init__(self, number_ids: list[int], values: list[int], d_model: int, std: float = 0.02) -> None:
        super().__init__()
        self.register_buffer("rows", torch.tensor(number_ids, dtype=torch.long))
        self.register_buffer("tens_of", torch.tensor([v // 10 for v in values], dtype=torch.long))
        self.register_buffer("units_of", torch.tensor([v % 10 for v in values], dtype=torch.long))
        self.tens = nn.Parameter(torch.randn(max(values) // 10 + 1, d_model) * std)
        self.units = nn.Parameter(torch.randn(10, d_model) * std)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_add(0, self.rows, self.tens[self.tens_of] + self.units[self.units_of])


def number_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """Ids and values of the tokens that are a whole number, with or without the leading space."""
    ids, values = [], []
    for token, i in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if text.isdecimal() and text.isascii():
            ids.append(i)
            values.append(int(text))
    return ids, values


def add_digit_embeddings(model: LLaDAModel, tokenizer) -> None:
    """Register ``DigitFactoredRows`` on the input embedding and the LM head (one shared instance)."""
    from torch.nn.utils import parametrize

    ids, values = number_tokens(tokenizer)
    t = model.model.transformer
    digits = DigitFactoredRows(ids, values, t.wte.weight.shape[1])
    parametrize.register_parametrization(t.wte, "weight", digits)
    parametrize.register_parametrization(t.ff_out, "weight", digits)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a plain checkpoint has: parametrized weights evaluated, their parts dropped."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." not in key:
            state[key] = value
        elif key.endswith(".original"):
            path, rest = key.split(".parametrizations.", 1)
            attr = rest.split(".", 1)[0]
            state[f"{path}.{attr}"] = getattr(model.get_submodule(path), attr)
    # clone: tied weights share storage, and the checkpoint stores each one in full
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


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


def save_checkpoint(model: LLaDAModel, config: dict, out: Path) -> None:
    from safetensors.torch import save_file

    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(plain_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors writes 0600; the file ships in a package


def train(cfg: TrainConfig, export: str | None = None, log=print) -> dict:
    """Run (or resume) training; returns a summary with the final quick-eval accuracy."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tokenizer = get_tokenizer(out, cfg.drill_equations)
    config = model_config(cfg, tokenizer)
    model = LLaDAModel(config)
    init_weights(model, cfg.n_layers)
    if cfg.tie_embeddings:
        tie_embeddings(model)
    else:
        start_head_as_embedding(model)
    if cfg.digit_embeddings:
        add_digit_embeddings(model, tokenizer)
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
            acc = quick_eval(model, tokenizer, dev)
            facts = fact_accuracy(model, tokenizer)["all"]
            log(f"step {step} loss {loss.item():.4f} dev@{cfg.eval_n} {acc:.3f} facts {facts:.3f} "
                f"elapsed {elapsed / 60:.1f} min")
        if cfg.time_limit_min and elapsed > cfg.time_limit_min * 60:
            log(f"time limit reached at step {step}; stopping early")
            save_state()
            break
    bar.close()
    model.eval()
    save_checkpoint(model, config, out)
    if export:
        dest = Path(export)
        dest.mkdir(parents=True, exist_ok=True)
        for name in CHECKPOINT_FILES:
            shutil.copy2(out / name, dest / name)
        log(f"exported checkpoint to {dest}")
    return {"step": step, "params": n_params, "elapsed_s": elapsed, "dev_acc": acc}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = TrainConfig()
    for name in ("out", "d_model", "n_layers", "n_heads", "mlp_hidden_size", "steps", "batch_size",
                 "batch_tokens", "lr", "drill_frac", "suffix_frac", "drill_equations",
                 "warmup", "train_problems", "seed", "threads", "save_every", "eval_every", "eval_n",
                 "time_limit_min"):
        default = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    parser.add_argument("--pad-lengths", type=int, nargs="+", default=list(defaults.pad_lengths))
    parser.add_argument("--pad-weights", type=float, nargs="+", default=list(defaults.pad_weights))
    parser.add_argument("--untied-embeddings", action="store_true",
                        help="train separate input embedding and LM head matrices "
                             "(the head starts as a copy)")
    parser.add_argument("--digit-embeddings", action=argparse.BooleanOptionalAction,
                        default=defaults.digit_embeddings,
                        help="number tokens' embedding rows share a tens and a units vector during training")
    parser.add_argument("--export", default=None,
                        help="copy the final checkpoint here (e.g. src/streaming_dllm/builtin)")
    args = vars(parser.parse_args(argv))
    export = args.pop("export")
    args["tie_embeddings"] = not args.pop("untied_embeddings")
    args["pad_lengths"], args["pad_weights"] = tuple(args["pad_lengths"]), tuple(args["pad_weights"])
    if len(args["pad_lengths"]) != len(args["pad_weights"]):
        parser.error("--pad-lengths and --pad-weights need the same number of values")
    summary = train(TrainConfig(**args), export=export)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
