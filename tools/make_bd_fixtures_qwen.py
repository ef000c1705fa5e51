"""Parity fixtures for the SDAR and Fast-dLLM v2 families, generated with the OFFICIAL code.

Run with a separate environment that has the official code's dependencies (never the project's):

    python -m venv /tmp/venv-tf453
    /tmp/venv-tf453/bin/pip install torch==2.13.0 transformers==4.53.1 safetensors numpy einops
    /tmp/venv-tf453/bin/python tools/make_bd_fixtures_qwen.py --sdar-dir /tmp/official/sdar \
        --fdv2-model-dir /tmp/official/fdv2_model/v2 --fdv2-decoder-dir /tmp/official/fdv2_dec/v2 \
        --out tests/fixtures

The official modules are imported from the given folders; nothing of them is copied here.
Sources: SDAR github.com/JetAstra/SDAR @ c2041a8333333d685f6e15122c84f60f51f85ebd
(training/model/SDAR-4B-Chat/modeling_sdar.py, generate.py); Fast-dLLM v2 model
github.com/wangziyannb/Fast-dLLM @ 1aea5736a40de59be57dbd636e80e41687b87cc2 (v2/modeling_ori.py,
v2/configuration.py) and its decoder github.com/Arya333/Fast-dLLM @ af42f511f705a2db0d16aa63ebcfcbc26f29181d
(v2/generation_functions.py ``batch_sample``, called as v2/eval.py calls it).

CPU stand-ins, installed in ``sys.modules`` before the official SDAR module is imported:

* ``flash_attn.ops.triton.layer_norm.rms_norm_fn``: RMSNorm computed in float32
  (x * rsqrt(mean(x^2) + eps) * weight, cast back to x's dtype);
* ``flash_attn.flash_attn_func(q, k, v, causal, softmax_scale)`` on [B, L, H, D] tensors:
  ``torch.nn.functional.scaled_dot_product_attention`` with grouped K/V heads;
* ``flash_attn_varlen_func`` and ``flash_attn.bert_padding``: placeholders (not used at inference);
* ``<sdar package>.fused_linear_diffusion_cross_entropy``: a placeholder loss class (the real
  module needs triton and is used only for training).

Fast-dLLM v2's denoising forwards do not pass ``block_size`` (the model's forward defaults to 32 for
its eval mask), so every block size used here divides 32: a block then never straddles a 32-token
mask boundary and the mask equals the block-causal one for the case's block size.

Each case counts forwards with a forward pre-hook on the inner base model (``model.model``):
Fast-dLLM v2 calls ``self.forward`` directly, which bypasses hooks on the outer module.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

SDAR_SOURCE = {"repo": "https://github.com/JetAstra/SDAR",
               "commit": "c2041a8333333d685f6e15122c84f60f51f85ebd"}
FDV2_MODEL_SOURCE = {"repo": "https://github.com/wangziyannb/Fast-dLLM",
                     "commit": "1aea5736a40de59be57dbd636e80e41687b87cc2"}
FDV2_DECODER_SOURCE = {"repo": "https://github.com/Arya333/Fast-dLLM",
                       "commit": "af42f511f705a2db0d16aa63ebcfcbc26f29181d"}

VOCAB = 320
MASK_ID = VOCAB - 1
PAD_ID = VOCAB - 2
SPECIAL = 8  # the top ids are never used in prompts


# ----------------------------------------------------------------------------- CPU stand-ins
def _rms_norm_fn(x, weight, bias=None, residual=None, eps=1e-6, **_: Any):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if bias is not None:
        h = h + bias.float()
    return h.to(x.dtype)


def _flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_: Any):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal, scale=softmax_scale, enable_gqa=True)
    return out.transpose(1, 2)


def _unavailable(*_: Any, **__: Any):
    raise NotImplementedError("CPU stand-in: not used at inference")


def install_stand_ins(sdar_package: str) -> None:
    """Fake ``flash_attn`` modules and the training-only fused loss module (see the docstring)."""
    names = ["flash_attn", "flash_attn.ops", "flash_attn.ops.triton", "flash_attn.ops.triton.layer_norm",
             "flash_attn.bert_padding"]
    mods = {n: types.ModuleType(n) for n in names}
    for n in names[:-2]:
        mods[n].__path__ = []
    mods["flash_attn.ops.triton.layer_norm"].rms_norm_fn = _rms_norm_fn
    mods["flash_attn"].flash_attn_func = _flash_attn_func
    mods["flash_attn"].flash_attn_varlen_func = _unavailable
    for fn in ("index_first_axis", "pad_input", "unpad_input"):
        setattr(mods["flash_attn.bert_padding"], fn, _unavailable)
    sys.modules.update(mods)
    loss = types.ModuleType(f"{sdar_package}.fused_linear_diffusion_cross_entropy")

    class FusedLinearDiffusionCrossEntropyLoss(torch.nn.Module):  # training only
        forward = _unavailable

    loss.FusedLinearDiffusionCrossEntropyLoss = FusedLinearDiffusionCrossEntropyLoss
    sys.modules[loss.__name__] = loss


def load_file_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def import_official(args: argparse.Namespace) -> dict[str, Any]:
    # The transformers modules the official code imports, before the stand-ins exist, so that
    # transformers' own availability checks see no flash_attn.
    for name in ("transformers", "transformers.modeling_flash_attention_utils", "transformers.modeling_utils",
                 "transformers.generation", "transformers.integrations", "transformers.cache_utils",
                 "transformers.modeling_layers", "transformers.modeling_outputs",
                 "transformers.modeling_rope_utils", "transformers.integrations.flex_attention"):
        importlib.import_module(name)

    sdar_model_dir = Path(args.sdar_dir) / "training" / "model" / "SDAR-4B-Chat"
    pkg = types.ModuleType("sdar_official")
    pkg.__path__ = [str(sdar_model_dir)]
    sys.modules["sdar_official"] = pkg
    install_stand_ins("sdar_official")
    sdar_modeling = importlib.import_module("sdar_official.modeling_sdar")
    sdar_config = importlib.import_module("sdar_official.configuration_sdar")
    sdar_generate = load_file_module("sdar_generate", Path(args.sdar_dir) / "generate.py")
    sys.path.insert(0, str(Path(args.fdv2_model_dir)))
    fd_config = importlib.import_module("configuration")
    fd_modeling = load_file_module("fdv2_modeling_ori", Path(args.fdv2_model_dir) / "modeling_ori.py")
    fd_generation = load_file_module("fdv2_generation_functions",
                                     Path(args.fdv2_decoder_dir) / "generation_functions.py")
    return dict(sdar_modeling=sdar_modeling, sdar_config=sdar_config, sdar_generate=sdar_generate,
                fd_config=fd_config, fd_modeling=fd_modeling, fd_generation=fd_generation)


# ----------------------------------------------------------------------------- tiny checkpoints
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=0.2, torch_dtype="float32",
              mask_token_id=MASK_ID, pad_token_id=PAD_ID, bos_token_id=PAD_ID)


def _seeded_init(model: torch.nn.Module, seed: int, head_scale: float) -> None:
    """Deterministic weights: normal(0, 0.2) matrices and biases, norms near 1, a sharper head."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        model.model.norm.weight.mul_(head_scale)
        # A zero LM-head row gives the mask id logit 0, far below the top logits: the random model
        # (almost) never commits the mask id, which trained models never predict either (SDAR's
        # decoder then runs past its step schedule and fails with an IndexError).
        model.lm_head.weight[MASK_ID] = 0.0


