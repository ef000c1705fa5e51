"""``CausalRun``: the block loop of ``Run`` with the block-causal parts (see ``block_causal``).

Per block: the first forward feeds the block (with the previous, now finished block folded in
for unshifted families, or the prompt's full blocks for the first block) and later steps feed the
block, or only the current sub-block under ``cache="dual"``. ``cache="none"`` recomputes every
column up to the block's end at every step, as LLaDA2's own decoder does.
"""

from __future__ import annotations

import copy

import torch

from ..kv_cache import KVCache
from . import policies
from .block_causal import causal_layout, causal_mask, check_causal_config, current_sub_block
from .run import SCHEDULED, Rows, Run, Steps, _scheduled_select, call


def _subset(rows: Rows, idx: torch.Tensor) -> Rows:
    """An independent copy of some of the rows (its own token rows and cache copy)."""
    part = copy.copy(rows)
    part.keep(idx)
    return part


class CausalRun(Run):
    """A ``Run`` for a block-causal family: one cache for the whole sequence, block after block."""

    def _check_config(self) -> None:
        check_causal_config(self.cfg)
        self.cache: KVCache | None = None
        self.fold = not self.traits.logit_shift
        self.sub = self.cfg.sub_block_length or self.cfg.block_length

    def _layout(self, rows: list[list[int]]) -> None:
        dev = self.model.device
        lay = causal_layout([len(r) for r in rows], self.cfg)
        self.batch, self.lengths = len(rows), [len(r) for r in rows]
        self.width, self.total, self.first = lay.first, lay.total, lay.first
        self.num_blocks, self.row_blocks, self.gen_start = lay.num_blocks, lay.row_blocks, lay.gen_start
        x = torch.full((self.batch, self.total), self.mask_id, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : lay.pads[i]] = self.ids.pad
            x[i, lay.pads[i] : lay.gen_start[i]] = torch.tensor(r, dtype=torch.long)
        self.x = x.to(dev)
        pad = torch.tensor(lay.pads)
        cols = torch.arange(self.total)
        self.positions = (cols[None, :] - pad[:, None]).clamp(min=0).to(dev)
        self.key_valid = (cols[None, :] >= pad[:, None]).to(dev) if int(pad.max()) > 0 else None

    @property
    def _sampling(self) -> bool:
        return self.cfg.temperature > 0

    # ------------------------------------------------------------------ one block
    def _decode_block(self, c: int, s: int, e: int) -> Steps:
        act = torch.nonzero(~self.done & (self.x[:, s:e] == self.mask_id).any(-1)).flatten()
        if act.numel() == 0:
            return
        rows = Rows(self, act, torch.arange(e, device=self.x.device))
        rows.cache = self._block_cache(act)
        rows.post = torch.zeros(len(rows), dtype=torch.long, device=self.x.device)
        if self.cfg.unmask in SCHEDULED:
            rows.schedule = policies.block_schedule(len(rows), self.cfg.block_length,
                                                    self.cfg.steps_per_block, self.x.device)
        if c == 0 and not self.fold and self.first > 0 and self.cfg.cache != "none":
            yield from self._prefill(rows)
        for step in range(self.cfg.max_block_steps):
            going = yield from self._step(rows, c, step, s, e, last=step == self.cfg.max_block_steps - 1)
            if not going:
                break
        if not self.fold and c + 1 < self.num_blocks:
            yield from self._commit_block(c, s, e)

    def _block_cache(self, act: torch.Tensor) -> KVCache | None:
        """The sequence cache for this block's rows (a row copy when some rows have stopped)."""
        if self.cfg.cache == "none":
            return None
        if self.cache is None:
            self.cache = self.model.new_cache()
            return self.cache
        return self.cache if act.numel() == self.batch else self.cache.select_rows(act)

    def _keep_written(self, rows: Rows, lo: int, hi: int) -> None:
        """A row copy's newly written finished-block slots go back into the sequence cache."""
        if rows.cache is not None and rows.cache is not self.cache and self.cache is not None:
            self.cache.put_rows(rows.idx, rows.cache, lo, hi)

    def _step(self, rows: Rows, c: int, step: int, s: int, e: int, last: bool):
        """One forward and its commits; False when no row of the block is left."""
        masked = rows.x[:, s:e] == self.mask_id
        had = masked.any(-1)
        if self.cfg.edit_threshold is not None:
            rows.post += (~had).long()
            over = rows.post > self.cfg.max_post_steps
            if not self._drop(rows, ~over):
                return False
            masked, had = masked[~over], had[~over]
        cols = self._positions(rows, masked, s)
        edited = torch.zeros(len(rows), dtype=torch.bool, device=cols.device)
        for idx, sub_only in self._groups(rows, step, cols):
            part = rows if idx is None else _subset(rows, idx)
            pc = cols if idx is None else cols[idx]
            lo, hi, mask = self._feed(part, c, step, s, e, pc, sub_only)
            logits = yield from self._forward_cols(part, lo, hi, mask, pc)
            if lo < s and self.fold:
                self._keep_written(part, lo, s)
            done = self._commit_step(part, logits, pc, masked if idx is None else masked[idx], step, last)
            if idx is None:
                edited = done
            else:
                edited[idx] = done
                rows.x[idx] = part.x
                rows.cache.put_rows(idx, part.cache, s, e)
        left = (rows.x[:, s:e] == self.mask_id).any(-1)
        if self.cfg.edit_threshold is not None:
            left = had | edited  # LLaDA2.1: a block ends at a forward that neither unmasks nor edits
        if self.cfg.early_exit and self.cfg.early_exit_at == "eos":
            left = left & ~self._stop_at_eos(rows, e)
        return self._drop(rows, left)

    def _drop(self, rows: Rows, keep: torch.Tensor) -> bool:
        if self.cancelled is not None:
            gone = [j for j, row in enumerate(rows.order) if self.cancelled(row)]
            for j in gone:
                self.done[rows.idx[j]] = True
                keep[j] = False
        if not bool(keep.any()):
            return False
        if not bool(keep.all()):
            rows.keep(torch.nonzero(keep).flatten())
        return True

    # ------------------------------------------------------------------ what a forward feeds
    def _positions(self, rows: Rows, masked: torch.Tensor, s: int) -> torch.Tensor:
        """Columns [R, sub] whose logits this step needs: each row's current sub-block."""
        sub = self.sub
        if sub < self.cfg.block_length:
            first = current_sub_block(masked, sub)
        else:
            first = torch.zeros_like(rows.gen_start)
        return s + first[:, None] * sub + torch.arange(sub, device=masked.device)[None, :]

    def _groups(self, rows: Rows, step: int, cols: torch.Tensor) -> list[tuple[torch.Tensor | None, bool]]:
        """Rows that share this step's forward: under the dual cache a row whose current sub-block
        starts decoded feeds only that sub-block, the others the whole block (Fast-dLLM v2's
        block cache), so rows in different states get forwards of their own and each row's
        tokens are its solo tokens."""
        if self.cfg.cache != "dual" or self.sub == self.cfg.block_length or step == 0:
            return [(None, False)]
        head = rows.x.gather(1, cols[:, :1]).squeeze(1)
        key = torch.where(head == self.mask_id, torch.full_like(head, -1), cols[:, 0])
        kinds = key.unique()
        if kinds.numel() == 1:
            return [(None, bool(kinds.item() >= 0))]
        return [(torch.nonzero(key == k).flatten(), bool(k.item() >= 0)) for k in kinds]

    def _feed(self, rows: Rows, c: int, step: int, s: int, e: int, cols: torch.Tensor, sub_only: bool):
        """(lo, hi, key mask) of this step's forward, with the cache told what the forward does."""
        bs = self.cfg.block_length
        if self.cfg.cache == "none":
            return 0, e, self._mask(rows, 0, e)
        if step == 0:
            lo = (0 if c == 0 else s - bs) if self.fold else s
            if lo == 0:
                rows.cache.store(capacity=self.total)
            else:
                rows.cache.crop(lo)
                rows.cache.attend()
            return lo, e, self._mask(rows, lo, e)
        if sub_only:
            sub_lo = int(cols[0, 0].item())
            rows.cache.overwrite(sub_lo, sub_lo + self.sub, visible=e)
            return sub_lo, sub_lo + self.sub, self._mask(rows, sub_lo, e, square=False)
        rows.cache.crop(s)
        rows.cache.attend()
        return s, e, self._mask(rows, s, e)

    def _mask(self, rows: Rows, lo: int, hi: int, square: bool = True) -> torch.Tensor | None:
        """Block-causal mask when the feed spans blocks, else the padding mask (or none)."""
        if square and hi - lo > self.cfg.block_length:
            return causal_mask(rows.keys, lo, hi, self.cfg.block_length, len(rows), self.x.device)
        return None if rows.keys is None else rows.keys[:, :hi]

    def _forward_cols(self, rows: Rows, lo: int, hi: int, mask, cols: torch.Tensor):
        """Logits [R, sub, V] predicting ``cols`` (a shifted family reads the row before)."""
        src = cols - lo
        if self.traits.logit_shift:
            src = (src - 1).clamp(min=0)
        b = torch.arange(len(rows), device=cols.device).repeat_interleave(cols.shape[1])
        logits = yield from call(rows.x[:, lo:hi], rows.pos[:, lo:hi], rows.cache, mask, (b, src.flatten()))
        self._count(rows, hi - lo)
        return logits.view(len(rows), cols.shape[1], -1)

    def _count(self, rows: Rows, fed: int) -> None:
        self.nfe += 1
        for i in rows.order:
            self.row_nfe[i] += 1
            self.tokens_fed[i] += fed

    # ------------------------------------------------------------------ commits
    def _commit_step(self, rows: Rows, logits: torch.Tensor, cols: torch.Tensor, masked: torch.Tensor,
                     step: int, last: bool) -> torch.Tensor:
        """Commit this step's tokens into the rows (and the run); returns the rows that edited."""
        cur = rows.x.gather(1, cols)
        cand = cur == self.mask_id
        x0, conf = self._choose(logits, rows, cand)
        commit = cand if last else self._rule(conf, cand, masked, rows, step)
        edited = torch.zeros(len(rows), dtype=torch.bool, device=cols.device)
        if self.cfg.edit_threshold is not None:
            gen = cols >= rows.gen_start[:, None]
            sure = conf > torch.tensor(self.cfg.edit_threshold, dtype=conf.dtype)
            edit = ~cand & gen & (x0 != cur) & sure
            commit = commit | edit
            edited = edit.any(-1)
        new = torch.where(commit, x0, cur)
        rows.x.scatter_(1, cols, new)
        self.x.index_copy_(0, rows.idx, rows.x)
        return edited

    def _choose(self, logits: torch.Tensor, rows: Rows, cand: torch.Tensor):
        """(token, confidence) of every fed position; greedy never picks the mask id."""
        cfg, traits = self.cfg, self.traits
        if traits.sampler == "gumbel":
            tok, sc = policies.choose_tokens(logits, cfg.remasking, cfg.temperature, traits.confidence_dtype,
                                             rows.gens, exclude=self.mask_id)
            return tok, sc
        probs = policies.filtered_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p,
                                        traits.confidence_dtype,
                                        renormalise=traits.sampler == "multinomial_renorm")
        if cfg.temperature == 0:
            tok = policies._argmax_except(probs, self.mask_id)
        else:
            tok = policies.sample_multinomial(probs, cfg.temperature, rows.gens)
        return tok, probs.gather(-1, tok.unsqueeze(-1)).squeeze(-1)

    def _rule(self, conf: torch.Tensor, cand: torch.Tensor, masked: torch.Tensor, rows: Rows,
              step: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.unmask in SCHEDULED:
            sched = rows.schedule
            k = sched[:, min(step, sched.shape[1] - 1)]
            return _scheduled_select(cfg, conf, cand, torch.minimum(k, cand.sum(-1)))
        ratio = masked.sum(-1).to(torch.float64) / cfg.block_length
        if cfg.unmask == "dynamic":
            thr = policies.dynamic_threshold(cfg.threshold, cfg.alpha, ratio)
        else:
            thr = torch.full_like(ratio, cfg.threshold)
        return policies.threshold_select(conf.to(torch.float64), cand, thr)

    # ------------------------------------------------------------------ around the blocks
    def _prefill(self, rows: Rows) -> Steps:
        """A shifted family stores the prompt's full blocks first; a row whose prompt fills them
        gets its first token from their last row (argmax), as Fast-dLLM v2 does."""
        first = self.first
        rows.cache.store(capacity=self.total)
        mask = causal_mask(rows.keys, 0, first, self.cfg.block_length, len(rows), self.x.device)
        b = torch.arange(len(rows), device=self.x.device)
        last = torch.full_like(b, first - 1)
        logits = yield from call(rows.x[:, :first], rows.pos[:, :first], rows.cache, mask, (b, last))
        self._count(rows, first)
        self._keep_written(rows, 0, first)
        self._next_token(rows, logits, first)

    def _commit_block(self, c: int, s: int, e: int) -> Steps:
        """A shifted family writes the finished block's K/V with a forward of its own, whose last
        row gives the next block's first token."""
        act = torch.nonzero(~self.done & torch.tensor([c + 1 < n for n in self.row_blocks],
                                                      device=self.x.device)).flatten()
        if act.numel() == 0:
            return
        rows = Rows(self, act, torch.arange(e, device=self.x.device))
        rows.cache = self._block_cache(act)
        b = torch.arange(len(rows), device=self.x.device)
        if rows.cache is None:
            lo, mask = 0, self._mask(rows, 0, e)
        else:
            lo, mask = s, self._mask(rows, s, e)
            rows.cache.crop(s)
            rows.cache.attend()
        logits = yield from call(rows.x[:, lo:e], rows.pos[:, lo:e], rows.cache, mask,
                                 (b, torch.full_like(b, e - 1 - lo)))
        self._count(rows, e - lo)
        self._keep_written(rows, s, e)
        self._next_token(rows, logits, e)

    def _next_token(self, rows: Rows, logits: torch.Tensor, col: int) -> None:
        """Rows whose generation starts at ``col`` or before take the argmax there."""
        take = rows.gen_start <= col
        if not bool(take.any()):
            return
        rows.x[take, col] = logits[take].argmax(-1)
        self.x.index_copy_(0, rows.idx, rows.x)
