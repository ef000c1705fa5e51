"""Commit rules, schedules and suffix pruning on hand-made inputs."""

from __future__ import annotations

import torch

from streaming_dllm.engine import policies
from streaming_dllm.engine.suffix import kept_columns


def test_threshold_commits_confident_ones_and_always_the_best():
    conf = torch.tensor([[0.95, 0.5, 0.9, 0.99], [0.2, 0.3, 0.1, 0.4]], dtype=torch.float64)
    cand = torch.tensor([[True, True, True, False], [True, True, True, True]])
    sel = policies.threshold_select(conf, cand, torch.tensor([0.9, 0.9], dtype=torch.float64))
    # Row 0: 0.99 is not a candidate; 0.95 and 0.9 (>=) pass. Row 1: nobody passes -> the best.
    assert sel.tolist() == [[True, False, True, False], [False, False, False, True]]


def test_threshold_compares_in_confidence_dtype():
    conf = torch.tensor([[0.9]], dtype=torch.float32)  # float32(0.9) < 0.9 in float64
    cand = torch.tensor([[True, True]])
    conf = torch.cat([conf, torch.tensor([[0.95]])], dim=1)
    sel = policies.threshold_select(conf, cand, torch.tensor([0.9], dtype=torch.float64))
    assert sel.tolist() == [[True, True]]


def test_dynamic_threshold_follows_mask_ratio():
    r = torch.tensor([1.0, 0.5, 0.0])
    got = policies.dynamic_threshold(0.9, 0.3, r)
    assert torch.allclose(got, torch.tensor([0.9, 0.9 * 0.85, 0.9 * 0.7], dtype=torch.float64))
    assert torch.equal(policies.dynamic_threshold(0.9, 0.0, r), torch.full((3,), 0.9, dtype=torch.float64))


def test_factor_rule_and_its_off_by_one():
    cand = torch.ones(1, 4, dtype=torch.bool)
    # bounds for f=1: j=1 always passes, j=2 -> 2/3, j=3 -> 3/4, j=4 -> 4/5
    stop_at_two = torch.tensor([[0.9, 0.7, 0.5, 0.1]], dtype=torch.float64)
    assert policies.factor_select(stop_at_two, cand, 1.0).sum().item() == 2
    only_last_fails = torch.tensor([[0.99, 0.9, 0.8, 0.1]], dtype=torch.float64)
    assert policies.factor_select(only_last_fails, cand, 1.0).sum().item() == 4
    first_low = torch.tensor([[0.3, 0.2, 0.1, 0.05]], dtype=torch.float64)
    assert policies.factor_select(first_low, cand, 1.0).tolist() == [[True, False, False, False]]


def test_top_k_select_per_row_counts():
    conf = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    cand = torch.tensor([[True, True, True, True], [False, True, True, True]])
    sel = policies.top_k_select(conf, cand, torch.tensor([2, 1]))
    assert sel.tolist() == [[False, True, False, True], [False, True, False, False]]
    assert policies.top_k_select(conf, cand, torch.tensor([0, 0])).sum().item() == 0


def test_even_schedule_spreads_remainder_first():
    sched = policies.even_schedule(torch.tensor([10, 4, 0]), 4)
    assert sched.tolist() == [[3, 3, 2, 2], [1, 1, 1, 1], [0, 0, 0, 0]]


def test_linspace_schedule_matches_dream_arithmetic():
    n = torch.tensor([16])
    steps = 16
    t = torch.linspace(1, 1e-3, steps + 1, dtype=torch.float32)
    for i in range(steps - 1):
        expected = int(torch.tensor(16.0) * (1 - t[i + 1] / t[i]))
        assert policies.linspace_count(n, i, steps, 1e-3).item() == expected
    assert policies.linspace_count(n, 0, steps, 1e-3).item() == 0  # first step commits nothing
    assert policies.linspace_count(torch.tensor([5]), steps - 1, steps, 1e-3).item() == 5


def test_scores_low_confidence_entropy_margin():
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    x0, conf = policies.choose_tokens(logits, "low_confidence", 0.0, torch.float64)
    p = torch.softmax(logits.double(), -1)
    assert x0.tolist() == [[0, 2]]
    assert torch.allclose(conf, p.max(-1).values)
    _, ent = policies.choose_tokens(logits, "entropy", 0.0, torch.float32)
    assert torch.allclose(ent, (p * torch.log(p + 1e-10)).sum(-1).float())
    _, margin = policies.choose_tokens(logits, "margin", 0.0, torch.float64)
    top = p.topk(2, -1).values
    assert torch.allclose(margin, top[..., 0] - top[..., 1])


