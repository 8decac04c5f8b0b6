"""Hand words -> key positions, with CLIP's real BPE vocabulary and ComfyUI's chunk layout."""

from __future__ import annotations

import pytest
import torch

from sesahand.attention import HandTokens, find_hand_tokens, join_hand_tokens, prompt_words

CHUNK = 77


def flat_tokens(chunks):
    return [token for chunk in chunks for token, _, _ in chunk]


def test_positions_start_after_the_start_token(clip_bpe, tokenize):
    chunks = tokenize("a person holding a cup with one hand")
    found = find_hand_tokens(chunks, clip_bpe.decoder)
    # start token at 0: a=1 person=2 holding=3 a=4 cup=5 with=6 one=7 hand=8
    assert found.positions == (3, 8)
    assert found.words == ("holding", "hand")
    assert found.num_keys == CHUNK
    tokens = flat_tokens(chunks)
    assert [clip_bpe.decoder[tokens[p]] for p in found.positions] == ["holding</w>", "hand</w>"]


def test_every_piece_of_a_multi_token_word_is_selected(clip_bpe, tokenize):
    chunks = tokenize("juggling balls, fingertips together")
    found = find_hand_tokens(chunks, clip_bpe.decoder)
    tokens = flat_tokens(chunks)
    pieces = [clip_bpe.decoder[tokens[p]] for p in found.positions]
    assert pieces == ["ju", "ggling</w>", "finger", "tips</w>"]
    assert found.words == ("juggling", "fingertips")
    assert found.positions == (1, 2, 5, 6)  # "balls" 3, "," 4


def test_prompt_weights_do_not_shift_or_split_words(clip_bpe, tokenize):
    # "a person raising his (hand:1.2), (waving:1.1) happily" after the weight syntax is parsed
    weighted = tokenize([("a person raising his ", 1.0), ("hand", 1.2), (", ", 1.0),
                         ("waving", 1.1), (" happily", 1.0)])
    plain = tokenize("a person raising his hand, waving happily")
    assert flat_tokens(weighted) == flat_tokens(plain)
    found = find_hand_tokens(weighted, clip_bpe.decoder)
    assert found == find_hand_tokens(plain, clip_bpe.decoder)
    assert found.words == ("raising", "hand", "waving")


def test_long_prompts_map_into_later_chunks(clip_bpe, tokenize):
    filler = "a quiet street with trees " * 16  # 80 tokens: "hand" lands in the second chunk
    chunks = tokenize(filler + "and a hand on a railing, " + filler + "thumb")
    assert len(chunks) == 3
    found = find_hand_tokens(chunks, clip_bpe.decoder)
    assert found.num_keys == 3 * CHUNK
    tokens = flat_tokens(chunks)
    hand, thumb = clip_bpe.encoder["hand</w>"], clip_bpe.encoder["thumb</w>"]
    assert found.positions == tuple(p for p, t in enumerate(tokens) if t in (hand, thumb))
    # 80 filler tokens + "and a" -> the 83rd prompt token, in chunk 1 after its start token
    assert found.positions[0] == CHUNK + 1 + (82 - 75)
    assert found.words == ("hand", "thumb")  # "railing" is a noun


def test_a_word_cut_across_chunks_keeps_all_its_pieces(clip_bpe, tokenize):
    word = "supercalifragilisticexpialidocious"  # 9 BPE pieces
    n_pieces = len(clip_bpe.encode(word))
    filler = "one two three " * 24 + "four"  # 73 tokens: the word starts at token 74
    chunks = tokenize(f"{filler} {word} hand")
    found = find_hand_tokens(chunks, clip_bpe.decoder, terms=[word.upper()])
    first = [p for p in found.positions if p < CHUNK]
    second = [p for p in found.positions if p >= CHUNK]
    assert first == [74, 75]  # 76 is the end token of chunk 0
    assert second == list(range(CHUNK + 1, CHUNK + 1 + n_pieces - 2)) + [CHUNK + n_pieces - 1]
    assert found.words == (word, "hand")


def test_terms_are_matched_as_phrases(clip_bpe, tokenize):
    chunks = tokenize("The person is sitting and holding a donut, with one hand. A cup.")
    found = find_hand_tokens(chunks, clip_bpe.decoder,
                             terms=["holding a donut with one hand", "cup", "a bicycle"])
    assert found.words == ("sitting", "holding", "a", "donut", "with", "one", "hand", "cup")
    assert found.unmatched_terms == ("a bicycle",)
    tokens = flat_tokens(chunks)
    comma = clip_bpe.encoder[",</w>"]
    assert comma not in [tokens[p] for p in found.positions]


def test_no_hand_words(clip_bpe, tokenize):
    found = find_hand_tokens(tokenize("a red car in the rain"), clip_bpe.decoder)
    assert found.positions == () and found.words == ()
    assert find_hand_tokens(tokenize(""), clip_bpe.decoder).positions == ()


