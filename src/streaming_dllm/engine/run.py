"""The state of one batched decode and its block loop (``Run``), full-attention parts.

The loop owns the state (token matrix, blocks, steps, nfe, stop rules); the parts it combines
(cache mode, suffix window, unmasking rule, remasking score, early exit) come from
``DecodeConfig`` and the model family's traits. Rows of a batch are independent: each keeps its
own masks, thresholds and early exit, and rows that need no forward are left out of it.
Block-causal families run ``causal_run.CausalRun``, which replaces the layout and the block.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import torch

from ..config import ConfigError, DecodeConfig
from ..kv_cache import KVCache
from ..models.base import DiffusionLM
from . import policies
from .block_causal import check_full_attention_config, eos_reached
from .cache_modes import MODES, CacheMode, Feed, logit_rows
from .inputs import as_rows
from .suffix import kept_columns


@dataclass
class BlockChunk:
    """A block that just became final (blocks never change after they complete).

    ``tokens`` [B, end-start] holds every row's block; ``finished[r]`` says row r has stopped
    (early exit or last block), so its remaining positions are final too. Row r's generated
    tokens in it start at ``starts[r]`` (not 0 where a block-causal row's prompt ends inside the
    block; the block length where the row has no such block): use ``row(r)``.
    """

    index: int
    start: int
    end: int
    tokens: torch.Tensor
    finished: list[bool]
    nfe: int
    starts: list[int] | None = None

    def row(self, r: int) -> list[int]:
        """The generated tokens of row r that this block made final."""
        start = 0 if self.starts is None else self.starts[r]
        return self.tokens[r, start:].tolist()


Scored = tuple[torch.Tensor, torch.Tensor]
"""A forward's token choice and confidence: per logits row ([K] each) when greedy, per row and
block position ([rows, block] each) when sampling."""


@dataclass(frozen=True)
class Scoring:
    """How a run scores its logits rows (token never the ``exclude`` id, confidence by
    ``remasking`` in ``dtype``; ``temperature`` > 0: Gumbel-max over ``block`` positions per row,
    from each row's own generator): forwards that score alike are scored in one call."""

    remasking: str
    dtype: torch.dtype
    exclude: int | None
    temperature: float = 0.0
    block: int = 0


@dataclass
class Forward:
    """One model call a run is waiting for: ``model(ids, positions, cache=..., key_mask=...,
    logits_rows=...)``. A run yields it and is sent back the logits, so the same loop runs alone
    (``drive``) or with other requests in one batched forward (``scheduler``). A run also names
    its ``scoring`` (a sampling one its rows' ``generators`` too); the scheduler fills ``scored``
    for a whole step at once (``score_forwards``) before sending the logits, and a run whose
    caller did not scores its forward alone, with the same function."""

    ids: torch.Tensor
    positions: torch.Tensor
    cache: KVCache | None
    key_mask: torch.Tensor | None
    logits_rows: tuple[torch.Tensor, torch.Tensor]
    scoring: Scoring | None = None
    generators: list[torch.Generator] | None = None
    scored: Scored | None = None


def score_forwards(forwards: list[Forward], logits: list[torch.Tensor]) -> None:
    """Fill ``scored`` of every forward that names a ``scoring``, one ``choose_tokens`` call per
    kind of scoring over all their logits rows: the per-row cost of a step's scoring is paid once,
    not once per request. Every operation in it works row by row (argmax, gather, logsumexp over
    the vocabulary; a sampling row draws its noise from its own generator, the same draw as
    alone), so a row's token and confidence are the same as when it is scored alone. Greedy
    scores come per logits row ([K]), sampling ones per row and block position ([rows, block])."""
    kinds: dict[Scoring, list[int]] = {}
    for i, f in enumerate(forwards):
        if f.scoring is not None:
            kinds.setdefault(f.scoring, []).append(i)
    for kind, members in kinds.items():
        sampled = kind.temperature > 0
        if sampled:  # [rows, block, V], side by side by row; each row brings its generator
            rows = [logits[i].view(-1, kind.block, logits[i].shape[-1]) for i in members]
            gens = [g for i in members for g in forwards[i].generators]
        else:  # [1, K, V], side by side by logits row
            rows, gens = [logits[i][None] for i in members], None
        dim = 0 if sampled else 1
        flat = rows[0] if len(rows) == 1 else torch.cat(rows, dim=dim)
        tok, sc = policies.choose_tokens(flat, kind.remasking, kind.temperature, kind.dtype, gens,
                                         kind.exclude)
        sizes = [r.shape[dim] for r in rows]
        for i, t, c in zip(members, tok.split(sizes, dim), sc.split(sizes, dim), strict=True):
            forwards[i].scored = (t, c) if sampled else (t[0], c[0])


Steps = Generator[Forward, torch.Tensor, None]
"""A run's decoding: yields the forwards it needs (and block chunks from ``events``)."""


def call(ids: torch.Tensor, positions: torch.Tensor, cache: KVCache | None, key_mask: torch.Tensor | None,
         rows: tuple[torch.Tensor, torch.Tensor]) -> Generator[Forward, torch.Tensor, torch.Tensor]:
    """Ask for one forward: ``logits = yield from call(...)``."""
    logits = yield Forward(ids, positions, cache, key_mask, rows)
    return logits


def drive(model: DiffusionLM, events: Generator) -> Iterator[BlockChunk]:
    """Run one run's events alone: every forward goes to the model, block chunks come out."""
    event = next(events, None)
    while event is not None:
        if isinstance(event, Forward):
            logits = model(event.ids, event.positions, cache=event.cache, key_mask=event.key_mask,
                           logits_rows=event.logits_rows)
            event = _send(events, logits)
        else:
            yield event
            event = next(events, None)


def _send(events: Generator, value: torch.Tensor):
    try:
        return events.send(value)
    except StopIteration:
        return None


SCHEDULED = ("steps", "threshold_topk", "sequential")
"""Commit rules whose per-step count k comes from the family's schedule."""


def _scheduled_select(cfg: DecodeConfig, conf: torch.Tensor, cand: torch.Tensor,
                      k: torch.Tensor) -> torch.Tensor:
    """The commits of a scheduled rule, given each row's count k for this step."""
    if cfg.unmask == "sequential":
        return policies.sequential_select(cand, k)
    if cfg.unmask == "threshold_topk":
        return policies.threshold_topk_select(conf, cand, cfg.threshold, k)
    return policies.top_k_select(conf, cand, k)


class Rows:
    """The batch rows still decoding the current block, with everything that is per row."""

    def __init__(self, run: Run, idx: torch.Tensor, kept: torch.Tensor) -> None:
        self.idx, self.order = idx, idx.tolist()
        self.x = run.x.index_select(0, idx)
        self.pos = run.positions.index_select(0, idx)[:, kept]
        self.keys = None if run.key_valid is None else run.key_valid.index_select(0, idx)[:, kept]
        self.gens = None if run.generators is None else [run.generators[i] for i in self.order]
        self.schedule: torch.Tensor | None = None
        self.cache: KVCache | None = None
        self.gen_start = torch.tensor([run.gen_start[i] for i in self.order], device=self.x.device)
        self.post: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.order)

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the rows that finished: only ``keep`` (indices into these rows) decode on."""
        self.idx, self.x, self.pos = self.idx[keep], self.x[keep], self.pos[keep]
        picked = keep.tolist()
        self.order = [self.order[i] for i in picked]
        self.keys = None if self.keys is None else self.keys[keep]
        self.gens = None if self.gens is None else [self.gens[i] for i in picked]
        self.schedule = None if self.schedule is None else self.schedule[keep]
        self.cache = None if self.cache is None else self.cache.select_rows(keep)
        self.gen_start = self.gen_start[keep]
        self.post = None if self.post is None else self.post[keep]


class Run:
    """State of one batched decode (built once, consumed by ``blocks``)."""

    def __init__(
        self, model: DiffusionLM, input_ids, cfg: DecodeConfig, attention_mask, seeds, cancelled=None
    ) -> None:
        self.model, self.cfg, self.traits = model, cfg, model.traits
        self.cancelled: Callable[[int], bool] | None = cancelled
        self.ids = model.token_ids(cfg.mask_id, cfg.eos_id)
        self.mask_id, self.eos_id = self.ids.mask, self.ids.eos
        if cfg.early_exit and self.eos_id is None:
            raise ValueError("eos_id: early_exit needs an EOS id; the checkpoint's config has none")
        self._check_config()
        rows = as_rows(input_ids, attention_mask)
        self._check(rows)
        self._layout(rows)
        self.done = torch.zeros(self.batch, dtype=torch.bool, device=self.x.device)
        self.row_nfe = [0] * self.batch
        self.tokens_fed = [0] * self.batch
        self.nfe = 0
        self.generators = self._generators(seeds)

    def _check_config(self) -> None:
        check_full_attention_config(self.cfg, self.model.family, self.traits.sampler)

    def _check(self, rows: list[list[int]]) -> None:
        """Refuse, before anything is allocated, prompts the model cannot take."""
        if not rows:
            raise ValueError("input_ids: empty batch")
        vocab = self.model.vocab_size
        for i, r in enumerate(rows):
            if not r:
                raise ValueError(f"input_ids: prompt {i} is empty")
            if min(r) < 0 or max(r) >= vocab:
                raise ValueError(f"input_ids: prompt {i} has ids outside the vocabulary [0, {vocab})")
        width, context = max(len(r) for r in rows), self.model.max_context
        if context is not None and width + self.cfg.gen_length > context:
            if width >= context:
                raise ValueError(f"input_ids: a prompt of {width} tokens leaves no room in the model's "
                                 f"context of {context} positions")
            raise ConfigError("gen_length", f"DecodeConfig.gen_length={self.cfg.gen_length}: the prompt "
                              f"({width} tokens) plus gen_length is more than the model's context of "
                              f"{context} positions")

    def _layout(self, rows: list[list[int]]) -> None:
        """Left-pad the prompts into one token matrix; positions count from each prompt's start."""
        dev = self.model.device
        self.batch = len(rows)
        self.lengths = [len(r) for r in rows]
        self.width = max(self.lengths)
        self.total = self.width + self.cfg.gen_length
        x = torch.full((self.batch, self.total), self.mask_id, dtype=torch.long)
        pad = torch.tensor([self.width - n for n in self.lengths])
        for i, r in enumerate(rows):
            x[i, : pad[i]] = self.ids.pad
            x[i, pad[i] : self.width] = torch.tensor(r, dtype=torch.long)
        self.x = x.to(dev)
        self.first, self.num_blocks = self.width, self.cfg.num_blocks
        self.row_blocks = [self.num_blocks] * self.batch
        self.gen_start = [self.width] * self.batch
        cols = torch.arange(self.total)
        self.positions = (cols[None, :] - pad[:, None]).clamp(min=0).to(dev)
        self.key_valid = (cols[None, :] >= pad[:, None]).to(dev) if int(pad.max()) > 0 else None

    def _generators(self, seeds) -> list[torch.Generator] | None:
        """One random stream per row (sampling or random remasking), so rows stay independent."""
        cfg = self.cfg
        if cfg.temperature == 0 and cfg.remasking != "random":
            return None
        if seeds is None:
            base = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
            seeds = [base + i for i in range(self.batch)]
        if len(seeds) != self.batch:
            raise ValueError(f"seeds: expected {self.batch} seeds, got {len(seeds)}")
        gens = []
        for s in seeds:
            g = torch.Generator(device=self.x.device)
            g.manual_seed(int(s))
            gens.append(g)
        return gens

    def events(self) -> Generator[Forward | BlockChunk, torch.Tensor, None]:
        """The whole decode: the forwards it needs, and each block as soon as it is final."""
        bs = self.cfg.block_length
        for c in range(self.num_blocks):
            start = self.first + c * bs
            end = start + bs
            yield from self._decode_block(c, start, end)
            self._exit_at_eos(start, end)
            done = [self.done[r].item() or c >= self.row_blocks[r] - 1 for r in range(self.batch)]
            starts = [bs if c >= self.row_blocks[r] else max(0, self.gen_start[r] - start)
                      for r in range(self.batch)]
            yield BlockChunk(c, start, end, self.x[:, start:end].clone(), done, self.nfe, starts)
            for r, d in enumerate(done):
                self.done[r] = self.done[r] or d
            if bool(self.done.all()):
                return

    def _exit_at_eos(self, start: int, end: int) -> None:
        """Early exit: rows whose finished block holds a generated EOS stop; the rest becomes EOS."""
        if not self.cfg.early_exit:
            return
        cols = torch.arange(start, end, device=self.x.device)
        gen = cols[None, :] >= torch.tensor(self.gen_start, device=self.x.device)[:, None]
        hit = ((self.x[:, start:end] == self.eos_id) & gen).any(-1) & ~self.done
        if hit.any():
            self.x[hit, end:] = self.eos_id
            self.done |= hit

    def _decode_block(self, c: int, s: int, e: int) -> Steps:
        """Decode block [s, e) of every row that still has masks in it, within its step bound."""
        cfg = self.cfg
        kept = kept_columns(e, self.total, cfg.window, cfg.tail_keep, self.x.device)
        act = torch.nonzero(~self.done & (self.x[:, s:e] == self.mask_id).any(-1)).flatten()
        if act.numel() == 0:
            return
        rows = Rows(self, act, kept)
        if cfg.unmask in SCHEDULED and self.traits.schedule == "even":
            masks = (rows.x[:, s:e] == self.mask_id).sum(-1)
            rows.schedule = policies.even_schedule(masks, cfg.steps_per_block)
        mode = MODES[cfg.cache]
        bound = cfg.max_block_steps
        for step in range(bound):
            feed = mode.feed(step, s, e, kept.numel())
            logits, scored, cand, ratio = yield from self._forward(rows, mode, feed, kept, step, s, e)
            commit, x0 = self._commit(logits, scored, cand, ratio, step, rows)
            if step == bound - 1:
                commit = cand  # the step bound: the block ends whatever the logits say
            block = rows.x[:, s:e]
            rows.x[:, s:e] = torch.where(commit, x0, block)
            self.x.index_copy_(0, rows.idx, rows.x)
            if not self._continue(rows, s, e):
                return

    def _forward(self, rows: Rows, mode: CacheMode, feed: Feed, kept: torch.Tensor, step: int, s: int,
                 e: int) -> Generator[Forward, torch.Tensor,
                                      tuple[torch.Tensor, Scored | None, torch.Tensor, torch.Tensor | None]]:
        """Run one forward for ``rows``: (logits of the needed block positions, their scores when
        greedy, candidates, r_mask: the share of masks left, which only the dynamic rule reads).

        Greedy decoding needs logits only where the block is still masked, so the LM head runs
        on those rows alone; sampling draws noise for every block position, so it gets them all.
        """
        if mode.uses_cache and step == 0:
            rows.cache = self.model.new_cache()
        mode.prepare(rows.cache, step, s, e, kept.numel())
        ids = rows.x[:, kept[feed.lo : feed.hi]]
        cand = rows.x[:, s:e] == self.mask_id
        src = logit_rows(feed, e - s, self.traits.logit_shift, ids.device)
        if self._sampling:
            b = torch.arange(len(rows), device=ids.device).repeat_interleave(e - s)
            want = (b, src.repeat(len(rows)))
        else:
            b, j = cand.nonzero(as_tuple=True)
            want = (b, src[j])
        fwd = Forward(ids, rows.pos[:, feed.lo : feed.hi], rows.cache, rows.keys, want, self._scoring(e - s),
                      rows.gens)
        logits = yield fwd
        if fwd.scoring is not None and fwd.scored is None:  # run alone (``drive``): scored here
            score_forwards([fwd], [logits])
        scored = fwd.scored
        if self._sampling:
            logits = logits.view(len(rows), e - s, -1)
        self.nfe += 1
        for i in rows.order:
            self.row_nfe[i] += 1
            self.tokens_fed[i] += ids.shape[1]
        if self.cfg.unmask != "dynamic":
            return logits, scored, cand, None
        masked = (ids[:, s - feed.lo :] == self.mask_id).sum(-1)
        return logits, scored, cand, masked.to(torch.float64) / (kept.numel() - s)

    @property
    def _sampling(self) -> bool:
        return self.cfg.temperature > 0 or self.cfg.remasking == "random"

    def _scoring(self, block: int) -> Scoring | None:
        """What this forward's logits rows are scored by; None for random remasking (a second
        draw per row, scored in ``_scores``)."""
        cfg, dtype = self.cfg, self.traits.confidence_dtype
        if not self._sampling:
            return Scoring(cfg.remasking, dtype, self.mask_id)
        if cfg.remasking == "random":
            return None
        return Scoring(cfg.remasking, dtype, self.mask_id, float(cfg.temperature), block)

    def _continue(self, rows: Rows, s: int, e: int) -> bool:
        """Drop rows whose block is done (or whose request was cancelled); any left?"""
        still = (rows.x[:, s:e] == self.mask_id).any(-1)
        if self.cancelled is not None:
            gone = [j for j, row in enumerate(rows.order) if self.cancelled(row)]
            if gone:
                self.done[rows.idx[gone]] = True
                still[gone] = False
        if self.cfg.early_exit and self.cfg.early_exit_at == "eos":
            still &= ~self._stop_at_eos(rows, e)
        left = int(still.sum())
        if left == 0:
            return False
        if left < len(rows):
            rows.keep(torch.nonzero(still).flatten())
        return True

    def _stop_at_eos(self, rows: Rows, e: int) -> torch.Tensor:
        """``early_exit_at="eos"``: rows whose first EOS has no mask before it stop now, and what
        is still masked in them becomes EOS (the answer before that EOS is already final)."""
        stop = eos_reached(rows.x, rows.gen_start, e, self.eos_id, self.mask_id)
        if bool(stop.any()):
            idx = rows.idx[stop]
            tail = rows.x[stop]
            tail = torch.where(tail == self.mask_id, torch.full_like(tail, self.eos_id), tail)
            rows.x[stop] = tail
            self.x.index_copy_(0, idx, tail)
            self.done[idx] = True
        return stop

    def _commit(self, logits: torch.Tensor, scored: Scored | None, cand: torch.Tensor,
                ratio: torch.Tensor | None, step: int, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Which block positions to commit this step, and with which tokens."""
        cfg, traits = self.cfg, self.traits
        x0, conf = self._scores(logits, scored, cand, rows.gens)
        if step == 0 and cfg.cache != "none" and traits.first_token_at_block_start:
            first = torch.zeros_like(cand)
            first[:, 0] = True
            return first & cand, x0
        if cfg.unmask in SCHEDULED:
            n = cand.sum(-1)
            if rows.schedule is not None:
                k = rows.schedule[:, step] if step < rows.schedule.shape[1] else n
            else:
                k = policies.linspace_count(n, step, cfg.steps_per_block, traits.schedule_eps)
            return _scheduled_select(cfg, conf, cand, torch.minimum(k, n)), x0
        if cfg.unmask == "factor":
            return policies.factor_select(conf, cand, cfg.factor), x0
        if cfg.unmask == "dynamic":
            thr = policies.dynamic_threshold(cfg.threshold, cfg.alpha, ratio)
        else:
            thr = torch.full((len(rows),), cfg.threshold, dtype=torch.float64, device=cand.device)
        return policies.threshold_select(conf, cand, thr), x0

    def _scores(self, logits: torch.Tensor, scored: Scored | None, cand: torch.Tensor,
                gens) -> tuple[torch.Tensor, torch.Tensor]:
        """Token choice (never the mask id) and confidence of every candidate; -inf elsewhere.
        The forward's rows come scored (``score_forwards``), except under random remasking."""
        cfg, dtype = self.cfg, self.traits.confidence_dtype
        if self._sampling:
            if scored is None:  # random remasking; row-wise draws keep a row's stream its own
                scored = policies.choose_tokens(logits, cfg.remasking, cfg.temperature, dtype, gens,
                                                exclude=self.mask_id)
            tok, sc = scored
            return tok, sc.to(torch.float64).masked_fill(~cand, policies.NEG_INF)
        x0 = torch.zeros(cand.shape, dtype=torch.long, device=cand.device).masked_scatter_(cand, scored[0])
        conf = torch.full(cand.shape, policies.NEG_INF, dtype=torch.float64, device=cand.device)
        return x0, conf.masked_scatter_(cand, scored[1].to(torch.float64))