def build_sdar(off: dict[str, Any], block_size: int) -> torch.nn.Module:
    cfg = off["sdar_config"].SDARConfig(**COMMON, head_dim=32, block_size=block_size, eos_token_id=0,
                                        attention_bias=False, tie_word_embeddings=True,
                                        use_sliding_window=False, rope_scaling=None,
                                        fuse_cross_entropy=False)
    cfg._attn_implementation = "sdpa"
    model = off["sdar_modeling"].SDARForCausalLM(cfg).eval()
    _seeded_init(model, 1234, 3.0)
    return model


def build_fdv2(off: dict[str, Any], bd_size: int) -> torch.nn.Module:
    cfg = off["fd_config"].Fast_dLLM_QwenConfig(**COMMON, bd_size=bd_size, eos_token_id=0,
                                                tie_word_embeddings=False, use_sliding_window=False,
                                                rope_scaling=None)
    cfg._attn_implementation = "sdpa"
    model = off["fd_modeling"].Fast_dLLM_QwenForCausalLM(cfg).eval()
    _seeded_init(model, 4321, 3.0)
    return model


def frequent_token(model: torch.nn.Module, logits_fn) -> int:
    """The id the random model predicts most often (outside the special ids): the stop token."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(0, VOCAB - SPECIAL, (4, 32), generator=gen)
    with torch.no_grad():
        top = logits_fn(model, x).argmax(-1).flatten()
    counts = torch.bincount(top, minlength=VOCAB)
    counts[VOCAB - SPECIAL:] = 0
    return int(counts.argmax())


def save_checkpoint(model: torch.nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*"):
        old.unlink()
    model.save_pretrained(folder, safe_serialization=True)
    size = sum(f.stat().st_size for f in folder.glob("*"))
    assert size < 1.5 * 2**20, f"{folder}: {size} bytes"


# ----------------------------------------------------------------------------- official logits
def sdar_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A plain forward with the block-causal mask built as ``block_diffusion_generate`` builds it."""
    bs = model.config.block_size
    n = x.shape[1]
    blocks = -(-n // bs)
    mask = torch.tril(torch.ones(blocks, blocks)).repeat_interleave(bs, 0).repeat_interleave(bs, 1)
    with torch.no_grad():
        return model(x, attention_mask=mask[None, :n, :n], position_ids=torch.arange(n)[None]).logits


def fdv2_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A plain forward: the official model builds its block-causal eval mask from ``block_size``."""
    with torch.no_grad():
        return model(input_ids=x, block_size=model.config.bd_size).logits


def write_logits(model, logits_fn, lengths: list[int], folder: Path, seed: int) -> None:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, n in enumerate(lengths):
        x = torch.randint(0, VOCAB - SPECIAL, (1, n), generator=gen)
        tensors[f"seq{i}.input_ids"] = x
        tensors[f"seq{i}.logits"] = logits_fn(model, x).contiguous()
    save_file(tensors, str(folder / "logits.safetensors"))


# ----------------------------------------------------------------------------- decoding cases
class ForwardCounter:
    """Counts forwards of the inner base model (``model.model``) with a forward pre-hook, and keeps
    each forward's (first position, input ids) to find committed tokens that a later step changed."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        self.fed: list[tuple[int, list[int]]] = []
        model.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        self.n += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        pos = kwargs.get("position_ids")
        start = int(pos[0, 0]) if pos is not None else -1
        self.fed.append((start, ids[0].tolist()))

    def overwritten(self) -> bool:
        """Whether a forward saw a non-mask token of the previous forward (same positions) changed."""
        for (s0, a), (s1, b) in zip(self.fed, self.fed[1:], strict=False):
            changed = len(a) == len(b) and any(x != MASK_ID and x != y for x, y in zip(a, b, strict=True))
            if s0 == s1 >= 0 and changed:
                return True
        return False


def prompt_of(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB - SPECIAL, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


STOP = "STOP"
"""Placeholder for a stop id taken from a first run of the same case without a stop id."""


def later_token(generated: list[int], block: int) -> int:
    """A generated id whose first occurrence is after the first generated block: used as the stop id,
    so that the case decodes some blocks and then really stops."""
    for i in range(block, len(generated)):
        t = generated[i]
        if t not in generated[:i] and t != MASK_ID:
            return t
    raise RuntimeError("no generated id fit for a stop id")


def resolve_stop(kwargs: dict[str, Any], call, prompt_len: int, seed: int | None) -> None:
    """Replace a ``STOP`` stop_token by an id the case (run once without it) generates later on."""
    if kwargs.get("stop_token") != STOP:
        return
    kwargs["stop_token"] = NO_STOP
    if seed is not None:
        torch.manual_seed(seed)
    kwargs["stop_token"] = later_token(call()[0][prompt_len:], kwargs["block_size"])


def run_case(counter: ForwardCounter, reference: str, call, kwargs: dict[str, Any], prompts: list[list[int]],
             seed: int | None, note: str | None) -> dict[str, Any]:
    counter.n, counter.fed = 0, []
    if seed is not None:
        torch.manual_seed(seed)
    output = call()
    case = {"reference": reference, "kwargs": kwargs, "prompts": prompts, "output": output,
            "nfe": counter.n, "seed": seed}
    if note:
        case["note"] = note
    return case


SDAR_DEFAULTS = dict(gen_length=12, block_length=4, denoising_steps=4, temperature=1.0, top_k=0, top_p=1.0,
                     remasking_strategy="low_confidence_dynamic", confidence_threshold=0.85,
                     eb_threshold=None, stopping_criteria_idx=None)


def sdar_specs(stop: int) -> list[tuple[int, dict[str, Any], int | None]]:
    """(prompt length, kwargs overriding SDAR_DEFAULTS, seed) of each SDAR case (config block 4)."""
    static, seq = "low_confidence_static", "sequential"  # the default strategy is low_confidence_dynamic
    return [
        (3, {}, 0),
        (4, dict(gen_length=8, confidence_threshold=0.7), 1),
        (6, dict(gen_length=16, confidence_threshold=0.5), 2),
        (8, dict(confidence_threshold=0.9), 3),
        (6, dict(gen_length=16, top_k=1), 4),  # "greedy": top_k=1, temperature=1
        (8, dict(remasking_strategy=static, top_k=1), 5),
        (4, dict(remasking_strategy=static, denoising_steps=2, temperature=0.7), 6),
        (6, dict(remasking_strategy=static, denoising_steps=1), 7),  # k=4 > the 2 masks of block 1
        (5, dict(remasking_strategy=static, denoising_steps=2, top_k=1), 8),  # k=2 > 1 mask at step 2
        (5, dict(denoising_steps=2, confidence_threshold=0.95), 9),
        (3, dict(remasking_strategy=seq), 10),
        (8, dict(remasking_strategy=seq, denoising_steps=2, top_k=5), 11),
        (7, dict(top_k=10, temperature=0.8), 12),
        (7, dict(top_p=0.9), 13),
        (6, dict(remasking_strategy=static, top_k=20, top_p=0.8, temperature=0.6), 14),
        (6, dict(block_length=8, gen_length=16, confidence_threshold=0.8), 15),
        (16, dict(block_length=8, denoising_steps=8, gen_length=16, remasking_strategy=seq), 16),
        (6, dict(gen_length=32, top_k=1, stopping_criteria_idx=[STOP]), 17),
        (6, dict(gen_length=32, remasking_strategy=static, stopping_criteria_idx=[STOP, PAD_ID]), 18),
        (6, dict(gen_length=32, stopping_criteria_idx=[STOP], confidence_threshold=0.6), 19),
        (3, dict(gen_length=24, stopping_criteria_idx=[stop], remasking_strategy=seq), 25),
        (4, dict(denoising_steps=3, confidence_threshold=0.95), 20),
        (5, dict(block_length=2, denoising_steps=2, gen_length=8), 21),
        (9, dict(confidence_threshold=0.3, gen_length=16), 22),
        (6, dict(temperature=1.5, gen_length=16), 23),
        (12, dict(block_length=8, denoising_steps=3, gen_length=20, top_p=0.95, temperature=0.9), 24),
    ]


def sdar_cases(off: dict[str, Any], model: torch.nn.Module, stop: int) -> list[dict[str, Any]]:
    counter = ForwardCounter(model)
    generate = off["sdar_generate"].block_diffusion_generate
    cases = []
    for i, (n, over, seed) in enumerate(sdar_specs(stop)):
        prompt = prompt_of(n, 100 + i)
        kwargs = {"mask_id": MASK_ID, **SDAR_DEFAULTS, **over}

        def call(prompt=prompt, kwargs=kwargs):
            x = torch.tensor([prompt])
            return generate(model, prompt={"input_ids": x}, **kwargs).tolist()

        if STOP in (kwargs["stopping_criteria_idx"] or []):
            torch.manual_seed(seed)
            kwargs["stopping_criteria_idx"] = None
            stop_id = later_token(call()[0][n:], kwargs["block_length"])
            kwargs["stopping_criteria_idx"] = [stop_id if s == STOP else s
                                               for s in over["stopping_criteria_idx"]]

        case = run_case(counter, "sdar.block_diffusion_generate", call, kwargs, [prompt], seed, None)
        notes = []
        if case["output"][0][:n] != prompt or counter.overwritten():
            notes.append("official bug: the scheduled k exceeds the block's masks, so top-k also picks "
                         "non-mask positions (confidence -inf) and overwrites committed tokens"
                         + (" (here prompt tokens)" if case["output"][0][:n] != prompt else "")
                         + " with new samples")
        stops = kwargs["stopping_criteria_idx"] or []
        if any(s in case["output"][0][n:] for s in stops):
            notes.append("a stop id occurs: decoding ends after the block holding it; "
                         "later blocks stay masks")
        if notes:
            case["note"] = "; ".join(notes)
        cases.append(case)
    return cases


NO_STOP = 151645
"""The official default stop_token (Qwen's <|im_end|>): outside the tiny vocabulary, so never emitted."""

FD_GEN_DEFAULTS = dict(max_new_tokens=16, mask_id=MASK_ID, threshold=0.9, small_block_size=4, block_size=8,
                       stop_token=NO_STOP, top_p=0.95, temperature=0.0, use_block_cache=False)
FD_BATCH_DEFAULTS = dict(block_size=8, max_new_tokens=16, small_block_size=4, mask_id=MASK_ID, threshold=0.9,
                         stop_token=NO_STOP, use_block_cache=False, top_p=0.95, temperature=0.0)


def fd_generate_specs(stop: int) -> list[tuple[int, dict[str, Any], int | None]]:
    """(prompt length, kwargs overriding FD_GEN_DEFAULTS, seed) of each ``generate`` case (bd_size 8)."""
    return [
        (5, {}, None),
        (8, {}, None),  # prompt length == block_size: the official code never feeds the prompt
        (11, dict(max_new_tokens=24, threshold=0.7), None),
        (16, {}, None),
        (11, dict(small_block_size=8, threshold=1), None),
        (11, dict(small_block_size=2, threshold=0.8, use_block_cache=True), None),
        (16, dict(use_block_cache=True), None),
        (5, dict(use_block_cache=True, max_new_tokens=24), None),
        (11, dict(temperature=0.8), 31),
        (11, dict(temperature=1.0, top_p=0.7, use_block_cache=True), 32),
        (16, dict(temperature=0.5, top_p=1.0), 33),
        (11, dict(stop_token=stop, max_new_tokens=48), None),
        (11, dict(stop_token=STOP, max_new_tokens=48, use_block_cache=True), None),
        (6, dict(stop_token=STOP, max_new_tokens=48, temperature=0.8), 34),
        (9, dict(stop_token=STOP, max_new_tokens=40, threshold=0.5, small_block_size=2), None),
        (14, dict(max_new_tokens=24, threshold=0.5, use_block_cache=True), None),
        (6, dict(block_size=4, small_block_size=2), None),
        (20, dict(block_size=16, small_block_size=8, max_new_tokens=32, threshold=0.8), None),
        (3, dict(max_new_tokens=8, threshold=0.5), None),
        (8, dict(stop_token=stop, max_new_tokens=32, threshold=0.8), None),
        (13, dict(max_new_tokens=20, threshold=0.6, small_block_size=8, use_block_cache=True), None),
    ]


def fd_batch_specs(stop: int) -> list[tuple[list[int], dict[str, Any], int | None]]:
    """(prompt lengths, kwargs overriding FD_BATCH_DEFAULTS, seed) of each ``batch_sample`` case."""
    return [
        ([5, 9], {}, None),
        ([11, 14, 19], dict(stop_token=STOP, threshold=0.8, max_new_tokens=32), None),
        ([11, 14, 19], dict(stop_token=stop, use_block_cache=True, max_new_tokens=32), None),
        ([16, 20], dict(max_new_tokens=24), None),
        ([9, 13], dict(stop_token=STOP, max_new_tokens=40, small_block_size=2, threshold=0.5), None),
        ([12, 10, 17], dict(threshold=0.7, max_new_tokens=24, use_block_cache=True), None),
        ([10], dict(temperature=0.8, max_new_tokens=24), 41),
        ([6, 7], dict(block_size=4, small_block_size=2, stop_token=STOP, max_new_tokens=24), None),
        ([13, 8, 21], dict(stop_token=STOP, max_new_tokens=32, use_block_cache=True, small_block_size=2),
         None),
    ]


BUG_PROMPT_IS_BLOCK = ("official bug: the prompt length equals block_size, so generate neither prefills it "
                       "(prefill needs length > block_size) nor feeds it with the block: the first block is "
                       "all masks at positions block_size.. and the model never sees the prompt")
QUIRK_BLOCK_CACHE = ("use_block_cache: a small-block forward shifts logits inside the fed small block only, "
                     "so its first position uses its own logits (not the previous position's)")


def fd_cases(off: dict[str, Any], model: torch.nn.Module, stop: int) -> list[dict[str, Any]]:
    counter = ForwardCounter(model)
    cases = []
    for i, (n, over, seed) in enumerate(fd_generate_specs(stop)):
        prompt = prompt_of(n, 200 + i)
        kwargs = {**FD_GEN_DEFAULTS, **over}

        def call(prompt=prompt, kwargs=kwargs):
            return model.generate(torch.tensor([prompt]), **kwargs).tolist()

        resolve_stop(kwargs, call, n, seed)

        notes = [BUG_PROMPT_IS_BLOCK] if n == kwargs["block_size"] else []
        if kwargs["use_block_cache"] and kwargs["small_block_size"] < kwargs["block_size"]:
            notes.append(QUIRK_BLOCK_CACHE)
        note = "; ".join(notes)
        cases.append(run_case(counter, "fast_dllm_v2.generate", call, kwargs, [prompt], seed, note))
    sample = types.MethodType(off["fd_generation"].Fast_dLLM_QwenForCausalLM.batch_sample, model)
    for i, (lengths, over, seed) in enumerate(fd_batch_specs(stop)):
        prompts = [prompt_of(n, 300 + 10 * i + j) for j, n in enumerate(lengths)]
        kwargs = {**FD_BATCH_DEFAULTS, **over, "min_len": min(lengths), "seq_len": list(lengths)}

        def call(prompts=prompts, kwargs=kwargs):
            width = max(len(p) for p in prompts)  # eval.py pads every row with mask_id to the longest
            x = torch.tensor([p + [kwargs["mask_id"]] * (width - len(p)) for p in prompts])
            tok = types.SimpleNamespace(pad_token_id=PAD_ID)
            out = sample(x, tok, **{**kwargs, "seq_len": torch.tensor(kwargs["seq_len"])})
            return [out[j].tolist() for j in range(len(prompts))]

        resolve_stop(kwargs, call, lengths[0], seed)

        notes = ["rows padded with mask_id to the longest prompt, as eval.py does; tokenizer stub has "
                 f"pad_token_id={PAD_ID}; output: one list per row, batch_sample's dict in row order"]
        if kwargs["use_block_cache"] and kwargs["small_block_size"] < kwargs["block_size"]:
            notes.append(QUIRK_BLOCK_CACHE)
        case = run_case(counter, "fast_dllm_v2.batch_sample", call, kwargs, prompts, seed, "; ".join(notes))
        case["pad_token_id"] = PAD_ID
        cases.append(case)
    return cases


def write_cases(folder: Path, family: str, source: dict[str, Any], cases: list[dict[str, Any]]) -> None:
    import transformers

    doc = {"family": family, "generator": "tools/make_bd_fixtures_qwen.py",
           "official": {**source, "transformers": transformers.__version__, "torch": torch.__version__},
           "cases": cases}
    (folder / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag in ("--sdar-dir", "--fdv2-model-dir", "--fdv2-decoder-dir", "--out"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    off = import_official(args)
    out = Path(args.out)
    plans = (("sdar", build_sdar, sdar_logits, [10, 7, 12], 4),
             ("fast_dllm_v2", build_fdv2, fdv2_logits, [13, 16, 5], 8))
    for family, build, logits_fn, lengths, block in plans:
        model = build(off, block)
        stop = frequent_token(model, logits_fn)
        model.config.eos_token_id = stop
        folder = out / family
        save_checkpoint(model, folder / "checkpoint")
        write_logits(model, logits_fn, lengths, folder, seed=11)
        if family == "sdar":
            cases, source = sdar_cases(off, model, stop), SDAR_SOURCE
        else:
            cases = fd_cases(off, model, stop)
            source = {"model": FDV2_MODEL_SOURCE, "decoder": FDV2_DECODER_SOURCE}
        write_cases(folder, family, source, cases)
        print(f"{family}: stop/eos id {stop}, {len(cases)} cases, nfe {[c['nfe'] for c in cases]}")


if __name__ == "__main__":
    main()
