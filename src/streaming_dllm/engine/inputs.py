"""Prompts as the engine takes them: a [B, L] tensor (with a left-padded attention mask), a list of
id lists of different lengths, or a tokenizer's encoding; all become lists of ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def _ids_of(row) -> list[int]:
    """One prompt's ids from a tensor, a list of ints or a tokenizer's encoding."""
    if isinstance(row, Mapping):
        row = row["input_ids"]
    if isinstance(row, torch.Tensor):
        return row.tolist()
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
        raise ValueError("input_ids: each prompt must be a sequence of integer token ids")
    return list(row)


def as_rows(input_ids, attention_mask) -> list[list[int]]:
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
