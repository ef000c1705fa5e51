"""Every reference fixture case replayed through sd.generate: same tokens, same forwards."""

from __future__ import annotations

import functools
from collections import defaultdict

import pytest
import torch
from fixture_cases import GROUP_NAMES, USELESS_FORWARD_METHODS, config_for, load_cases, need_fixtures

import streaming_dllm as sd


@functools.cache
def _groups(arch: str) -> dict[str, list[dict]]:
    """The fixture cases of ``arch`` by group, read on first use (collection needs no fixtures)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for case in load_cases(arch):
        groups[f"{case['method']}-g{case['gen_length']}"].append(case)
    return groups


PARAMS = [(arch, name) for arch, names in GROUP_NAMES.items() for name in names]


@pytest.mark.parametrize("arch", sorted(GROUP_NAMES))
def test_fixtures_hold_the_known_groups(arch):
    need_fixtures()
    assert sorted(_groups(arch)) == GROUP_NAMES[arch]


def _blocks_completed_at_start(model, input_ids, cfg) -> int:
    """Blocks whose first (cache-building) forward already filled them (nfe delta of 1)."""
    count, last = 0, 0
    for chunk in sd.stream(model, input_ids, cfg):
        count += chunk.nfe - last == 1
        last = chunk.nfe
    return count


@pytest.mark.parametrize("arch,group", PARAMS, ids=[f"{a}-{g}" for a, g in PARAMS])
def test_reference_case_group(tiny_models, arch, group):
    model = tiny_models[arch]
    cases = _groups(arch)[group]
    replayed = 0
    for case in cases:
        assert not case["flags"], f"{case['case_id']} is flagged as fragile"
        cfg = config_for(case)
        if cfg is None:
            continue
        ids = torch.tensor([case["input_ids"]])
        out = sd.generate(model, ids, cfg)
        assert out.sequences[0].tolist() == case["output_ids"], case["case_id"]
        expected_nfe = case["nfe"]
        if arch == "llada" and case["method"] in USELESS_FORWARD_METHODS:
            expected_nfe -= _blocks_completed_at_start(model, ids, cfg)
        assert out.nfe == expected_nfe, f"{case['case_id']}: nfe {out.nfe} != {expected_nfe}"
        replayed += 1
    if arch == "dream" and group.startswith("parallel-threshold"):
        assert replayed == 0
    else:
        assert replayed == len(cases) == 12
