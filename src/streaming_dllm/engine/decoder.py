"""The public decoding entry points: ``generate`` (a whole batch) and ``stream`` (block by block).

Both run one ``Run``: the block-wise loop behind every method (``run.py``), with the
block-causal parts (``causal_run.py``) for block-diffusion families. A method is a
``DecodeConfig``; the loop never branches on a method's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..config import DecodeConfig
from ..models.base import DiffusionLM
from .causal_run import CausalRun
from .run import BlockChunk, Run, drive

__all__ = ["BlockChunk", "GenerateOutput", "generate", "stream"]


@dataclass
class GenerateOutput:
    """Result of ``generate``: ``sequences`` holds the left-padded prompts and what was decoded.

    Row r's generation starts at column ``gen_start[r]`` (``prompt_width`` for every row of a
    full-attention family; per row for a block-causal one, whose prompts are padded by blocks).
    """

    sequences: torch.Tensor
    nfe: int
    row_nfe: list[int]
    tokens_fed: list[int]
    prompt_lengths: list[int]
    prompt_width: int
    config: DecodeConfig = field(repr=False)
    gen_start: list[int] = field(default_factory=list)
    decoded_end: list[int] = field(default_factory=list)

    def generated(self, row: int) -> list[int]:
        """The generated ids of one row (gen_length of them, fewer where a block-causal row's
        blocks hold fewer)."""
        start = self.gen_start[row]
        stop = min(start + self.config.gen_length, self.decoded_end[row])
        return self.sequences[row, start:stop].tolist()

    def decoded(self, row: int) -> list[int]:
        """Every position decoded after the prompt: with a block-causal family, up to the end of
        the row's last block (past gen_length where the prompt ended inside a block)."""
        return self.sequences[row, self.gen_start[row] : self.decoded_end[row]].tolist()

    def prompt(self, row: int) -> list[int]:
        start = self.gen_start[row]
        return self.sequences[row, start - self.prompt_lengths[row] : start].tolist()


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
    Between blocks the caller's code runs outside inference mode.
    """
    yield from _blocks(start_run(model, input_ids, config, attention_mask, seeds, cancelled))


@torch.inference_mode()
def _blocks(run: Run) -> Iterator[BlockChunk]:
    # The decorator form re-enters inference mode at each resume and leaves it at each yield.
    yield from drive(run.model, run.events())


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
    run = start_run(model, input_ids, config, attention_mask, seeds)
    for _ in _blocks(run):
        pass
    return output_of(run)


def output_of(run: Run) -> GenerateOutput:
    """The result of a finished run."""
    config = run.cfg
    return GenerateOutput(
        sequences=run.x,
        nfe=run.nfe,
        row_nfe=run.row_nfe,
        tokens_fed=run.tokens_fed,
        prompt_lengths=run.lengths,
        prompt_width=run.width,
        config=config,
        gen_start=list(run.gen_start),
        decoded_end=[run.first + n * config.block_length for n in run.row_blocks],
    )


def start_run(model: DiffusionLM, input_ids, config: DecodeConfig, attention_mask, seeds,
              cancelled=None) -> Run:
    """The run for the model's attention: full attention, or block-causal parts."""
    if model.traits.block_causal:
        return CausalRun(model, input_ids, config, attention_mask, seeds, cancelled)
    return Run(model, input_ids, config, attention_mask, seeds, cancelled)
