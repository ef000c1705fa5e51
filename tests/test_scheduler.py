"""Continuous batching: every request's tokens equal its solo tokens, whatever runs beside it.

Requests with random presets, knobs, lengths, row counts and seeds are submitted at random
steps into one ``Scheduler``; each answer (tokens and forward count) must equal
``generate(model, prompts, config, seeds)`` run alone. On this CPU the batched, padded forward
gives bit-identical logits per row, so the check is exact (no tolerance).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import streaming_dllm as sd
from streaming_dllm.engine.scheduler import QueueFull, Scheduler

FULL = ("vanilla", "prefix-cache", "fast-dllm", "fast-dllm-dual", "streaming", "streaming-dual")
BD = ("sdar", "fast-dllm-v2", "llada2", "llada2.1", "streaming", "fast-dllm")
BD_DIR = Path(__file__).parent / "fixtures"


def _full_config(rng: random.Random) -> sd.DecodeConfig:
    block = rng.choice([8, 16])
    gen = block * rng.choice([1, 2, 3])
    cfg = sd.DecodeConfig.preset(rng.choice(FULL), gen_length=gen, block_length=block)
    changes = {}
    if cfg.window is not None:
        changes["window"] = rng.choice([8, 16, None])
    if cfg.unmask == "dynamic":
        changes["alpha"] = rng.choice([0.0, 0.3, 0.6])
    if rng.random() < 0.3:
        changes.update(temperature=0.8, seed=rng.randrange(100))
    return cfg.replace(**changes)


def _bd_config(rng: random.Random, family: str) -> sd.DecodeConfig:
    name, block = rng.choice(BD), rng.choice([4, 8])
    sub = block // 2 if name == "fast-dllm-v2" else None
    cfg = sd.DecodeConfig.preset(name, gen_length=16, block_length=block, sub_block_length=sub)
    if sub:
        cfg = cfg.replace(cache=rng.choice(["prefix", "dual"]))
    if rng.random() < 0.3:
        cfg = cfg.replace(temperature=0.9, top_p=rng.choice([1.0, 0.9]), seed=rng.randrange(100))
    return cfg


def _solo(model, req):
    prompts, cfg, seeds = req
    return sd.generate(model, prompts, cfg, seeds=seeds)


def _mix(model, rng, make, vocab, n_requests=10):
    reqs = []
    for _ in range(n_requests):
        rows = rng.choice([1, 1, 2])
        prompts = [[rng.randrange(vocab) for _ in range(rng.randint(3, 14))] for _ in range(rows)]
        cfg = make(rng)
        seeds = [rng.randrange(1000) for _ in range(rows)] if cfg.temperature > 0 else None
        reqs.append((prompts, cfg, seeds))
    return reqs


def _run_mixed(model, reqs, rng, **kwargs):
    """Submit the requests at random steps; return each request's output."""
    sched = Scheduler(model, **kwargs)
    todo = list(enumerate(reqs))
    handles, outputs = {}, {}
    while todo or sched.busy():
        for _ in range(rng.randint(0, 3)):
            if todo:
                i, (prompts, cfg, seeds) = todo.pop(0)
                handles[sched.submit(prompts, cfg, seeds).id] = i
        for ev in sched.step():
            assert ev.kind in ("block", "done"), ev.error
            if ev.kind == "done":
                outputs[handles[ev.handle.id]] = ev.output
    return [outputs[i] for i in range(len(reqs))]


def _assert_same(model, reqs, outs):
    for (prompts, cfg, seeds), out in zip(reqs, outs, strict=True):
        solo = _solo(model, (prompts, cfg, seeds))
        for r in range(len(prompts)):
            assert out.decoded(r) == solo.decoded(r), cfg
        assert out.nfe == solo.nfe, cfg


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("policy", ["split", "joint", "buckets"])
def test_concurrent_equals_solo_full_attention(tiny_models, seed, policy):
    rng = random.Random(seed)
    model = tiny_models["llada" if seed % 2 == 0 else "dream"]
    reqs = _mix(model, rng, _full_config, 900)
    _assert_same(model, reqs, _run_mixed(model, reqs, rng, policy=policy, long_tokens=24))


@pytest.mark.parametrize("family", ["sdar", "fast_dllm_v2", "llada2"])
def test_concurrent_equals_solo_block_diffusion(family):
    rng = random.Random(hash(family) % 1000)
    model = sd.load_model(str(BD_DIR / family / "checkpoint"))
    reqs = _mix(model, rng, lambda r: _bd_config(r, family), 300)
    _assert_same(model, reqs, _run_mixed(model, reqs, rng, policy="joint"))


@pytest.mark.parametrize("budget", [30, 60])
def test_step_token_budget_keeps_answers_and_serves_the_oldest_first(tiny_models, budget):
    """``max_step_tokens``: a step feeds the most urgent ready requests (``Handle.slack``) while
    their tokens fit, first fit (a forward larger than the budget always runs, uncounted), the
    others wait a step; every answer is still its solo answer."""
    rng = random.Random(7)
    model = tiny_models["llada"]
    reqs = _mix(model, rng, _full_config, 900, n_requests=8)
    sched = Scheduler(model, max_step_tokens=budget)
    handles = [sched.submit(*req) for req in reqs]
    outputs, waits, oversized = {}, 0, 0
    while sched.busy():
        ready = sorted((h for h in sched.active if h.pending is not None), key=lambda h: (h.slack(), h.id))
        before = {h.id: h.pending for h in ready}
        fed = {h.id: h.pending.ids.numel() for h in ready}
        for ev in sched.step():
            assert ev.kind in ("block", "done"), ev.error
            if ev.kind == "done":
                outputs[ev.handle.id] = ev.output
        ran = {h.id for h in ready if h.pending is not before[h.id]}
        assert ran or not ready, "a step runs at least one request"
        counted = 0
        for h in ready:  # replay the rule: what ran, and why each other request waited
            if fed[h.id] > budget:
                assert h.id in ran, "a forward larger than the budget runs"
                oversized += 1
            elif h.id in ran:
                counted += fed[h.id]
            else:
                assert counted + fed[h.id] > budget, "a request waited although it fit"
                waits += 1
        assert counted <= budget
    assert waits > 0  # the budget held requests back
    assert oversized > 0 or budget > 30  # (with 30, some forwards are larger than the budget)
    _assert_same(model, reqs, [outputs[h.id] for h in handles])


