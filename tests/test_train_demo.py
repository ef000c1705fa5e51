"""Smoke test of the demo training package: a few steps of a tiny model, resume, export, reload."""

import json
import math

import pytest
import torch

import streaming_dllm as sd
from streaming_dllm import training
from streaming_dllm.tasks import arith


def _cfg(out, steps):
    return training.TrainConfig(
        out=str(out), d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, steps=steps, batch_size=4,
        batch_tokens=512, train_problems=64, pad_lengths=(64, 128), pad_weights=(0.5, 0.5), threads=1,
        save_every=2, eval_every=2, eval_n=2, warmup=2,
    )


def test_train_resume_export_and_load(tmp_path):
    out, export = tmp_path / "run", tmp_path / "ckpt"
    first = training.train(_cfg(out, 2), log=lambda _: None)
    assert first["step"] == 2
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert int(state["step"]) == 2

    second = training.train(_cfg(out, 4), export=str(export), log=lambda _: None)
    assert second["step"] == 4
    assert 0.0 <= second["dev_acc"] <= 1.0

    config = json.loads((export / "config.json").read_text())
    model = sd.load_model(str(export))
    tok = sd.load_tokenizer(model)
    assert config["mask_token_id"] == tok.mask_token_id
    assert config["eos_token_id"] == tok.eos_token_id
    assert config["pad_token_id"] == tok.pad_token_id
    assert model.mask_id == tok.mask_token_id
    ids = tok.apply_chat_template(arith.messages(arith.problems("dev", 1)[0]), add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    logits = model(torch.tensor([ids]), torch.arange(len(ids))[None])
    assert logits.shape == (1, len(ids), config["embedding_size"])
    assert torch.isfinite(logits).all()
    t = model.model.transformer  # trained tied, stored as two equal matrices of a plain LLaDA checkpoint
    assert torch.equal(t.wte.weight, t.ff_out.weight)
    assert t.wte.weight.data_ptr() != t.ff_out.weight.data_ptr()


def test_batches_keep_prompt_unmasked_and_pad_with_eos():
    ids, region = training.make_batch([[5, 6, 7], [8]], [[9, 2], [10, 11, 2]], pad_len=6, eos=1)
    assert ids.shape == (2, 9)
    assert ids[0].tolist() == [5, 6, 7, 9, 2, 1, 1, 1, 1]
    assert ids[1].tolist() == [8, 10, 11, 2, 1, 1, 1, 1, 1]
    assert region[0].tolist() == [False] * 3 + [True] * 6
    assert region[1].tolist() == [False] + [True] * 8


def test_loss_only_counts_masked_response_tokens():
    cfg = _cfg("unused", 1)
    vocab = 16
    model = sd.models.llada.LLaDAModel({
        "d_model": cfg.d_model, "n_heads": 2, "n_layers": 1, "mlp_hidden_size": 16, "vocab_size": vocab,
        "mask_token_id": 3, "eos_token_id": 1,
    })
    ids = torch.randint(4, vocab, (4, 10))
    no_region = torch.zeros_like(ids, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    assert training.diffusion_loss(model, ids, no_region, 3, 1e-3, gen).item() == 0.0
    region = torch.ones_like(no_region)
    loss = training.diffusion_loss(model, ids, region, 3, 1e-3, gen)
    assert loss.item() > 0
    loss.backward()
    assert model.model.transformer.wte.weight.grad is not None


def test_digit_factored_number_rows_train_shared_digits_and_export_plain(tmp_path):
    tok = sd.load_tokenizer("builtin")
    config = training.model_config(_cfg(tmp_path, 1), tok)
    model = sd.models.llada.LLaDAModel(config)
    training.init_weights(model, config["n_layers"])
    training.tie_embeddings(model)
    training.add_digit_embeddings(model, tok)
    t = model.model.transformer
    digits = t.wte.parametrizations.weight[0]
    free = t.wte.parametrizations.weight.original
    ids, values = training.number_tokens(tok)
    (seventeen,) = tok(" 17", add_special_tokens=False)["input_ids"]
    assert values[ids.index(seventeen)] == 17
    assert sorted(set(values)) == list(range(arith.MAX_VALUE + 1))
    added = (t.wte.weight - free).detach()
    for i, v in zip(ids, values, strict=True):
        assert torch.allclose(added[i], (digits.tens[v // 10] + digits.units[v % 10]).detach())
    others = torch.ones(len(free), dtype=torch.bool)
    others[ids] = False
    assert torch.equal(added[others], torch.zeros_like(added[others]))
    assert torch.equal(t.wte.weight, t.ff_out.weight)  # still tied

    x = torch.tensor([tok("so 12 + 7 = 19.", add_special_tokens=False)["input_ids"]])
    pos = torch.arange(x.shape[1])[None]
    model(x, pos).logsumexp(-1).sum().backward()
    assert digits.units.grad is not None and digits.units.grad.abs().sum() > 0

    training.save_checkpoint(model, config, tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    assert not any("parametrizations" in k for k in state)
    plain = sd.models.llada.LLaDAModel(config)
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(plain(x, pos), model(x, pos))


def test_suffix_rows_mask_a_tail_of_the_response_with_ratio_t():
    region = torch.ones(64, 40, dtype=torch.bool)
    region[:, :10] = False  # a 10-token prompt, 30 response positions
    masked, t = training.sample_mask(region, 1e-3, torch.Generator().manual_seed(0), suffix_frac=1.0)
    for row, ratio in zip(masked, t, strict=True):
        k = int(row.sum())
        assert k == math.ceil(ratio.item() * 30)
        assert row[40 - k :].all() and not row[: 40 - k].any()
    random_masked, _ = training.sample_mask(region, 1e-3, torch.Generator().manual_seed(0))
    assert not (random_masked & ~region).any()
    tails = [bool(r[40 - int(r.sum()) :].all()) for r in random_masked if r.sum() > 2]
    assert not all(tails)  # without suffix rows the masks are scattered, not tails


def test_command_line_lives_in_the_training_package(capsys):
    from streaming_dllm.training import train_demo

    with pytest.raises(SystemExit) as exit_info:
        train_demo.main(["--help"])
    assert exit_info.value.code == 0
    assert "-m streaming_dllm.training.train_demo" in " ".join(capsys.readouterr().out.split())
