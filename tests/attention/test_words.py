"""Hand lexicon, gerund heuristic, word splitting and term parsing."""

from __future__ import annotations

import pytest

from sesahand.attention import (HAND_WORD_PRESETS, HAND_WORDS, NOT_GERUNDS, PAPER_HAND_WORDS,
                                is_gerund, is_hand_word, parse_terms, split_words)


@pytest.mark.parametrize("word", ["holding", "waving", "typing", "juggling", "pinching",
                                  "gesturing", "clapping", "pointing"])
def test_gerunds_are_hand_words(word):
    assert is_gerund(word) and is_hand_word(word)


@pytest.mark.parametrize("word", ["thing", "ring", "king", "sing", "wing", "ceiling", "morning",
                                  "evening", "building", "during", "nothing", "something",
                                  "spring", "string", "amazing", "lighting", "holdings", "ing",
                                  "3ding", "person", "cup"])
def test_non_gerunds_are_not(word):
    assert not is_gerund(word)
    assert not is_hand_word(word)


def test_lexicon_covers_the_attentionhand_set_and_the_hands_parts():
    assert {"hand", "hands", "finger", "fingers", "gesture"} <= HAND_WORDS
    assert {"thumb", "palm", "fist", "wrist", "knuckle", "grip", "grasp"} <= HAND_WORDS
    assert all(is_hand_word(w) for w in HAND_WORDS)
    assert all(w == w.lower() for w in HAND_WORDS | NOT_GERUNDS)
    assert not any(w.endswith("ing") and len(w) < 5 for w in NOT_GERUNDS)  # never gerunds anyway


def test_split_words_follows_clip():
    assert split_words("Holding (a CUP:1.2), the person's thumbs-up v2") == \
        ["holding", "a", "cup", "1", "2", "the", "person", "'s", "thumbs", "up", "v", "2"]
    assert split_words(" ,;! ") == []


def test_parse_terms():
    assert parse_terms("holding a cup,  Thumbs-up ,, !, ") == ("holding a cup", "Thumbs-up")
    assert parse_terms("") == ()


def test_paper_preset_is_exactly_the_papers_nouns_plus_gerunds():
    assert PAPER_HAND_WORDS == {"hand", "hands", "finger", "fingers", "gesture"}
    assert HAND_WORD_PRESETS["paper"] is PAPER_HAND_WORDS
    assert HAND_WORD_PRESETS["default"] is HAND_WORDS
    for word in ("thumb", "palm", "fist", "wrist", "grip", "fingertips"):
        assert is_hand_word(word) and not is_hand_word(word, "paper")
    for word in PAPER_HAND_WORDS | {"holding", "waving"}:
        assert is_hand_word(word, "paper")
    with pytest.raises(ValueError, match="hand-word preset must be one of default, paper"):
        is_hand_word("hand", "wide")
