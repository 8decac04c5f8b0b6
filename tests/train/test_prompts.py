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


LONG = ("a woman in a sunny kitchen with wooden shelves, jars of flour, copper pots, a window with "
        "green plants, a striped apron and a bowl of lemons on the counter, soft morning light, film "
        "grain, shallow depth of field, warm colours, detailed skin, a wooden floor, a radio playing "
        "quietly, a cat asleep on a chair, steam rising from a kettle, a calendar on the wall, is "
        "kneading dough with both hands while smiling")


def test_long_captions_keep_every_chunk_and_their_hand_positions(tokenizer, vocab):
    chunks = comfy_chunks(tokenizer, LONG)
    ids, weights, mask = tokenize_prompt(tokenizer, vocab, LONG)
    assert len(chunks) == 2 and ids.shape == weights.shape == mask.shape == (2 * MAX_TOKENS,)
    assert ids.tolist() == [t for chunk in chunks for t, _, _ in chunk]
    words = {vocab[int(ids[p])] for p in mask.nonzero().flatten()}
    assert mask[MAX_TOKENS:].any() and {"hands</w>", "smiling</w>"} <= words  # in the second chunk


def test_captions_beyond_the_chunk_limit_are_cut_with_a_warning(tokenizer, vocab, caplog):
    from sesahand.limits import MAX_PROMPT_CHUNKS

    ids, _, mask = tokenize_prompt(tokenizer, vocab, "a raised hand " * 200)
    assert ids.shape == mask.shape == (MAX_PROMPT_CHUNKS * MAX_TOKENS,)
    assert f"longer than {MAX_PROMPT_CHUNKS} CLIP chunks" in caplog.text


def test_batched_captions_repeat_to_a_common_length_without_changing_attention():
    from sesahand.attention import biased_attention
    from sesahand.train.prompts import repeat_to_common_length

    one, two = torch.arange(MAX_TOKENS), torch.arange(2 * MAX_TOKENS) + 1000
    batch = repeat_to_common_length([one, two])
    assert batch.shape == (2, 2 * MAX_TOKENS)
    assert torch.equal(batch[0], torch.cat([one, one])) and torch.equal(batch[1], two)
    assert repeat_to_common_length([one, torch.arange(3 * MAX_TOKENS)]).shape == (2, 3 * MAX_TOKENS)
    with pytest.raises(ValueError, match="whole chunks of 77"):
        repeat_to_common_length([one, torch.arange(100)])
    # repeating every key (and its bias) leaves the hand-biased attention unchanged
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 16, 32, generator=g)
    k, v = (torch.randn(MAX_TOKENS, 32, generator=g) for _ in range(2))
    bias = torch.zeros(MAX_TOKENS)
    bias[[3, 9]] = 2.0
    plain = biased_attention(q, k[None], v[None], 4, bias)
    k2, v2, bias2 = (repeat_to_common_length([t, torch.cat([t, t])])[:1] for t in (k, v, bias))
    torch.testing.assert_close(biased_attention(q, k2, v2, 4, bias2[0]), plain)


def test_encode_text_encodes_each_chunk_on_its_own(tiny_sd15, tokenizer, vocab):
    from sesahand.train.model import encode_text, load_sd15

    sd = load_sd15(tiny_sd15)
    ids, weights, _ = tokenize_prompt(sd.tokenizer, vocab, LONG.replace("smiling", "(smiling:1.3)"))
    both = encode_text(sd, ids[None], weights[None])
    assert both.shape == (1, 2 * MAX_TOKENS, sd.text_encoder.config.hidden_size)
    for c in range(2):
        part = slice(c * MAX_TOKENS, (c + 1) * MAX_TOKENS)
        torch.testing.assert_close(both[:, part], encode_text(sd, ids[None, part], weights[None, part]))
    with pytest.raises(ValueError, match="C \\* 77"):
        encode_text(sd, ids[None, :100])
