"""``DecodeConfig.from_reference``: the config that reproduces one official decoder call.

Users moving from the research code paste the keyword arguments of their call and get the same
tokens. Each official function is one entry of ``REFERENCES``, keyed by a dotted name; its
translator reads the call's own arguments (with the function's own defaults) and returns the
``DecodeConfig`` fields. Arguments without effect in that call are accepted; an argument we
cannot honour is one ``ConfigError`` naming it.

Where an official decoder has a bug we do the right thing instead (see ``docs/references.md``):
SDAR's ``topk`` with k above the block's remaining masks re-writes prompt or committed tokens
(we commit at most the masks left); Fast-dLLM v2 drops the prompt when its length equals the
block size (we keep it); SDAR at temperature 0 divides by zero (we take the argmax).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import ConfigError

Translator = Callable[[dict[str, Any]], dict[str, Any]]


def _take(kwargs: dict[str, Any], defaults: dict[str, Any], name: str) -> dict[str, Any]:
    """The call's arguments over the function's defaults; unknown arguments are refused."""
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ConfigError(unknown[0], f"{name}: no argument {unknown[0]!r}; it takes {sorted(defaults)}")
    return {**defaults, **kwargs}


def _refuse(arg: str, name: str, why: str) -> ConfigError:
    return ConfigError(arg, f"{name}: {arg}: {why}")


def _stop(ids: Any, name: str, arg: str) -> int | None:
    if ids is None:
        return None
    if isinstance(ids, (list, tuple)):
        if len(ids) != 1:
            raise _refuse(arg, name, f"{list(ids)}: one stop id is supported (the EOS id), got {len(ids)}")
        ids = ids[0]
    return int(ids)


def _steps_per_block(steps: int, block_length: int) -> int:
    """More steps than positions change nothing (the extra steps have nothing to commit)."""
    return max(1, min(int(steps), block_length))


# ---------------------------------------------------------------- block-diffusion families
_SDAR = dict(mask_id=None, gen_length=128, block_length=8, denoising_steps=8, temperature=1.0, top_k=0,
             top_p=1.0, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.85,
             eb_threshold=None, stopping_criteria_idx=None)
_SDAR_RULES = {"low_confidence_dynamic": "threshold_topk", "low_confidence_static": "steps",
               "sequential": "sequential"}


def _sdar(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = "sdar.block_diffusion_generate"
    a = _take(kwargs, _SDAR, name)
    if a["remasking_strategy"] not in _SDAR_RULES:
        raise _refuse("remasking_strategy", name, f"{a['remasking_strategy']!r} is not supported; "
                      f"use one of {sorted(_SDAR_RULES)}")
    bs, gen = int(a["block_length"]), int(a["gen_length"])
    if gen % bs:
        raise _refuse("gen_length", name, f"{gen}: must be a multiple of block_length={bs}")
    eos = _stop(a["stopping_criteria_idx"], name, "stopping_criteria_idx")
    return dict(gen_length=gen, block_length=bs, cache="prefix", span="cover",
                steps=_steps_per_block(a["denoising_steps"], bs) * max(1, gen // bs),
                unmask=_SDAR_RULES[a["remasking_strategy"]], threshold=float(a["confidence_threshold"]),
                temperature=float(a["temperature"]), top_k=int(a["top_k"] or 0), top_p=float(a["top_p"]),
                mask_id=a["mask_id"], eos_id=eos, early_exit=eos is not None, early_exit_at="block")


_FDV2 = dict(max_new_tokens=None, max_length=None, tokenizer=None, mask_id=151665, threshold=1,
             small_block_size=8, block_size=32, stop_token=151645, stopping_criteria=None, top_p=0.95,
             temperature=0, use_block_cache=False, return_dict_in_generate=False, output_scores=False,
             output_hidden_states=False)
_FDV2_BATCH = dict(tokenizer=None, block_size=None, max_new_tokens=None, small_block_size=None, min_len=None,
                   seq_len=None, mask_id=151665, threshold=0.95, stop_token=151645, use_block_cache=False,
                   top_p=0.95, temperature=0.0)


def _fast_dllm_v2(a: dict[str, Any], name: str) -> dict[str, Any]:
    if a["max_new_tokens"] is None:
        raise _refuse("max_new_tokens", name, "give max_new_tokens (max_length needs the prompt's length)")
    bs, sub = int(a["block_size"]), int(a["small_block_size"])
    blocks = int(a["max_new_tokens"]) // bs
    if blocks < 1:
        raise _refuse("max_new_tokens", name, f"{a['max_new_tokens']} is less than one block of {bs}: "
                      "the reference decodes nothing")
    eos = _stop(a["stop_token"], name, "stop_token")
    return dict(gen_length=blocks * bs, block_length=bs, sub_block_length=sub, span="blocks",
                cache="dual" if a["use_block_cache"] else "prefix", unmask="threshold_topk",
                threshold=float(a["threshold"]), steps=None, temperature=float(a["temperature"]),
                top_p=float(a["top_p"]), mask_id=a["mask_id"], eos_id=eos, early_exit=eos is not None,
                early_exit_at="eos")


def _fdv2_generate(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = "fast_dllm_v2.generate"
    a = _take(kwargs, _FDV2, name)
    if a["stopping_criteria"] is not None:
        raise _refuse("stopping_criteria", name, "transformers stopping criteria are not supported; "
                      "use stop_token")
    return _fast_dllm_v2(a, name)


def _fdv2_batch(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = "fast_dllm_v2.batch_sample"
    a = _take(kwargs, _FDV2_BATCH, name)
    for arg in ("block_size", "max_new_tokens", "small_block_size"):
        if a[arg] is None:
            raise _refuse(arg, name, "required")
    return _fast_dllm_v2(a, name)


_LLADA2 = dict(temperature=0.0, block_length=32, steps=32, gen_length=2048, top_p=None, top_k=None,
               eos_early_stop=False, minimal_topk=1, threshold=0.95, eos_id=156892, mask_id=156895)
_LLADA21 = {**_LLADA2, "editing_threshold": 0.9, "max_post_steps": 16, "num_to_transfer": 1}


def _llada2_common(a: dict[str, Any], name: str) -> dict[str, Any]:
    bs, gen = int(a["block_length"]), int(a["gen_length"])
    if gen % bs:
        raise _refuse("gen_length", name, f"{gen}: must be a multiple of block_length={bs}")
    eos = a["eos_id"]
    return dict(gen_length=gen, block_length=bs, cache="prefix", span="cover", unmask="threshold_topk",
                threshold=float(a["threshold"]), temperature=float(a["temperature"]),
                top_k=int(a["top_k"] or 0), top_p=1.0 if a["top_p"] is None else float(a["top_p"]),
                mask_id=a["mask_id"], eos_id=eos)


def _llada2(kwargs: dict[str, Any]) -> dict[str, Any]:
    a = _take(kwargs, _LLADA2, "llada2.generate")
    out = _llada2_common(a, "llada2.generate")
    bs, gen = out["block_length"], out["gen_length"]
    steps = min(int(a["steps"]), gen // max(1, int(a["minimal_topk"])))
    out["steps"] = _steps_per_block(steps, bs) * max(1, gen // bs)
    # The reference stops after any block holding EOS; eos_early_stop also stops mid-block.
    out["early_exit"] = a["eos_id"] is not None
    out["early_exit_at"] = "eos" if a["eos_early_stop"] else "block"
    return out


def _llada21(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = "llada2.1.generate"
    a = _take(kwargs, _LLADA21, name)
    out = _llada2_common(a, name)
    bs, gen, k = out["block_length"], out["gen_length"], int(a["num_to_transfer"])
    if k < 1 or bs % k:
        raise _refuse("num_to_transfer", name, f"{k}: must be a positive divisor of block_length={bs}")
    out["steps"] = (bs // k) * max(1, gen // bs)
    out["edit_threshold"] = float(a["editing_threshold"])
    out["max_post_steps"] = int(a["max_post_steps"])
    out["early_exit"] = bool(a["eos_early_stop"]) and a["eos_id"] is not None
    out["early_exit_at"] = "block"
    return out


# ---------------------------------------------------------------- full-attention families
_LLADA_GEN = dict(steps=128, gen_length=128, block_length=128, temperature=0.0, remasking="low_confidence",
                  mask_id=126336, threshold=None, factor=None)
_STREAMING_LLADA = {**_LLADA_GEN, "window_size": None, "confidence_alpha": 0.0, "eos_id": 126081}


def _llada_rule(a: dict[str, Any], name: str) -> dict[str, Any]:
    if a["remasking"] not in ("low_confidence", "random"):
        raise _refuse("remasking", name, f"{a['remasking']!r}: use low_confidence or random")
    base = dict(gen_length=int(a["gen_length"]), block_length=int(a["block_length"]),
                temperature=float(a["temperature"]), remasking=a["remasking"], mask_id=a["mask_id"])
    if a["factor"] is not None:
        return {**base, "unmask": "factor", "factor": float(a["factor"])}
    if a["threshold"] is not None:
        return {**base, "unmask": "threshold", "threshold": float(a["threshold"])}
    return {**base, "unmask": "steps", "steps": int(a["steps"])}


def _llada_fn(cache: str, name: str, defaults: dict[str, Any]) -> Translator:
    def translate(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**_llada_rule(_take(kwargs, defaults, name), name), "cache": cache}
    return translate


def _streaming_llada(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = "streaming_dllm.llada.generate_with_prefix_cache"
    a = _take(kwargs, _STREAMING_LLADA, name)
    out = {**_llada_rule(a, name), "cache": "prefix", "early_exit": True, "eos_id": a["eos_id"]}
    out["window"] = a["window_size"]
    if out["unmask"] == "threshold":
        out.update(unmask="dynamic", alpha=float(a["confidence_alpha"] or 0.0))
    return out


_DREAM = dict(max_new_tokens=None, output_history=False, return_dict_in_generate=False, steps=512, eps=1e-3,
              alg="origin", alg_temp=0.0, temperature=0.0, top_p=None, top_k=None, threshold=0.9,
              mask_token_id=None)
_DREAM_BLOCK = {**_DREAM, "block_length": 32, "dual_cache": False}
_STREAMING_DREAM = {**_DREAM_BLOCK, "eos": None, "window_size": None, "confidence_alpha": 0.0}


def _dream_rule(a: dict[str, Any], name: str, blocks: bool) -> dict[str, Any]:
    for arg in ("top_p", "top_k"):
        if a[arg] is not None:
            raise _refuse(arg, name, "Dream's top-p/top-k filters are not supported (use None)")
    if a["alg_temp"]:
        raise _refuse("alg_temp", name, "confidence noise (alg_temp > 0) is not supported")
    if a["max_new_tokens"] is None:
        raise _refuse("max_new_tokens", name, "required")
    gen = int(a["max_new_tokens"])
    out = dict(gen_length=gen, block_length=int(a["block_length"]) if blocks else gen,
               temperature=float(a["temperature"]), mask_id=a["mask_token_id"])
    if a["alg"] == "confidence_threshold":
        if not blocks:
            raise _refuse("alg", name, "'confidence_threshold' without blocks (its quota rule) is not "
                          "supported; use the block decoder")
        return {**out, "unmask": "threshold", "threshold": float(a["threshold"])}
    remasking = {"entropy": "entropy", "maskgit_plus": "low_confidence", "topk_margin": "margin"}
    if a["alg"] not in remasking:
        raise _refuse("alg", name, f"{a['alg']!r}: use entropy, maskgit_plus, topk_margin or "
                      "confidence_threshold")
    return {**out, "unmask": "steps", "steps": int(a["steps"]), "remasking": remasking[a["alg"]]}


def _dream(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = "dream.diffusion_generate"
    return _dream_rule(_take(kwargs, _DREAM, name), name, blocks=False)


def _fast_dllm_dream(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = "fast_dllm.dream.diffusion_generate"
    a = _take(kwargs, _DREAM_BLOCK, name)
    return {**_dream_rule(a, name, blocks=True), "cache": "dual" if a["dual_cache"] else "prefix"}


def _streaming_dream(kwargs: dict[str, Any]) -> dict[str, Any]:
    name = "streaming_dllm.dream.diffusion_generate"
    a = _take(kwargs, _STREAMING_DREAM, name)
    out = {**_dream_rule(a, name, blocks=True), "cache": "dual" if a["dual_cache"] else "prefix"}
    out.update(window=a["window_size"], early_exit=True, eos_id=a["eos"])
    if out["unmask"] == "threshold":
        out.update(unmask="dynamic", alpha=float(a["confidence_alpha"] or 0.0))
    return out


REFERENCES: dict[str, Translator] = {
    "sdar.block_diffusion_generate": _sdar,
    "fast_dllm_v2.generate": _fdv2_generate,
    "fast_dllm_v2.batch_sample": _fdv2_batch,
    "llada2.generate": _llada2,
    "llada2.1.generate": _llada21,
    "fast_dllm.llada.generate": _llada_fn("none", "fast_dllm.llada.generate", _LLADA_GEN),
    "fast_dllm.llada.generate_with_prefix_cache": _llada_fn(
        "prefix", "fast_dllm.llada.generate_with_prefix_cache", _LLADA_GEN),
    "fast_dllm.llada.generate_with_dual_cache": _llada_fn(
        "dual", "fast_dllm.llada.generate_with_dual_cache", _LLADA_GEN),
    "streaming_dllm.llada.generate": _llada_fn("none", "streaming_dllm.llada.generate", _LLADA_GEN),
    "streaming_dllm.llada.generate_with_dual_cache": _llada_fn(
        "dual", "streaming_dllm.llada.generate_with_dual_cache", _LLADA_GEN),
    "streaming_dllm.llada.generate_with_prefix_cache": _streaming_llada,
    "dream.diffusion_generate": _dream,
    "fast_dllm.dream.diffusion_generate": _fast_dllm_dream,
    "streaming_dllm.dream.diffusion_generate": _streaming_dream,
}
"""Official decoder calls by name (``docs/references.md`` lists their sources and differences)."""


def reference_fields(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``DecodeConfig`` fields of one official call (``ConfigError`` naming a bad argument)."""
    if name not in REFERENCES:
        raise ConfigError("reference", f"unknown reference {name!r}; known: {sorted(REFERENCES)}")
    return REFERENCES[name](dict(kwargs))
