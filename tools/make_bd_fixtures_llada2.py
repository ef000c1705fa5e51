"""Parity fixtures for the LLaDA2.0 / LLaDA2.1 family, generated with the OFFICIAL code.

Run with the python of a venv holding the official stack (torch 2.13.0 CPU, transformers 4.57.0):

    /tmp/venv-tf457/bin/python tools/make_bd_fixtures_llada2.py --dllm-dir /tmp/official/dllm \
        --out tests/fixtures

It builds one tiny random ``LLaDA2MoeModelLM`` (float32, CPU, seeded) with the official llada2
classes, saves it with ``save_pretrained(safe_serialization=True)`` into ``<out>/llada2/checkpoint``,
reloads that checkpoint with the official llada21 classes (same architecture and weight names), and
writes

* ``<out>/llada2/logits.safetensors``: for each input ``i``, ``ids.i`` [1, L] int64,
  ``block_size.i`` [1] int64 and ``logits.i`` [1, L, V] float32, the official logits of one
  forward with the block-causal mask (query block >= key block, blocks counted from position 0);
* ``<out>/llada2/cases.json``: the official ``generate`` of llada2 (``llada2.generate``) and of
  llada21 (``llada2.1.generate``) on a grid of cases; ``output`` is the raw return (the generated
  part only, cut after the first EOS, EOS included), ``nfe`` the number of forwards of the inner
  base model (a forward pre-hook on ``model.model``).

Nothing of the official code is copied: its files are imported from ``--dllm-dir`` at run time.
Stand-ins (applied at run time, not to the files):

1. Only the ``models`` sub-packages are imported (``pipelines/llada2/models`` and
   ``pipelines/llada21/models``), under private package names, so the ``dllm`` package itself
   (its trainers, samplers and their dependencies) is never imported.
2. ``generate`` builds its block-diffusion mask as a bfloat16 additive mask (0 / -inf), which SDPA
   refuses next to float32 queries; the model's ``forward`` is wrapped to cast that mask to the
   model's dtype (exact: 0 and -inf are the same in both dtypes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = "ZHZisZZ/dllm"
COMMIT = "ca176752fbceec49c6b4777a2c18ae88e4eb10ed"

VOCAB, MASK_ID, PAD_ID = 320, 319, 0
TINY = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_act="silu",
    use_qkv_bias=True, use_bias=True, use_qk_norm=True, rms_norm_eps=1e-6, norm_head=False,
    tie_word_embeddings=False, max_position_embeddings=256, rope_theta=10000.0,
    rope_scaling=None, partial_rotary_factor=0.5, num_experts=8, num_shared_experts=1,
    num_experts_per_tok=2, n_group=2, topk_group=1, routed_scaling_factor=2.5,
    moe_intermediate_size=32, first_k_dense_replace=1, pad_token_id=PAD_ID,
    mask_token_id=MASK_ID, embedding_dropout=0.0, attention_dropout=0.0, output_dropout=0.0,
)
HEAD_STD = 0.6
"""LM head init std: large enough that confidence thresholds fire on some positions, not all."""


def import_models(dllm_dir: Path, sub: str, name: str):
    """Import ``dllm/pipelines/<sub>/models`` as the package ``name`` (stand-in 1)."""
    folder = dllm_dir / "dllm" / "pipelines" / sub / "models"
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights of useful scale; a nonzero ``expert_bias`` so selection != weighting."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(HEAD_STD * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif name.endswith("gate.weight"):
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))


def block_causal(length: int, block: int) -> torch.Tensor:
    pos = torch.arange(length)
    return (pos[None, :] // block <= pos[:, None] // block)[None, None]


def cast_mask_forward(model: torch.nn.Module) -> None:
    """Stand-in 2: cast a floating attention mask to the model's dtype before the forward."""
    forward = model.forward

    def wrapped(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(model.dtype)
        return forward(*args, attention_mask=attention_mask, **kwargs)

    model.forward = wrapped


class Recorder:
    """Counts forwards of the inner base model and the edits (a committed token replaced)."""

    def __init__(self, model: torch.nn.Module, mask_id: int) -> None:
        self.mask_id, self.nfe, self.edits, self.prev = mask_id, 0, 0, None
        model.model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def reset(self) -> None:
        self.nfe, self.edits, self.prev = 0, 0, None

    def hook(self, module, args, kwargs):
        ids = (args[0] if args else kwargs["input_ids"]).detach().clone()
        self.nfe += 1
        if self.prev is not None and self.prev.shape == ids.shape:
            was = self.prev != self.mask_id
            self.edits += int((was & (ids != self.prev)).sum())
        self.prev = ids


def routing_differs(model: torch.nn.Module) -> float:
    """Fraction of tokens whose experts change when the bias is zeroed (on the first MoE layer)."""
    moe = model.model.layers[TINY["first_k_dense_replace"]].mlp
    h = torch.randn(64, TINY["hidden_size"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        idx, _, _ = moe.gate(h)
        saved = moe.gate.expert_bias.clone()
        moe.gate.expert_bias.zero_()
        idx0, _, _ = moe.gate(h)
        moe.gate.expert_bias.copy_(saved)
    return float((idx.sort(-1).values != idx0.sort(-1).values).any(-1).float().mean())


def pick_eos(model: torch.nn.Module) -> int:
    """The token the random model predicts most often at masked positions (a usable EOS)."""
    g = torch.Generator().manual_seed(11)
    counts = torch.zeros(VOCAB, dtype=torch.long)
    with torch.no_grad():
        for _ in range(8):
            ids = torch.randint(1, VOCAB - 1, (1, 16), generator=g)
            ids[:, 6:] = MASK_ID
            logits = model(ids, attention_mask=block_causal(16, 4)).logits[0, 6:]
            counts += torch.bincount(logits.argmax(-1), minlength=VOCAB)
    counts[[MASK_ID, PAD_ID]] = -1
    return int(counts.argmax())


def prompt(length: int, seed: int, avoid: tuple[int, ...]) -> list[int]:
    """Random prompt ids without the special ids; a negative seed puts the EOS (avoid[1]) at -seed."""
    g = torch.Generator().manual_seed(1000 + abs(seed))
    raw = torch.randint(1, VOCAB - 1, (length,), generator=g).tolist()
    ids = [t if t not in avoid else t + 1 for t in raw]
    if seed < 0:
        ids[-seed] = avoid[1]
    return ids


def write_logits(model: torch.nn.Module, other: torch.nn.Module, path: Path, avoid: tuple[int, ...]) -> None:
    """Official block-causal logits of a few inputs (lengths not multiples of the block too)."""
    tensors = {}
    for i, (length, block) in enumerate([(13, 4), (20, 8), (9, 32), (16, 4)]):
        ids = torch.tensor([prompt(length, 50 + i, avoid)])
        if i == 3:
            ids[:, 10:] = MASK_ID  # masked tail, as the decoder feeds it
        mask = block_causal(length, block)
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits.float()
            again = other(ids, attention_mask=mask).logits.float()
        print(f"input {i}: llada2 vs llada21 max diff {(logits - again).abs().max().item():.3g}")
        tensors.update({f"ids.{i}": ids, f"block_size.{i}": torch.tensor([block]), f"logits.{i}": logits})
    save_file(tensors, str(path))


def c(length: int, pseed: int, seed: int | None = None, note: str | None = None, **kwargs) -> tuple:
    """One case: prompt length and seed, the generate kwargs, the call's torch seed, a note."""
    return length, pseed, kwargs, seed, note


G4 = dict(block_length=4)
G8 = dict(block_length=8)
LLADA2_GRID = [
    c(3, 0, note="prompt below block", gen_length=8, **G4, steps=4, threshold=0.95),
    c(4, 1, note="prompt equal to block, steps < block", gen_length=8, **G4, steps=2, threshold=0.95),
    c(6, 2, note="prompt above block", gen_length=12, **G4, steps=4, threshold=0.5),
    c(8, 3, note="prompt a multiple of block", gen_length=8, **G4, steps=4, threshold=0.9),
    c(5, 4, gen_length=16, **G8, steps=8, threshold=0.7),
    c(5, 4, note="same as the previous, eos_early_stop", gen_length=16, **G8, steps=8, threshold=0.7,
      eos_early_stop=True),
    c(5, 5, note="threshold never fires, remainder", gen_length=16, **G8, steps=3, threshold=1.0),
    c(10, 6, note="gen_length not a multiple", gen_length=6, **G4, steps=4, threshold=0.8),
    c(5, 7, note="minimal_topk", gen_length=8, **G8, steps=8, minimal_topk=2, threshold=0.95),
    c(7, 8, note="minimal_topk", gen_length=8, **G4, steps=4, minimal_topk=4, threshold=0.6),
    c(4, 9, note="one step per block", gen_length=12, **G4, steps=1, threshold=0.95),
    c(6, 10, note="steps > block: zero-size steps", gen_length=8, **G4, steps=6, threshold=0.6),
    c(5, 11, 1, gen_length=16, **G4, steps=4, threshold=0.5, temperature=0.7),
    c(9, 12, 2, gen_length=12, **G4, steps=4, threshold=0.5, temperature=1.0, top_k=5),
    c(3, 13, 3, gen_length=16, **G8, steps=8, threshold=0.4, temperature=0.8, top_p=0.9),
    c(6, 14, 4, gen_length=12, **G4, steps=2, threshold=0.3, temperature=1.3, top_k=20, top_p=0.8),
    c(5, 15, gen_length=24, **G4, steps=4, threshold=0.9, eos_early_stop=True),
    c(6, 16, gen_length=24, **G8, steps=4, threshold=0.7, eos_early_stop=True),
    c(3, 17, 5, gen_length=24, **G4, steps=4, threshold=0.5, temperature=1.0, eos_early_stop=True),
    c(7, 18, gen_length=24, **G4, steps=4, threshold=0.9, eos_early_stop=False),
    c(4, 19, 6, gen_length=32, **G8, steps=8, threshold=0.95, eos_early_stop=False, temperature=0.9,
      top_k=50),
    c(12, 20, note="long prompt", gen_length=20, **G8, steps=5, threshold=0.8),
    c(6, -4, note="prompt holds eos (official quirk: the early stop finds the prompt's EOS and returns an "
      "empty output)", gen_length=12, **G4, steps=4, threshold=0.5, eos_early_stop=True),
    c(6, -4, note="prompt holds eos, no early stop", gen_length=12, **G4, steps=4, threshold=0.5),
]

LLADA21_GRID = [
    c(3, 30, note="prompt below block", gen_length=8, **G4, threshold=0.95, editing_threshold=0.9,
      max_post_steps=16),
    c(4, 31, note="prompt equal to block", gen_length=8, **G4, threshold=0.7, editing_threshold=0.5,
      max_post_steps=16),
    c(6, 32, note="prompt above block", gen_length=12, **G4, threshold=0.5, editing_threshold=0.3,
      max_post_steps=4),
    c(8, 33, note="prompt a multiple of block", gen_length=8, **G4, threshold=0.9, editing_threshold=0.6,
      max_post_steps=2),
    c(5, 34, note="editing threshold too high to edit", gen_length=16, **G8, threshold=0.7,
      editing_threshold=0.99, max_post_steps=16),
    c(5, 35, note="threshold never fires", gen_length=16, **G8, threshold=1.0, editing_threshold=0.4,
      max_post_steps=16, num_to_transfer=2),
    c(10, 36, note="gen_length not a multiple", gen_length=6, **G4, threshold=0.8, editing_threshold=0.5,
      max_post_steps=16),
    c(5, 37, note="minimal_topk and steps (no effect in 2.1)", gen_length=8, **G8, steps=8, minimal_topk=2,
      threshold=0.9, editing_threshold=0.6, max_post_steps=16),
    c(6, 38, note="max_post_steps=0", gen_length=12, **G4, threshold=0.6, editing_threshold=0.2,
      max_post_steps=0),
    c(6, 38, note="max_post_steps=1", gen_length=12, **G4, threshold=0.6, editing_threshold=0.2,
      max_post_steps=1),
    c(6, 38, note="max_post_steps=3", gen_length=12, **G4, threshold=0.6, editing_threshold=0.2,
      max_post_steps=3),
    c(4, 39, note="num_to_transfer=3", gen_length=12, **G4, threshold=0.95, editing_threshold=0.5,
      max_post_steps=8, num_to_transfer=3),
    c(5, 40, 11, gen_length=16, **G4, threshold=0.5, editing_threshold=0.5, max_post_steps=2,
      temperature=0.7),
    c(9, 41, 12, gen_length=12, **G4, threshold=0.5, editing_threshold=0.4, max_post_steps=3, temperature=1.0,
      top_k=5),
    c(3, 42, 13, gen_length=16, **G8, threshold=0.4, editing_threshold=0.3, max_post_steps=2, temperature=0.8,
      top_p=0.9),
    c(6, 43, 14, gen_length=12, **G4, threshold=0.3, editing_threshold=0.5, max_post_steps=4, temperature=1.3,
      top_k=20, top_p=0.8, num_to_transfer=2),
    c(5, 44, gen_length=24, **G4, threshold=0.9, editing_threshold=0.6, max_post_steps=4,
      eos_early_stop=True),
    c(6, 45, gen_length=24, **G8, threshold=0.7, editing_threshold=0.4, max_post_steps=4,
      eos_early_stop=True),
    c(3, 46, 15, gen_length=24, **G4, threshold=0.5, editing_threshold=0.5, max_post_steps=2, temperature=1.0,
      eos_early_stop=True),
    c(7, 47, gen_length=24, **G4, threshold=0.9, editing_threshold=0.6, max_post_steps=4,
      eos_early_stop=False),
    c(7, 47, note="same as the previous, eos_early_stop", gen_length=24, **G4, threshold=0.9,
      editing_threshold=0.6, max_post_steps=4, eos_early_stop=True),
    c(12, 48, note="long prompt", gen_length=20, **G8, threshold=0.8, editing_threshold=0.5,
      max_post_steps=16),
    c(6, -4, note="prompt holds eos", gen_length=12, **G4, threshold=0.5, editing_threshold=0.5,
      max_post_steps=4, eos_early_stop=True),
]


def run_cases(model, recorder: Recorder, reference: str, grid, eos: int, avoid) -> list[dict]:
    cases = []
    for length, pseed, kw, seed, note in grid:
        kwargs = dict(kw, eos_id=eos, mask_id=MASK_ID)
        ids = prompt(length, pseed, avoid)
        recorder.reset()
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(torch.tensor([ids]), **kwargs)
        stats = f"forwards={recorder.nfe}, edits={recorder.edits}, eos_in_output={eos in out[0].tolist()}"
        case = {"reference": reference, "kwargs": kwargs, "prompts": [ids], "output": out.tolist(),
                "nfe": recorder.nfe, "seed": seed, "note": f"{note}; {stats}" if note else stats}
        cases.append(case)
        print(f"{reference:18s} P={length:2d} {json.dumps(kw)[:90]:90s} -> {len(out[0]):2d} tokens; {stats}")
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dllm-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import transformers

    t0 = time.time()
    torch.set_num_threads(2)
    v20 = import_models(args.dllm_dir, "llada2", "official_llada2_models")
    v21 = import_models(args.dllm_dir, "llada21", "official_llada21_models")
    out = args.out / "llada2"
    ckpt = out / "checkpoint"
    shutil.rmtree(ckpt, ignore_errors=True)
    ckpt.mkdir(parents=True)

    torch.manual_seed(0)
    model = v20.LLaDA2MoeModelLM(v20.LLaDA2MoeConfig(**TINY)).float().eval()
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    init_weights(model, seed=0)
    eos = pick_eos(model)
    model.config.eos_token_id = eos
    print(f"eos={eos}; routing differs from bias-free on {routing_differs(model):.0%} of tokens")
    model.save_pretrained(str(ckpt), safe_serialization=True)

    # Both references run on the saved checkpoint, as our loader reads it.
    model = v20.LLaDA2MoeModelLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    other = v21.LLaDA2MoeModelLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    assert other.config._attn_implementation == "sdpa", other.config._attn_implementation
    avoid = (MASK_ID, eos, PAD_ID)
    write_logits(model, other, out / "logits.safetensors", avoid)

    cases = []
    for m, ref, grid in ((model, "llada2.generate", LLADA2_GRID), (other, "llada2.1.generate", LLADA21_GRID)):
        cast_mask_forward(m)
        cases += run_cases(m, Recorder(m, MASK_ID), ref, grid, eos, avoid)
    doc = {
        "family": "llada2",
        "generator": "tools/make_bd_fixtures_llada2.py",
        "official": {"repo": REPO, "commit": COMMIT, "transformers": transformers.__version__},
        "ids": {"mask_id": MASK_ID, "eos_id": eos, "pad_id": PAD_ID},
        "cases": cases,
    }
    (out / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    print(f"{len(cases)} cases, checkpoint {size / 2**20:.2f} MiB, {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