def test_embedding_vectors_are_skipped(clip_bpe, tokenize):
    chunks = tokenize("hand waving")
    chunk = chunks[0]
    embedding = [(torch.zeros(768), 1.0, 3), (torch.zeros(768), 1.0, 3)]
    chunks = [chunk[:2] + embedding + chunk[2:-2]]  # "hand", 2 vectors, "waving"
    assert [w.text for w in prompt_words(chunks, clip_bpe.decoder)] == ["hand", "waving"]
    assert find_hand_tokens(chunks, clip_bpe.decoder).positions == (1, 4)


def test_bad_token_lists(clip_bpe, tokenize):
    pairs = [[(t, w) for t, w, _ in chunk] for chunk in tokenize("hand")]
    with pytest.raises(ValueError, match="return_word_ids=True"):
        prompt_words(pairs, clip_bpe.decoder)
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        prompt_words([[(10 ** 6, 1.0, 1)]], clip_bpe.decoder)


def test_key_bias_row_and_tiling():
    tokens = HandTokens(positions=(3, 8), words=("holding", "hand"), num_keys=CHUNK)
    row = tokens.key_bias(2.0)
    assert row.shape == (CHUNK,) and row.dtype == torch.float32
    assert row.nonzero().flatten().tolist() == [3, 8] and set(row[[3, 8]].tolist()) == {2.0}
    tiled = tokens.key_bias(1.5, 3 * CHUNK, dtype=torch.float16)
    assert tiled.dtype == torch.float16
    assert tiled.nonzero().flatten().tolist() == [3, 8, 80, 85, 157, 162]
    with pytest.raises(ValueError, match="same text"):
        tokens.key_bias(2.0, 100)


def test_paper_preset_selects_only_the_papers_nouns_and_gerunds(clip_bpe, tokenize):
    chunks = tokenize("a fist and a thumb, fingers holding a cup in one hand, palm up")
    wide = find_hand_tokens(chunks, clip_bpe.decoder)
    paper = find_hand_tokens(chunks, clip_bpe.decoder, preset="paper")
    assert wide.words == ("fist", "thumb", "fingers", "holding", "hand", "palm")
    assert paper.words == ("fingers", "holding", "hand")
    assert set(paper.positions) < set(wide.positions)
    with pytest.raises(ValueError, match="preset"):
        find_hand_tokens(chunks, clip_bpe.decoder, preset="nltk")


# T5 SentencePiece pieces as ComfyUI lays them out: no start token, the end token (1), padding (0).
T5_VOCAB = {0: "<pad>", 1: "</s>", 10: "\u2581a", 11: "\u2581person", 12: "\u2581hold", 13: "ing",
            14: "\u2581cup", 15: "\u2581with", 16: "\u2581one", 17: "\u2581hand", 18: ",",
            19: "\u2581palm", 20: "\u2581", 21: "(", 22: "s"}


def test_sentencepiece_words_start_at_the_word_marker():
    # "a person holding a cup with one hand, (palms" ; "holding" is two pieces, "(" a bare one
    ids = [10, 11, 12, 13, 10, 14, 15, 16, 17, 18, 20, 21, 19, 22]
    chunk = [(t, 1.0, 1) for t in ids] + [(1, 1.0, 0)] + [(0, 1.0, 0)] * 10
    words = prompt_words([chunk], T5_VOCAB, style="sentencepiece")
    assert [w.text for w in words] == ["a", "person", "holding", "a", "cup", "with", "one", "hand",
                                       ",", "(", "palms"]
    assert words[2].positions == (2, 3) and words[-1].positions == (12, 13)
    found = find_hand_tokens([chunk], T5_VOCAB, style="sentencepiece")
    assert found.positions == (2, 3, 8, 12, 13) and found.num_keys == len(chunk)
    assert found.words == ("holding", "hand", "palms")
    with pytest.raises(ValueError, match="style"):
        prompt_words([chunk], T5_VOCAB, style="wordpiece")


def test_join_lays_encoders_out_one_after_the_other():
    clip = HandTokens(positions=(3, 8), words=("holding", "hand"), num_keys=154,
                      unmatched_terms=("a bike", "cup"))
    t5 = HandTokens(positions=(2, 3, 8), words=("holding", "hand"), num_keys=77,
                    unmatched_terms=("a bike",))
    joined = join_hand_tokens([clip, t5])
    assert joined.positions == (3, 8, 156, 157, 162) and joined.num_keys == 231
    assert joined.words == ("holding", "hand") and joined.unmatched_terms == ("a bike",)
    assert join_hand_tokens([t5]) == t5
    with pytest.raises(ValueError):
        join_hand_tokens([])
