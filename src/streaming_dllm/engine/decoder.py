"""The one block-wise decoding loop behind every method.

The loop owns the state (token matrix, blocks, steps, nfe, stop rules); the parts it combines
(cache mode, suffix window, unmasking rule, remasking score, early exit) come from
``DecodeConfig`` and the model family's traits. Rows of a batch are independent: each keeps its
own masks, thresholds and early exit, and rows that need no forward are left out of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..config import DecodeConfig
from ..kv_cache import KVCache
from ..models.base import DiffusionLM
from . import policies
from .suffix import kept_columns


@dataclass
class BlockChunk:
    """A block that just became final (blocks never change after they complete).

    ``tokens`` [B, end-start] holds every row's block; ``finished[r]`` says row r has stopped
    (early exit or last block), so its remaining positions are final too.
    """

    index: int
    start: int
    end: int
    tokens: torch.Tensor
    finished: list[bool]
    nfe: int


@dataclass
class GenerateOutput:
    """Result of ``generate``: ``sequences`` [B, prompt_width + gen_length], left-padded prompts."""

    sequences: torch.Tensor
    nfe: int
    row_nfe: list[int]
    tokens_fed: list[int]
    prompt_lengths: list[int]
    prompt_width: int
    config: DecodeConfig = field(repr=False)

    def generated(self, row: int) -> list[int]:
        """The generated ids of one row (gen_length of them)."""
        return self.sequences[row, self.prompt_width :].tolist()

    def prompt(self, row: int) -> list[int]:
        return self.sequences[row, self.prompt_width - self.prompt_lengths[row] : self.prompt_width].tolist()


def _ids_of(row) -> list[int]:
    """One prompt's ids from a tensor, a list of ints or a tokenizer's encoding."""
    if isinstance(row, Mapping):
        row = row["input_ids"]
    if isinstance(row, torch.Tensor):
        return row.tolist()
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
        raise ValueError("input_ids: each prompt must be a sequence of integer token ids")
    return list(row)


def _as_rows(input_ids, attention_mask) -> list[list[int]]:
    """Prompts as lists of ids; a padded tensor needs an attention_mask with left padding."""
    if isinstance(input_ids, Mapping):  # a tokenizer's BatchEncoding
        attention_mask = input_ids.get("attention_mask", attention_mask)
        input_ids = input_ids["input_ids"]
        if isinstance(attention_mask, list):
            attention_mask = torch.tensor(attention_mask)
        if isinstance(input_ids, list) and input_ids and isinstance(input_ids[0], int):
            input_ids = [input_ids]
        if isinstance(input_ids, list):
            input_ids = torch.tensor(input_ids)
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape [batch, length], got {tuple(input_ids.shape)}")
        if attention_mask is None:
            return [row.tolist() for row in input_ids]
        if attention_mask.shape != input_ids.shape:
            raise ValueError("attention_mask: must have the shape of input_ids")
        rows = []
        for ids, m in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            n = sum(int(v) for v in m)
            if any(m[: len(m) - n]) or not all(m[len(m) - n :]):
                raise ValueError("attention_mask: prompts must be left-padded (zeros first, then ones)")
            rows.append(ids[len(ids) - n :])
        return rows
    if attention_mask is not None:
        raise ValueError("attention_mask: only meaningful with a tensor input_ids")
    if isinstance(input_ids, Sequence) and input_ids and all(isinstance(t, int) for t in input_ids):
        return [list(input_ids)]
    return [_ids_of(row) for row in input_ids]


class _Run:
    """State of one batched decode (built once, consumed by ``blocks``)."""

    def __init__(
        self, model: DiffusionLM, input_ids, cfg: DecodeConfig, attention_mask, seeds, cancelled=None
    ) -> None:
        self.model, self.cfg = model, cfg
        self.cancelled: Callable[[int], bool] | None = cancelled
        self.traits = model.traits
        self.mask_id = cfg.mask_id if cfg.mask_id is not None else model.mask_id
        self.eos_id = cfg.eos_id if cfg.eos_id is not None else model.eos_id
        if self.mask_id is None:
            raise ValueError(
                "mask_id: the checkpoint's config has no mask_token_id; set DecodeConfig.mask_id"
            )
        if cfg.early_exit and self.eos_id is None:
            raise ValueError("eos_id: early_exit needs an EOS id; the checkpoint's config has none")
        rows = _as_rows(input_ids, attention_mask)
        if not rows:
            raise ValueError("input_ids: empty batch")
        vocab = model.config.get("embedding_size") or model.config.get("vocab_size")
        for i, r in enumerate(rows):
            if not r:
                raise ValueError(f"input_ids: prompt {i} is empty")
            if vocab and (min(r) < 0 or max(r) >= vocab):
                raise ValueError(f"input_ids: prompt {i} has ids outside the vocabulary [0, {vocab})")
        dev = model.device
        self.batch = len(rows)
        self.lengths = [len(r) for r in rows]
        self.width = max(self.lengths)
        self.total = self.width + cfg.gen_length
        pad_id = model.pad_id if model.pad_id is not None else (self.eos_id or 0)
        x = torch.full((self.batch, self.total), self.mask_id, dtype=torch.long)
        pad = torch.tensor([self.width - n for n in self.lengths])
        for i, r in enumerate(rows):
            x[i, : pad[i]] = pad_id
            x[i, pad[i] : self.width] = torch.tensor(r, dtype=torch.long)
        self.x = x.to(dev)
        cols = torch.arange(self.total)
        self.positions = (cols[None, :] - pad[:, None]).clamp(min=0).to(dev)
        self.key_valid = (cols[None, :] >= pad[:, None]).to(dev) if int(pad.max()) > 0 else None
        self.done = torch.zeros(self.batch, dtype=torch.bool, device=dev)
        self.row_nfe = [0] * self.batch
        self.tokens_fed = [0] * self.batch
        self.nfe = 0
        if cfg.temperature > 0 or cfg.remasking == "random":
            if seeds is None:
                base = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
                seeds = [base + i for i in range(self.batch)]
            if len(seeds) != self.batch:
                raise ValueError(f"seeds: expected {self.batch} seeds, got {len(seeds)}")
            self.generators = []
            for s in seeds:
                g = torch.Generator(device=dev)
                g.manual_seed(int(s))
                self.generators.append(g)
        else:
            self.generators = None

    def blocks(self) -> Iterator[BlockChunk]:
        cfg = self.cfg
        for c in range(cfg.num_blocks):
            start = self.width + c * cfg.block_length
            end = start + cfg.block_length
            self._decode_block(start, end)
            if cfg.early_exit:
                block = self.x[:, start:end]
                hit = (block == self.eos_id).any(-1) & ~self.done
                if hit.any():
                    self.x[hit, end:] = self.eos_id
                    self.done |= hit
            last = c == cfg.num_blocks - 1
            finished = [True] * self.batch if last else self.done.tolist()
            yield BlockChunk(c, start, end, self.x[:, start:end].clone(), finished, self.nfe)
            if bool(self.done.all()):
                return

    def _decode_block(self, s: int, e: int) -> None:
        cfg, traits, model = self.cfg, self.traits, self.model
        kept = kept_columns(e, self.total, cfg.window, cfg.tail_keep, self.x.device)
        n_kept = kept.numel()
        act = torch.nonzero(~self.done & (self.x[:, s:e] == self.mask_id).any(-1)).flatten()
        if act.numel() == 0:
            return
        xa = self.x.index_select(0, act)
        pos = self.positions.index_select(0, act)[:, kept]
        keys = None if self.key_valid is None else self.key_valid.index_select(0, act)[:, kept]
        gens = None if self.generators is None else [self.generators[i] for i in act.tolist()]
        schedule = None
        if cfg.unmask == "steps" and traits.schedule == "even":
            schedule = policies.even_schedule((xa[:, s:e] == self.mask_id).sum(-1), cfg.steps_per_block)
        cache: KVCache | None = None
        step = 0
        while True:
            block_start = step == 0
            full_feed = cfg.cache == "none" or block_start  # the kept columns from 0, else a chunk from s
            if full_feed:
                if cfg.cache != "none":
                    cache = model.new_cache()
                    cache.store()
                feed = xa[:, kept]
                feed_pos = pos
                rows = slice(s - 1, e - 1) if traits.logit_shift else slice(s, e)
            else:
                if cfg.cache == "prefix":
                    cache.attend()
                    feed, feed_pos = xa[:, kept[s:]], pos[:, s:]
                else:
                    cache.replace(s, e)
                    feed, feed_pos = xa[:, s:e], pos[:, s:e]
                rows = slice(0, max(e - s - 1, 1)) if traits.logit_shift else slice(0, e - s)
            logits = model(feed, feed_pos, cache=cache, key_mask=keys, logits_rows=rows)
            if traits.logit_shift and not full_feed:
                logits = torch.cat([logits[:, :1], logits[:, : e - s - 1]], dim=1)
            if block_start and cfg.cache == "prefix":
                cache.crop(s)
            self.nfe += 1
            for i in act.tolist():
                self.row_nfe[i] += 1
                self.tokens_fed[i] += feed.shape[1]

            block = xa[:, s:e]
            cand = block == self.mask_id
            fed_from_block = feed[:, s:] if full_feed else feed
            masked_fed = (fed_from_block == self.mask_id).sum(-1)
            ratio = masked_fed.to(torch.float64) / (n_kept - s)
            commit, x0 = self._commit(logits, cand, ratio, step, block_start, schedule, gens)
            xa[:, s:e] = torch.where(commit, x0, block)
            self.x.index_copy_(0, act, xa)
            step += 1

            still = (xa[:, s:e] == self.mask_id).any(-1)
            if self.cancelled is not None:
                gone = [j for j, row in enumerate(act.tolist()) if self.cancelled(row)]
                if gone:
                    self.done[act[gone]] = True
                    still[gone] = False
            if not bool(still.any()):
                return
            if not bool(still.all()):
                keep = torch.nonzero(still).flatten()
                act, xa, pos = act[keep], xa[keep], pos[keep]
                keys = None if keys is None else keys[keep]
                schedule = None if schedule is None else schedule[keep]
                gens = None if gens is None else [gens[i] for i in keep.tolist()]
                if cache is not None:
                    cache = cache.select_rows(keep)

    def _commit(self, logits, cand, ratio, step, block_start, schedule, gens):
        """Which block positions to commit this step, and with which tokens."""
        cfg, traits = self.cfg, self.traits
        x0, conf = self._scores(logits, cand, gens)
        if block_start and cfg.cache != "none" and traits.first_token_at_block_start:
            first = torch.zeros_like(cand)
            first[:, 0] = True
            return first & cand, x0
        n = cand.sum(-1)
        if cfg.unmask == "steps":
            if schedule is not None:
                k = schedule[:, step] if step < schedule.shape[1] else n
            else:
                k = policies.linspace_count(n, step, cfg.steps_per_block, traits.schedule_eps)
            return policies.top_k_select(conf, cand, torch.minimum(k, n)), x0
        if cfg.unmask == "factor":
            return policies.factor_select(conf, cand, cfg.factor), x0
        if cfg.unmask == "dynamic":
            thr = policies.dynamic_threshold(cfg.threshold, cfg.alpha, ratio)
        else:
            thr = torch.full_like(ratio, cfg.threshold, dtype=torch.float64)
        return policies.threshold_select(conf, cand, thr), x0

    def _scores(self, logits, cand, gens):
        """Token choice and confidence, computed for masked positions only."""
        cfg = self.cfg
        x0 = torch.zeros(cand.shape, dtype=torch.long, device=cand.device)
        conf = torch.full(cand.shape, policies.NEG_INF, dtype=torch.float64, device=cand.device)
        if cfg.temperature > 0 or cfg.remasking == "random":
            # Row-wise draws keep a row's random stream independent of its batch.
            tok, sc = policies.choose_tokens(
                logits, cfg.remasking, cfg.temperature, self.traits.confidence_dtype, gens
            )
            return tok, sc.to(torch.float64).masked_fill(~cand, policies.NEG_INF)
        idx = cand.nonzero(as_tuple=True)
        tok, sc = policies.choose_tokens(
            logits[idx][None], cfg.remasking, 0.0, self.traits.confidence_dtype, None
        )
        x0[idx] = tok[0]
        conf[idx] = sc[0].to(torch.float64)
        return x0, conf


def stream(
    model: DiffusionLM,
    input_ids,
    config: DecodeConfig,
    *,
    attention_mask: torch.Tensor | None = None,
    seeds: list[int] | None = None,
    cancelled: Callable[[int], bool] | None = None,
) -> Iterator[BlockChunk]:
    """Decode and yield each block as soon as it is final.

    ``cancelled(row)`` is asked after every step; a row it answers True for stops decoding at once
    (its remaining positions stay masked and it is reported finished), freeing its compute.
    """
    yield from _inference(_Run(model, input_ids, config, attention_mask, seeds, cancelled))


def _inference(run: _Run) -> Iterator[BlockChunk]:
    with torch.inference_mode():
        yield from run.blocks()


def generate(
    model: DiffusionLM,
    input_ids,
    config: DecodeConfig,
    *,
    attention_mask: torch.Tensor | None = None,
    seeds: list[int] | None = None,
) -> GenerateOutput:
    """Decode a batch of prompts (a [B, L] tensor, or lists of ids of different lengths).

    Prompts of different lengths are left-padded; each row decodes exactly as it would alone.
    ``seeds`` gives each row its own random stream (temperature > 0 or random remasking).
    """
    run = _Run(model, input_ids, config, attention_mask, seeds)
    for _ in _inference(run):
        pass
    return GenerateOutput(
        sequences=run.x,
        nfe=run.nfe,
        row_nfe=run.row_nfe,
        tokens_fed=run.tokens_fed,
        prompt_lengths=run.lengths,
        prompt_width=run.width,
        config=config,
    )
