"""Training prompts as ComfyUI tokenizes them: weight syntax, chunk packing, token weights.

The positions are compared with ComfyUI's own tokenizer in tests/nodes/test_train_export.py;
here the parsing and packing rules are checked on their own (no ComfyUI needed).
"""

from __future__ import annotations

import pytest
import torch

from sesahand.train.prompts import MAX_TOKENS, comfy_chunks, tokenize_prompt, weighted_segments


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    from sesahand.train.model import SD15_DATA

    return CLIPTokenizer.from_pretrained(SD15_DATA / "tokenizer", local_files_only=True)


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return {i: t for t, i in tokenizer.get_vocab().items()}


@pytest.mark.parametrize("text, expected", [
    ("a hand", [("a hand", 1.0)]),
    ("a (hand:1.3) waving", [("a ", 1.0), ("hand", 1.3), (" waving", 1.0)]),
    ("((fingers)) up", [("fingers", pytest.approx(1.21)), (" up", 1.0)]),
    ("(open palm:0.5)", [("open palm", 0.5)]),
    ("a \\(literal\\) bracket", [("a (literal) bracket", 1.0)]),
    ("(ratio:x)", [("ratio:x", pytest.approx(1.1))]),  # not a number: brackets only
])
def test_weight_syntax_is_parsed_like_comfyui(text, expected):
    assert weighted_segments(text) == expected


def test_weighted_words_lose_their_brackets_and_keep_hand_positions(tokenizer, vocab):
    ids, weights, mask = tokenize_prompt(tokenizer, vocab, "a person (waving:1.3) a (hand)")
    plain_ids, plain_weights, plain_mask = tokenize_prompt(tokenizer, vocab, "a person waving a hand")
    assert torch.equal(ids, plain_ids) and torch.equal(mask, plain_mask)  # same tokens, same positions
    words = [vocab[int(i)] for i in ids[mask]]
    assert words == ["waving</w>", "hand</w>"]
    assert weights[mask].tolist() == pytest.approx([1.3, 1.1]) and torch.equal(plain_weights, torch.ones(77))
    assert (weights[~mask] == 1).all()


def test_long_prompts_are_packed_into_chunks_of_77(tokenizer):
    # segments (weights cut the text) of 3 tokens each: whole segments move to the next chunk
    prompt = " ".join(["(a red hand:1.01)"] * 30)
    chunks = comfy_chunks(tokenizer, prompt)
    assert [len(c) for c in chunks] == [MAX_TOKENS, MAX_TOKENS]
    first_words = [t for t, _, word in chunks[0] if word]
    assert len(first_words) == 75 and chunks[0][-1][0] == tokenizer.eos_token_id
    # 25 segments of 3 tokens fill 75 places; with one token more the last segment moves on
    chunks = comfy_chunks(tokenizer, "x " + prompt)
    assert sum(1 for _, _, word in chunks[0] if word) == 73  # "x" + 24 segments; the 25th moved
    # one long segment is cut at the boundary instead
    chunks = comfy_chunks(tokenizer, "hand " * 100)
    assert sum(1 for _, _, word in chunks[0] if word) == 75 and sum(1 for _, _, w in chunks[1] if w) == 25


def test_encode_text_applies_comfyui_token_weights(tiny_sd15):
    from sesahand.train.model import encode_text, load_sd15

    sd = load_sd15(tiny_sd15)
    vocab = {i: t for t, i in sd.tokenizer.get_vocab().items()}
    ids, weights, _ = tokenize_prompt(sd.tokenizer, vocab, "a (hand:1.5) waving")
    plain = encode_text(sd, ids[None])
    weighted = encode_text(sd, ids[None], weights[None])
    empty = encode_text(sd, tokenize_prompt(sd.tokenizer, vocab, "")[0][None])
    changed = weights != 1
    torch.testing.assert_close(weighted[0, ~changed], plain[0, ~changed])
    torch.testing.assert_close(weighted[0, changed], (plain[0, changed] - empty[0, changed]) * 1.5 + empty[0, changed])
