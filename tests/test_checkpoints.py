"""Loader-level hardening: broken files are refused naming the file, weights stay inside the folder."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import warnings

import pytest
import torch
from fixture_cases import FIXTURES
from safetensors.torch import load_file, save_file

import streaming_dllm as sd
from streaming_dllm.loading import (
    BUILTIN_DIR,
    CheckpointError,
    CheckpointWarning,
    read_safetensors_header,
)


def _copy(tmp_path, arch="llada", name="ckpt"):
    dst = tmp_path / name
    dst.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURES / f"{arch}-tiny" / f, dst / f)
    return dst


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _header(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _refused(folder, *needles, **kwargs):
    with pytest.raises(CheckpointError) as err:
        sd.load_model(folder, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# ------------------------------------------------------------------ safetensors files
BAD_WEIGHTS = [
    ("empty", b"", "truncated or empty"),
    ("truncated header length", b"\x10\x00\x00", "truncated or empty"),
    ("random bytes", bytes(range(256)) * 64, "header length"),
    ("2^62 header length", struct.pack("<Q", 2**62) + b"{}", "exceeds the file size"),
    ("header not JSON", struct.pack("<Q", 5) + b"{oops", "not valid JSON"),
    ("header not UTF-8", struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "not valid JSON"),
    ("header a list", _header([]), "not a JSON object"),  # type: ignore[arg-type]
    ("unknown dtype", _header({"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
     "unknown dtype 'F7'"),
    ("negative shape", _header({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "invalid shape"),
    ("bool shape", _header({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4),
     "invalid shape"),
    ("huge shape", _header({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}},
                           b"\0" * 4), "needs"),
    ("offsets past the end", _header({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2**40]}},
                                     b"\0" * 4), "outside the 4 data bytes"),
    ("offsets not ints", _header({"w": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}, b"\0" * 4),
     "data_offsets"),
    ("overlapping", _header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                             "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8),
     "overlaps or leaves a gap"),
    ("trailing data", _header({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8),
     "cover 4 of the 8"),
    ("tensor not an object", _header({"w": [1, 2]}), "expected an object"),
]


@pytest.mark.parametrize("name,data,message", BAD_WEIGHTS, ids=[b[0] for b in BAD_WEIGHTS])
def test_bad_safetensors_files_are_named(tmp_path, name, data, message):
    folder = _copy(tmp_path)
    (folder / "model.safetensors").write_bytes(data)
    start = time.perf_counter()
    msg = _refused(folder, "model.safetensors", message)
    assert str(folder / "model.safetensors") in msg
    assert time.perf_counter() - start < 2


def test_header_reader_agrees_with_safetensors(tmp_path):
    path = FIXTURES / "dream-tiny" / "model.safetensors"
    header = read_safetensors_header(path)
    tensors = load_file(str(path))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: s for k, (_, s) in header.items()}
    assert read_safetensors_header(BUILTIN_DIR / "model.safetensors")


def test_truncated_data_is_refused(tmp_path):
    folder = _copy(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _refused(folder, str(folder / "model.safetensors"))


def test_weights_as_a_directory(tmp_path):
    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    _refused(folder, str(folder / "model.safetensors"), "not a regular file")


def test_shape_mismatch_is_found_in_the_header(tmp_path, monkeypatch):
    folder = _copy(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["model.transformer.ln_f.weight"] = torch.zeros(64)
    save_file(state, str(folder / "model.safetensors"))

    def no_reading(*args, **kwargs):
        raise AssertionError("weights read before the header check")

    monkeypatch.setattr("streaming_dllm.loading._read_weights", no_reading)
    _refused(folder, "model.safetensors", "ln_f.weight has shape (64,)", "config.json implies (128,)")


# ------------------------------------------------------------------ config.json
BAD_CONFIGS = [
    ("n_heads 0", dict(n_heads=0), "n_heads=0"),
    ("d_model negative", dict(d_model=-128), "d_model=-128"),
    ("heads not dividing", dict(n_heads=3), "n_heads=3"),
    ("mask outside vocab", dict(mask_token_id=1000), "mask_token_id=1000"),
    ("mask negative", dict(mask_token_id=-1), "mask_token_id=-1"),
    ("mask a string", dict(mask_token_id="995"), "mask_token_id='995'"),
    ("eos outside vocab", dict(eos_token_id=5000), "eos_token_id=5000"),
    ("eos list outside vocab", dict(eos_token_id=[991, 5000]), "eos_token_id=[991, 5000]"),
    ("pad a float", dict(pad_token_id=1.5), "pad_token_id=1.5"),
    ("mask bool", dict(mask_token_id=True), "mask_token_id=True"),
    ("eos empty list", dict(eos_token_id=[]), "eos_token_id=[]"),
]


@pytest.mark.parametrize("name,changes,message", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_values_name_the_key(tmp_path, name, changes, message):
    folder = _copy(tmp_path)
    _edit_config(folder, **changes)
    _refused(folder, str(folder / "config.json"), message)


def test_special_ids_allowed_when_absent_or_null(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, pad_token_id=None, eos_token_id=[991, 990])
    assert sd.load_model(folder).eos_id == 991


BAD_CONFIG_FILES = [
    ("a list", b"[1, 2]", "expected a JSON object, got a JSON list"),
    ("a string", b'"llada"', "expected a JSON object, got a JSON str"),
    ("invalid JSON", b"{oops", "invalid JSON"),
    ("not UTF-8", b'{"model_type": "\xff\xfe"}', "not UTF-8"),
    ("empty", b"", "invalid JSON"),
    ("deep nesting", b"[" * 100000 + b"]" * 100000, "invalid JSON"),
    ("a 5000-digit integer", b'{"n_layers": ' + b"9" * 5000 + b"}", "invalid JSON"),
]


@pytest.mark.parametrize("name,data,message", BAD_CONFIG_FILES, ids=[b[0] for b in BAD_CONFIG_FILES])
def test_bad_config_files(tmp_path, name, data, message):
    folder = _copy(tmp_path)
    (folder / "config.json").write_bytes(data)
    _refused(folder, str(folder / "config.json"), message)


@pytest.mark.parametrize("arch,key", [("llada", "n_layers"), ("dream", "num_hidden_layers")])
def test_layer_count_checked_against_the_weights_before_building(tmp_path, arch, key):
    folder = _copy(tmp_path, arch)
    _edit_config(folder, **{key: 100000})
    start = time.perf_counter()
    _refused(folder, "config.json", f"{key}=100000", "layers 0-3 (4 in all)")
    assert time.perf_counter() - start < 1.0
    _edit_config(folder, **{key: 3})
    _refused(folder, f"{key}=3", "layers 0-3")


def test_weights_of_another_family_and_odd_layer_names(tmp_path):
    folder = _copy(tmp_path)
    shutil.copy(FIXTURES / "dream-tiny" / "model.safetensors", folder / "model.safetensors")
    _refused(folder, str(folder / "model.safetensors"), "do not match the llada architecture",
             "no weights under 'model.transformer.blocks.'")
    state = load_file(str(FIXTURES / "llada-tiny" / "model.safetensors"))
    state["model.transformer.blocks.\u00b2.x"] = torch.zeros(1)  # a digit to isdigit(), not to int()
    save_file(state, str(folder / "model.safetensors"))
    _refused(folder, "unexpected ['model.transformer.blocks.\u00b2.x']")


def test_nan_and_inf_weights_warn_naming_file_and_tensor(tmp_path):
    folder = _copy(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    w = state["model.transformer.ln_f.weight"]
    w[:10] = float("nan")
    w[10:12] = float("inf")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.warns(CheckpointWarning) as record:
        sd.load_model(folder)
    messages = [str(r.message) for r in record if issubclass(r.category, CheckpointWarning)]
    assert len(messages) == 1
    assert "model.safetensors: weight model.transformer.ln_f.weight has 12 NaN/inf values" in messages[0]
    assert "garbage" in messages[0]


def test_values_that_overflow_the_requested_dtype_warn(tmp_path):
    folder = _copy(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["model.transformer.ln_f.weight"][0] = 1e30
    save_file(state, str(folder / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        sd.load_model(folder)
    with pytest.warns(CheckpointWarning, match=r"has 1 NaN/inf values \(as float16\)"):
        sd.load_model(folder, dtype="float16")


def test_clean_checkpoints_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        sd.load_model("builtin")
        sd.load_model(FIXTURES / "dream-tiny")


# ------------------------------------------------------------------ shard index and confinement
def _shard(tmp_path, arch="dream"):
    """A two-shard copy of a fixture: (folder, weight_map)."""
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(FIXTURES / f"{arch}-tiny" / "config.json", folder / "config.json")
    state = load_file(str(FIXTURES / f"{arch}-tiny" / "model.safetensors"))
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(folder / fname))
        weight_map.update({k: fname for k in part})
    return folder, weight_map


def _write_index(folder, obj):
    (folder / "model.safetensors.index.json").write_text(json.dumps(obj))


BAD_INDEXES = [
    ("a list", [1], "expected a JSON object"),
    ("no weight_map", {"metadata": {}}, "weight_map must be an object"),
    ("weight_map a list", {"weight_map": ["a.safetensors"]}, "weight_map must be an object"),
    ("weight_map of ints", {"weight_map": {"w": 3}}, "weight_map must be an object"),
    ("empty weight_map", {"weight_map": {}}, "weight_map is empty"),
    ("missing shard", {"weight_map": {"w": "nope.safetensors"}}, "missing: ['nope.safetensors']"),
]


@pytest.mark.parametrize("name,obj,message", BAD_INDEXES, ids=[b[0] for b in BAD_INDEXES])
def test_bad_shard_index_is_named(tmp_path, name, obj, message):
    folder, _ = _shard(tmp_path)
    _write_index(folder, obj)
    _refused(folder, str(folder / "model.safetensors.index.json"), message)


def test_invalid_index_json_is_named(tmp_path):
    folder, _ = _shard(tmp_path)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ')
    _refused(folder, "model.safetensors.index.json", "invalid JSON")


def test_sharded_checkpoint_loads_and_weight_in_two_shards_is_refused(tmp_path):
    folder, weight_map = _shard(tmp_path)
    _write_index(folder, {"weight_map": weight_map})
    ref = sd.load_model(FIXTURES / "dream-tiny")
    model = sd.load_model(folder)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    first = next(k for k, v in weight_map.items() if v.startswith("model-00001"))
    second = folder / "model-00002-of-00002.safetensors"
    state = load_file(str(second))
    state[first] = model.state_dict()[first].clone()
    save_file(state, str(second))
    _refused(folder, f"weight {first} is also in")


def test_index_escaping_the_folder_is_refused(tmp_path):
    folder, weight_map = _shard(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = "model-00001-of-00002.safetensors"
    shutil.move(folder / shard, elsewhere / shard)
    for target in (f"../elsewhere/{shard}", str(elsewhere / shard)):
        _write_index(folder, {"weight_map": {k: target if v == shard else v for k, v in weight_map.items()}})
        _refused(folder, "model.safetensors.index.json", "outside the checkpoint folder")
    # a link inside the folder that points outside it is refused too
    (folder / shard).symlink_to(elsewhere / shard)
    _write_index(folder, {"weight_map": weight_map})
    _refused(folder, "model.safetensors.index.json", shard, "outside the checkpoint folder")


def test_single_file_symlink_outside_is_refused_inside_is_accepted(tmp_path):
    folder = _copy(tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.move(folder / "model.safetensors", outside)
    (folder / "model.safetensors").symlink_to(outside)
    _refused(folder, str(folder / "model.safetensors"), "outside the checkpoint folder")
    (folder / "model.safetensors").unlink()
    (folder / "weights").mkdir()
    shutil.move(outside, folder / "weights" / "real.safetensors")
    (folder / "model.safetensors").symlink_to("weights/real.safetensors")
    sd.load_model(folder)


def test_folder_reached_through_a_symlink_loads(tmp_path):
    folder = _copy(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(folder, target_is_directory=True)
    sd.load_model(link)


def _hub_snapshot(tmp_path, name="models--org--tiny"):
    """The layout of a huggingface_hub cache: snapshot files are links to ../../blobs/<hash>."""
    repo = tmp_path / "hub" / name
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f, blob in (("config.json", "c0ffee"), ("model.safetensors", "deadbeef")):
        shutil.copy(FIXTURES / "llada-tiny" / f, repo / "blobs" / blob)
        (snap / f).symlink_to(os.path.join("..", "..", "blobs", blob))
    return repo, snap


def test_hub_cache_snapshot_links_into_blobs_are_accepted(tmp_path):
    _, snap = _hub_snapshot(tmp_path)
    model = sd.load_model(snap)
    ref = sd.load_model(FIXTURES / "llada-tiny")
    assert torch.equal(model.model.transformer.wte.weight, ref.model.transformer.wte.weight)


def test_hub_cache_snapshot_link_outside_the_repo_is_refused(tmp_path):
    repo, snap = _hub_snapshot(tmp_path)
    other = tmp_path / "hub" / "models--evil--x" / "blobs"
    other.mkdir(parents=True)
    shutil.move(repo / "blobs" / "deadbeef", other / "deadbeef")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(other / "deadbeef")
    _refused(snap, "model.safetensors", "outside the checkpoint folder")


def test_a_folder_named_snapshots_outside_a_hub_cache_is_confined_to_itself(tmp_path):
    repo, snap = _hub_snapshot(tmp_path, name="not-a-hub-repo")
    _refused(snap, "model.safetensors", "outside the checkpoint folder")


def test_hub_ids_still_go_to_the_hub(monkeypatch, tmp_path):
    import huggingface_hub

    _, snap = _hub_snapshot(tmp_path)
    calls = []

    def fake_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = sd.load_model("org/tiny", revision="abc123")
    assert calls == [("org/tiny", "abc123")]
    assert model.name_or_path == str(snap)


# ------------------------------------------------------------------ tokenizer files
def _with_tokenizer(tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(BUILTIN_DIR, folder)
    return folder


BAD_TOKENIZER_FILES = [
    ("tokenizer.json", b"{oops", "invalid JSON"),
    ("tokenizer.json", b"[]", "expected a JSON object"),
    ("tokenizer.json", b'{"model": 3}', "cannot be loaded as a tokenizer"),
    ("tokenizer_config.json", b"{oops", "invalid JSON"),
    ("tokenizer_config.json", b"\xff\xfe", "not UTF-8"),
    ("tokenizer_config.json", b"[1]", "expected a JSON object"),
    ("special_tokens_map.json", b"{oops", "invalid JSON"),
]


@pytest.mark.parametrize("fname,data,message", BAD_TOKENIZER_FILES,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_TOKENIZER_FILES)])
def test_bad_tokenizer_files_are_named(tmp_path, fname, data, message):
    folder = _with_tokenizer(tmp_path)
    (folder / fname).write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        sd.load_tokenizer(folder)
    assert str(folder / fname) in str(err.value)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_builtin_tokenizer_loads():
    tok = sd.load_tokenizer("builtin")
    assert tok.mask_token == "<|mask|>"
    assert set(tok.all_special_tokens) >= {"<|eot|>", "<|system|>", "<|user|>", "<|assistant|>"}
