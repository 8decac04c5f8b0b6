"""Composer: the template, CLIP token budget with reported truncation, LLM composition with
template fallback, and hand terms."""

from __future__ import annotations

import pytest

from sesahand.attention.words import is_hand_word, split_words
from sesahand.semantics.compose import (CLIP_MAX_TOKENS, clip_token_count, compose_prompt,
                                        compose_with_llm, hand_terms, template_prompt)

PAPER = {"pose": "sitting", "action": "smiling", "hand_action": "holding a donut with one hand",
         "environment": ""}

LONG = {
    "pose": "sitting cross-legged",
    "action": "reading a thick newspaper about the upcoming elections in the neighbouring "
              "country",
    "hand_action": "holding a large cup of very hot black coffee in the right hand, turning "
                   "the thin pages of the morning paper with the left hand, fingers spread "
                   "wide on the paper, the thumb pressing the folded corner of the page, the "
                   "index finger tapping the headline of the sports section twice",
    "environment": "in a sunny park",
}


@pytest.fixture(scope="module")
def clip_bpe():
    """CLIP's BPE tokenizer (open-clip-torch ships the vocabulary)."""
    return pytest.importorskip(
        "open_clip.tokenizer", reason="pip install -r requirements-dev.txt (open-clip-torch)"
    ).SimpleTokenizer()


def words_count(text: str) -> int:
    """TEST DOUBLE token counter: one token per word plus start and end."""
    return len(text.split()) + 2


def test_template_matches_the_paper_example():
    assert template_prompt(PAPER) == \
        "The person is sitting, smiling, and holding a donut with one hand."


def test_template_skips_empty_and_repeated_fields_and_cleans_them():
    assert template_prompt({"pose": "The person is standing.", "action": "standing",
                            "hand_action": "", "environment": "kitchen"}) == \
        "The person is standing in a kitchen."
    assert template_prompt({"pose": "", "action": "", "hand_action": "",
                            "environment": "on a beach"}) == "A person on a beach."
    assert template_prompt({}) == "A person."


@pytest.mark.parametrize("text, phrase", [
    ("in a park", "in a park"), ("park", "in a park"), ("office", "in an office"),
    ("the kitchen", "in the kitchen"), ("outdoors", "outdoors"), ("at a table", ""),
    ("beach", "on a beach"),
])
def test_environment_becomes_a_place_phrase(text, phrase):
    fields = {"pose": "standing", "environment": text}
    assert template_prompt(fields) == f"The person is standing{' ' + phrase if phrase else ''}."


def test_clip_count_includes_start_and_end_tokens(clip_bpe):
    text = "The person is holding a donut."
    assert clip_token_count(text) == len(clip_bpe.encode(text)) + 2


def test_short_prompt_is_not_truncated(clip_bpe):
    result = compose_prompt(PAPER)
    assert result.prompt == template_prompt(PAPER)
    assert not result.truncated and result.dropped == []
    assert result.tokens == len(clip_bpe.encode(result.prompt)) + 2 <= CLIP_MAX_TOKENS
    assert result.hand_terms == ["holding", "hand"]


def test_long_prompt_fits_clip_window_dropping_lowest_priority_first(clip_bpe):
    assert len(clip_bpe.encode(template_prompt(LONG))) + 2 > CLIP_MAX_TOKENS
    result = compose_prompt(LONG)
    assert result.truncated
    assert result.tokens == len(clip_bpe.encode(result.prompt)) + 2 <= CLIP_MAX_TOKENS
    assert result.dropped[0] == "environment", "the environment goes first"
    assert LONG["hand_action"].split(",")[0] in result.prompt, "the hand action stays"


@pytest.mark.parametrize("budget", [8, 12, 20, 30, 45, 60, 77, 100])
def test_every_budget_is_met_and_priorities_hold(budget):
    result = compose_prompt(LONG, budget, words_count)
    assert words_count(result.prompt) == result.tokens <= budget
    order = ["environment", "action", "pose", "hand action words"]
    assert result.dropped == order[:len(result.dropped)], "dropped in priority order"
    assert result.truncated == bool(result.dropped)
    if "hand action words" not in result.dropped:
        assert LONG["hand_action"] in result.prompt
    assert set(result.hand_terms) <= set(split_words(result.prompt))


def test_no_budget_keeps_everything():
    result = compose_prompt(LONG, None)
    assert result.prompt == template_prompt(LONG) and not result.truncated and result.tokens is None


@pytest.mark.parametrize("budget", [0, 7, -1, 7.5, True, "77"])
def test_bad_budget_is_rejected(budget):
    with pytest.raises(ValueError, match="max_tokens"):
        compose_prompt(PAPER, budget, words_count)


def test_bad_fields_are_rejected():
    with pytest.raises(ValueError, match="fields"):
        compose_prompt({"pose": 3}, 77, words_count)
    with pytest.raises(ValueError, match="fields"):
        compose_prompt("sitting", 77, words_count)


def test_hand_terms_are_the_hand_words_of_the_phrase():
    terms = hand_terms("Holding a cup in the right hand, fingers curled around it, holding")
    assert terms == ["holding", "hand", "fingers"]
    assert all(is_hand_word(t) for t in terms)
    assert hand_terms("") == []


class ScriptedLLM:
    """TEST DOUBLE for the extractor in LLM composition: returns one scripted reply."""

    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def generate(self, messages, prefix="", stop=(), max_new_tokens=None):
        self.calls.append((messages, stop, max_new_tokens))
        return self.reply


def test_llm_composition_is_used_when_usable():
    llm = ScriptedLLM("A smiling person sits, holding a donut with one hand.\nextra line")
    result = compose_with_llm(llm, PAPER, 77, words_count)
    assert result.source == "llm"
    assert result.prompt == "A smiling person sits, holding a donut with one hand."
    messages, stop, bound = llm.calls[0]
    assert "holding a donut" in messages[-1]["content"] and "\n" in stop and bound > 0


@pytest.mark.parametrize("reply", ["", "A person sits and smiles.", "word " * 100])
def test_unusable_llm_composition_falls_back_to_the_template(reply):
    result = compose_with_llm(ScriptedLLM(reply), PAPER, 77, words_count)
    assert result.source == "template" and result.prompt == template_prompt(PAPER)
