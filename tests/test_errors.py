"""Bad settings, bad inputs and bad checkpoints: one clear error each."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fixture_cases import FIXTURES
from safetensors.torch import save_file

import streaming_dllm as sd
from streaming_dllm.loading import CheckpointError

BAD_SETTINGS = [
    (dict(gen_length=100, block_length=32), "gen_length", "multiple of block_length"),
    (dict(gen_length=0), "gen_length", "positive integer"),
    (dict(block_length=-4), "block_length", "positive integer"),
    (dict(gen_length=64, block_length=16, steps=6), "steps", "multiple of the number of blocks"),
    (dict(steps=0), "steps", "positive integer"),
    (dict(unmask="greedy"), "unmask", "one of"),
    (dict(cache="full"), "cache", "one of"),
    (dict(remasking="lowest"), "remasking", "one of"),
    (dict(threshold=0.0), "threshold", "(0, 1]"),
    (dict(threshold=1.5), "threshold", "(0, 1]"),
    (dict(alpha=-0.1), "alpha", "[0, 1]"),
    (dict(factor=0), "factor", "> 0"),
    (dict(window=-1), "window", ">= 0"),
    (dict(window=2.5), "window", ">= 0"),
    (dict(tail_keep=-1), "tail_keep", ">= 0"),
    (dict(early_exit="yes"), "early_exit", "bool"),
    (dict(temperature=-1.0), "temperature", "[0, 100]"),
    (dict(mask_id=-5), "mask_id", "non-negative"),
    (dict(eos_id="2"), "eos_id", "non-negative"),
    (dict(gen_length=True), "gen_length", "positive integer"),
]


@pytest.mark.parametrize(
    "kwargs,field,rule", BAD_SETTINGS, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD_SETTINGS)]
)
def test_bad_settings(kwargs, field, rule):
    with pytest.raises(ValueError) as err:
        sd.DecodeConfig(**kwargs)
    assert f"DecodeConfig.{field}=" in str(err.value)
    assert rule in str(err.value)


def test_bad_preset_and_unknown_field():
    with pytest.raises(ValueError, match="unknown preset 'fastest'"):
        sd.DecodeConfig.preset("fastest")
    with pytest.raises(ValueError, match=r"no field\(s\) \['windows'\]"):
        sd.DecodeConfig.preset("streaming", windows=3)
    with pytest.raises(ValueError, match="DecodeConfig.alpha"):
        sd.DecodeConfig.preset("streaming").replace(alpha=2.0)


BAD_INPUTS = [
    ([], "empty batch"),
    ([[]], "prompt 0 is empty"),
    ([[1, 2, 5000]], "outside the vocabulary"),
    ([[-1, 2]], "outside the vocabulary"),
    (torch.zeros(2, 2, 2, dtype=torch.long), "expected shape"),
]


@pytest.mark.parametrize("ids,message", BAD_INPUTS)
def test_bad_inputs(llada_tiny, ids, message):
    cfg = sd.DecodeConfig(gen_length=16, block_length=16)
    with pytest.raises(ValueError, match=message):
        sd.generate(llada_tiny, ids, cfg)


def test_right_padded_attention_mask_is_refused(llada_tiny):
    ids = torch.tensor([[990, 980, 991]])
    with pytest.raises(ValueError, match="left-padded"):
        sd.generate(
            llada_tiny,
            ids,
            sd.DecodeConfig(gen_length=16, block_length=16),
            attention_mask=torch.tensor([[1, 1, 0]]),
        )


def _copy_checkpoint(tmp_path, arch="llada"):
    dst = tmp_path / "ckpt"
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURES / f"{arch}-tiny" / name, dst / name)
    return dst


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def _pickle_only(folder):
    state = sd.load_model(folder).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


def _wrong_shape(folder):
    state = sd.load_model(folder).state_dict()
    state["model.transformer.wte.weight"] = torch.zeros(7, 128)
    save_file(dict(state), str(folder / "model.safetensors"))


def _missing_weight(folder):
    state = dict(sd.load_model(folder).state_dict())
    state.pop("model.transformer.ln_f.weight")
    save_file(state, str(folder / "model.safetensors"))


BAD_CHECKPOINTS = [
    ("no config", lambda f: (f / "config.json").unlink(), "no config.json"),
    ("invalid json", lambda f: (f / "config.json").write_text("{oops"), "invalid JSON"),
    (
        "unknown family",
        lambda f: _edit_config(f, model_type="gpt2", architectures=["GPT2LMHeadModel"]),
        "unsupported model",
    ),
    (
        "remote code only",
        lambda f: _edit_config(
            f, model_type="mystery", architectures=["MysteryLM"], auto_map={"AutoModel": "m.M"}
        ),
        "never executes checkpoint code",
    ),
    ("no weights", lambda f: (f / "model.safetensors").unlink(), "no weights found"),
    ("pickle only", _pickle_only, "pickles can run code"),
    ("wrong shape", _wrong_shape, "has shape"),
    ("missing weight", _missing_weight, "missing ['model.transformer.ln_f.weight']"),
    ("missing config key", lambda f: _edit_config(f, d_model=None), "missing or invalid key"),
]


@pytest.mark.parametrize("name,breaker,message", BAD_CHECKPOINTS, ids=[b[0] for b in BAD_CHECKPOINTS])
def test_bad_checkpoints(tmp_path, name, breaker, message):
    folder = _copy_checkpoint(tmp_path)
    breaker(folder)
    with pytest.raises(CheckpointError) as err:
        sd.load_model(folder)
    assert message in str(err.value)


def test_pickle_opt_in_loads_the_same_model(tmp_path):
    folder = _copy_checkpoint(tmp_path)
    _pickle_only(folder)
    model = sd.load_model(folder, allow_pickle=True)
    ref = sd.load_model(FIXTURES / "llada-tiny")
    ids = torch.tensor([[990, 980, 900, 982, 129, 992, 981]])
    pos = torch.arange(ids.shape[1])[None]
    assert torch.equal(model(ids, pos), ref(ids, pos))


BAD_LOAD_ARGS = [
    (dict(name_or_path="./no/such/dir"), "no such folder"),
    (dict(name_or_path="a/b/c"), "no such folder"),
    (dict(device="tpu9"), "device"),
    (dict(dtype="float8"), "dtype"),
]


@pytest.mark.parametrize("kwargs,message", BAD_LOAD_ARGS)
def test_bad_load_arguments(kwargs, message):
    args = {"name_or_path": FIXTURES / "llada-tiny", **kwargs}
    with pytest.raises(ValueError, match=message):
        sd.load_model(**args)


def test_checkpoint_without_tokenizer_says_so():
    model = sd.load_model(FIXTURES / "llada-tiny")
    with pytest.raises(CheckpointError, match="no tokenizer"):
        sd.load_tokenizer(model)


def test_sharded_checkpoint_and_bfloat16(tmp_path):
    ref = sd.load_model(FIXTURES / "dream-tiny")
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(FIXTURES / "dream-tiny" / "config.json", folder / "config.json")
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    names = sorted(state)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / fname))
        weight_map.update({k: fname for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model = sd.load_model(folder)
    ids = torch.tensor([[987, 970, 910, 972, 229, 988, 971]])
    pos = torch.arange(ids.shape[1])[None]
    assert torch.equal(model(ids, pos), ref(ids, pos))
    bf16 = sd.load_model(folder, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    assert bf16(ids, pos).argmax(-1).shape == (1, ids.shape[1])


def test_tokenizer_encodings_are_accepted_and_bad_rows_named(llada_tiny):
    cfg = sd.DecodeConfig(gen_length=16, block_length=16)
    ids = [990, 980, 900, 982, 129, 992, 981]
    plain = sd.generate(llada_tiny, [ids], cfg)
    encoded = sd.generate(llada_tiny, [{"input_ids": ids, "attention_mask": [1] * len(ids)}], cfg)
    batch_encoding = sd.generate(llada_tiny, {"input_ids": [ids], "attention_mask": [[1] * len(ids)]}, cfg)
    assert encoded.sequences.tolist() == plain.sequences.tolist() == batch_encoding.sequences.tolist()
    with pytest.raises(ValueError, match="sequence of integer token ids"):
        sd.generate(llada_tiny, [["input_ids"]], cfg)


def test_loaded_weights_do_not_follow_the_file(tmp_path):
    folder = _copy_checkpoint(tmp_path)
    model = sd.load_model(folder)
    before = model.model.transformer.wte.weight.clone()
    state = dict(model.state_dict())
    state["model.transformer.wte.weight"] = torch.zeros_like(before)
    save_file({k: v.clone() for k, v in state.items()}, str(tmp_path / "other.safetensors"))
    shutil.copyfile(tmp_path / "other.safetensors", folder / "model.safetensors")  # same inode, rewritten
    assert torch.equal(model.model.transformer.wte.weight, before)