def test_gumbel_sampling_is_seeded_per_row():
    logits = torch.zeros(2, 3, 50)

    def draw(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return policies.choose_tokens(logits, "low_confidence", 1.0, torch.float64, gens)[0]

    a, b = draw([1, 2]), draw([1, 3])
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])


def test_kept_columns_window_and_tail():
    cols = kept_columns(block_end=40, total=72, window=16, tail_keep=1)
    assert cols.tolist() == list(range(56)) + [71]
    assert kept_columns(40, 72, None, 1).tolist() == list(range(72))
    assert kept_columns(40, 50, 16, 1).tolist() == list(range(50))  # <= W positions follow
    assert kept_columns(40, 72, 0, 2).tolist() == list(range(40)) + [70, 71]


def _forward(rows: int, scoring):
    from streaming_dllm.engine.run import Forward

    empty = torch.zeros(0, dtype=torch.long)
    return Forward(torch.zeros(1, rows, dtype=torch.long), torch.zeros(1, rows, dtype=torch.long), None, None,
                   (empty, empty), scoring)


def test_scoring_many_forwards_at_once_equals_scoring_each_alone():
    """The scheduler scores every greedy forward of a step in one call per kind of scoring; each
    forward's tokens and confidences must be bit for bit those it gets scored alone."""
    from streaming_dllm.engine.run import Scoring, score_forwards

    g = torch.Generator().manual_seed(0)
    kinds = [Scoring("low_confidence", torch.float64, 3), Scoring("entropy", torch.float32, 3),
             Scoring("margin", torch.float64, None), None]
    sizes = [1, 5, 3, 16, 2, 7, 1, 4]
    logits = [torch.randn(n, 50, generator=g) * 4 for n in sizes]
    logits[1][:, 3] = 99.0  # the excluded id is the argmax: never chosen
    together = [_forward(n, kinds[i % len(kinds)]) for i, n in enumerate(sizes)]
    score_forwards(together, [t.clone() for t in logits])
    for i, (f, lg) in enumerate(zip(together, logits, strict=True)):
        alone = _forward(sizes[i], f.scoring)
        score_forwards([alone], [lg.clone()])
        if f.scoring is None:
            assert f.scored is None and alone.scored is None
            continue
        assert torch.equal(f.scored[0], alone.scored[0]) and torch.equal(f.scored[1], alone.scored[1])
        tok, sc = policies.choose_tokens(lg[None].clone(), f.scoring.remasking, 0.0, f.scoring.dtype, None,
                                         exclude=f.scoring.exclude)
        assert torch.equal(f.scored[0], tok[0]) and torch.equal(f.scored[1], sc[0])
        if f.scoring.exclude is not None:
            assert not (f.scored[0] == f.scoring.exclude).any()


def test_sampled_scoring_together_equals_each_alone():
    """Sampling forwards of one temperature and block are scored together too: each row still draws
    its noise from its own generator, so its tokens and confidences are those it gets alone."""
    from streaming_dllm.engine.run import Scoring, score_forwards

    block, vocab = 4, 30
    kind = Scoring("low_confidence", torch.float64, 2, 0.7, block)
    other = Scoring("margin", torch.float32, 2, 1.3, block)
    rows = [1, 3, 2, 1]
    kinds = [kind, kind, other, kind]
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(n * block, vocab, generator=g) * 3 for n in rows]

    def gens(i: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(100 * i + r) for r in range(rows[i])]

    together = [_forward(n * block, k) for n, k in zip(rows, kinds, strict=True)]
    for i, f in enumerate(together):
        f.generators = gens(i)
    score_forwards(together, [t.clone() for t in logits])
    for i, f in enumerate(together):
        alone = _forward(rows[i] * block, f.scoring)
        alone.generators = gens(i)
        score_forwards([alone], [logits[i].clone()])
        assert f.scored[0].shape == (rows[i], block)
        assert torch.equal(f.scored[0], alone.scored[0]) and torch.equal(f.scored[1], alone.scored[1])
        tok, sc = policies.choose_tokens(logits[i].view(rows[i], block, vocab), f.scoring.remasking,
                                         f.scoring.temperature, f.scoring.dtype, gens(i), exclude=2)
        assert torch.equal(f.scored[0], tok) and torch.equal(f.scored[1], sc)
        assert not (f.scored[0] == 2).any()