def test_the_budget_serves_first_what_needs_the_most_forwards(tiny_models):
    """Under a step budget, urgency is age minus the forwards still needed (``Handle.slack``): a
    vanilla request (one token per forward) submitted after a threshold-rule one is served
    first, and the older one gets its turn once the vanilla request's forwards left are as few as
    its own, before the vanilla request ends; both answers are their solo answers."""
    model = tiny_models["llada"]
    reqs = [([[5, 6, 7]], sd.DecodeConfig.preset("fast-dllm", gen_length=16, block_length=16), None),
            ([[8, 9, 10]], sd.DecodeConfig.preset("vanilla", gen_length=16, block_length=16), None)]
    sched = Scheduler(model, max_step_tokens=20)  # each forward feeds 19 tokens: one per step
    early, late = (sched.submit(*r) for r in reqs)
    outputs, ran = {}, []
    while sched.busy():
        nfe = {h.id: 0 if h.run is None else h.run.nfe for h in (early, late)}
        for ev in sched.step():
            if ev.kind == "done":
                outputs[ev.handle.id] = ev.output
        now = {h.id: h.run.nfe for h in (early, late)}
        ran.append([i for i in nfe if now[i] > nfe[i]])
    assert all(len(r) == 1 for r in ran), ran  # the budget fits one forward a step
    first_early = next(i for i, r in enumerate(ran) if r == [early.id])
    last_late = max(i for i, r in enumerate(ran) if r == [late.id])
    assert ran[0] == [late.id] and first_early >= 8, ran  # the one needing 16 forwards goes first
    assert first_early < last_late, ran  # ... but does not hold the older one until it ends
    _assert_same(model, reqs, [outputs[early.id], outputs[late.id]])


def test_a_forward_larger_than_the_budget_never_starves_the_others(tiny_models):
    """A long request whose every forward exceeds the budget runs next to the short ones: the
    short request takes a forward at every step, as without the budget."""
    model = tiny_models["llada"]
    long = ([list(range(10, 40))], sd.DecodeConfig.preset("vanilla", gen_length=64, block_length=32), None)
    short = ([[5, 6, 7]], sd.DecodeConfig.preset("vanilla", gen_length=8, block_length=8), None)
    sched = Scheduler(model, max_step_tokens=32)
    first = sched.submit(*long)
    second = sched.submit(*short)
    steps, done = 0, {}
    while second.id not in done:
        steps += 1
        for ev in sched.step():
            if ev.kind == "done":
                done[ev.handle.id] = ev.output
    assert steps == 8 and first.id not in done  # 8 forwards for 8 tokens, one per step
    _assert_same(model, [short], [done[second.id]])


def test_cancelled_and_failed_requests_leave_others_alone(tiny_models):
    model = tiny_models["llada"]
    rng = random.Random(3)
    reqs = _mix(model, rng, _full_config, 900, n_requests=4)
    sched = Scheduler(model)
    cancel = {"now": False}
    good = [sched.submit(*r) for r in reqs]
    doomed = sched.submit([[1, 2, 3]], sd.DecodeConfig.preset("vanilla", gen_length=64, block_length=16),
                          cancelled=lambda: cancel["now"])
    bad = sched.submit([[10**6]], sd.DecodeConfig.preset("vanilla", gen_length=16, block_length=16))
    outs, kinds, steps = {}, {}, 0
    while sched.busy():
        steps += 1
        cancel["now"] = steps > 2
        for ev in sched.step():
            kinds.setdefault(ev.handle.id, []).append(ev.kind)
            if ev.kind == "done":
                outs[ev.handle.id] = ev.output
    assert kinds[bad.id] == ["failed"]
    assert kinds[doomed.id][-1] == "cancelled"
    _assert_same(model, reqs, [outs[h.id] for h in good])


def test_admission_limits_and_queue():
    model = sd.load_model(str(BD_DIR / "sdar" / "checkpoint"))
    cfg = sd.DecodeConfig.preset("sdar", gen_length=8, block_length=4, temperature=0.0)
    sched = Scheduler(model, max_rows=2, max_queue=3)
    for _ in range(3):
        sched.submit([[5, 6, 7]], cfg)
    with pytest.raises(QueueFull):
        sched.submit([[5, 6, 7]], cfg)
    seen = 0
    while sched.busy():
        sched.step()
        assert sched.rows_in_flight <= 2
        seen = max(seen, sched.rows_in_flight)
    assert seen == 2


def test_generate_many_matches_generate(tiny_models):
    model = tiny_models["llada"]
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    cfgs = [sd.DecodeConfig.preset("streaming", gen_length=32, block_length=16, window=16),
            sd.DecodeConfig.preset("vanilla", gen_length=16, block_length=16)]
    many = sd.generate_many(model, prompts, cfgs)
    for p, c, out in zip(prompts, cfgs, many, strict=True):
        assert out.generated(0) == sd.generate(model, [p], c).generated(0)
    with pytest.raises(ValueError, match="configs"):
        sd.generate_many(model, prompts, cfgs[:1])
    assert torch.equal(many[0].sequences, sd.generate(model, [prompts[0]], cfgs[0]).sequences)
