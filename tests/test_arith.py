"""The arithmetic task: fixed splits, fresh samples, consistent solutions and the scorer."""

import random
import re

import pytest

from streaming_dllm.tasks import arith


def test_fixed_splits_sizes_and_disjointness():
    test, dev = arith.problems("test"), arith.problems("dev")
    assert len(test) >= 500
    assert len(dev) > 0
    test_prompts = {p.prompt for p in test}
    assert len(test_prompts) == len(test)
    assert not test_prompts & {p.prompt for p in dev}
    assert not test_prompts & {p.prompt for p in arith.problems("train", 2000)}


def test_splits_are_reproducible_and_match_the_generator():
    assert arith.problems("test", 5) == arith.problems("test", 5)
    assert arith.problems("train", 50) == arith.problems("train", 50)
    regenerated = arith.generate(arith.SPLIT_SIZES["test"], arith._SPLIT_SEEDS["test"])
    assert regenerated[:20] == arith.problems("test", 20)


def test_seeded_sample_is_fresh_and_deterministic():
    a = arith.problems("test", n=30, seed=7)
    assert a == arith.problems("test", n=30, seed=7)
    assert a != arith.problems("test", n=30, seed=8)
    held_out = {p.prompt for p in arith.problems("test")} | {p.prompt for p in arith.problems("dev")}
    assert not {p.prompt for p in a} & held_out


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        arith.problems("validation")


def _check_solution(p: arith.Problem) -> int:
    """Steps follow the story: key phrase from the sentence, then the equations; returns the op count."""
    story = re.split(r"(?<=[.?]) ", p.prompt)
    steps = re.split(r"(?<=\.) ", p.solution)
    cur = int(re.search(r"\d+", story[0])[0])
    assert steps[0] == f"Start with {cur}."
    assert steps[-1] == f"The answer is {p.answer}."
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
    n_ops = 0
    for sentence, step in zip(story[1:-1], steps[1:-1], strict=True):
        phrase, work = step.split(", so ")
        assert phrase in sentence, (phrase, sentence)
        for eq in work.rstrip(".").split(" and "):
            m = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", eq)
            assert m, step
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            assert ops[op](a, b) == c
            if op == "/":
                assert a % b == 0
            assert 0 < c <= arith.MAX_VALUE
            n_ops += 1
        assert int(work.split(" and ")[-1].split()[0]) == cur  # each step starts from the last value
        cur = c
    assert cur == p.answer
    return n_ops


def test_solutions_are_correct_worked_equations_with_2_to_4_operations():
    counts = {_check_solution(p) for p in arith.problems("test")}
    assert counts == {2, 3, 4}


def test_problems_vary_in_names_objects_and_templates():
    ps = arith.problems("test", 200)
    assert len({p.prompt.split()[0] for p in ps}) > 10
    assert len({w for p in ps for w in p.prompt.split() if w in arith.OBJECTS}) > 10
    assert len({len(p.solution) for p in ps}) > 10


def test_messages_are_one_user_turn():
    p = arith.problems("dev", 1)[0]
    assert arith.messages(p) == [{"role": "user", "content": p.prompt}]


@pytest.mark.parametrize(
    ("text", "answer", "ok"),
    [
        ("3 + 4 = 7.\nThe answer is 7.", 7, True),
        ("3 + 4 = 7.\nThe answer is 7.", "7", True),
        ("The answer is 8.", 7, False),
        ("3 + 4 = 7.\n7 * 2 = 14.", 14, True),
        ("The answer is 12. Then 5 more.", 12, True),
        ("no number here", 3, False),
        ("", 0, False),
        ("The answer is 70.", 7, False),
    ],
)
def test_score(text, answer, ok):
    assert arith.score(text, answer) is ok


def test_drill_sheets_cover_every_equation_the_problems_use():
    table = {eq for eqs in arith.facts().values() for eq in eqs}
    used = {eq for p in arith.problems("test") + arith.problems("dev")
            for eq in re.findall(r"\d+ [-+*/] \d+ = \d+", p.solution)}
    assert used <= table
    sheet = arith.drill(random.Random(3), 12)
    eqs = sheet.solution.rstrip(".").split(". ")
    assert len(eqs) == 12 and set(eqs) <= table
    assert sheet.answer == int(eqs[-1].split()[-1])
    assert sheet == arith.drill(random.Random(3), 12)


needs_builtin = pytest.mark.skipif(
    not (__import__("streaming_dllm.loading").loading.BUILTIN_DIR / "model.safetensors").is_file(),
    reason="built-in weights not built")


@pytest.mark.parametrize(("device", "message"), [("meta", "--device"), ("cuda", "CUDA is not available")])
def test_arith_eval_refuses_a_device_it_cannot_run_on(device, message, capsys):
    import torch

    from streaming_dllm.tasks import arith_eval

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as exc:
        arith_eval.main(["--n", "1", "--device", device, "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err


@needs_builtin
def test_arith_eval_takes_model_and_decoding_flags_from_the_kit(capsys):
    """--dtype reaches the model (it used to load float32 on CPU whatever was asked); the
    decoding flags are the kit's, with arith_eval's own defaults (vanilla, 256, 32)."""
    import json

    from streaming_dllm.tasks import arith_eval

    arith_eval.main(["--n", "1", "--dtype", "bfloat16", "--device", "cpu", "--gen-length", "32",
                     "--no-progress"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["dtype"] == "bfloat16" and row["device"] == "cpu"
    assert row["method"] == "vanilla" and row["gen_length"] == 32 and row["n"] == 1
    args = arith_eval.build_parser().parse_args([])
    from streaming_dllm.cli.options import config_from_args

    cfg = config_from_args(args, gen_length=arith_eval.GEN_LENGTH, block_length=arith_eval.BLOCK_LENGTH)
    assert (cfg.preset_name, cfg.gen_length, cfg.block_length) == ("vanilla", 256, 32)


@needs_builtin
def test_arith_eval_encodes_prompts_with_the_one_chat_encoding():
    import streaming_dllm as sd
    from streaming_dllm.tasks import arith_eval
    from streaming_dllm.text import encode_chat

    tok = sd.load_tokenizer(sd.load_model("builtin", device="cpu"))
    problems = arith.problems("test", 3)
    texts = [tok.apply_chat_template(arith.messages(p), add_generation_prompt=True, tokenize=False)
             for p in problems]
    old = tok(texts, add_special_tokens=False)["input_ids"]
    assert arith_eval.encode_prompts(tok, problems) == old == [encode_chat(tok, arith.messages(p))
                                                               for p in problems]
