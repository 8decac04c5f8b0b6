"""Composer: the four behaviour fields -> the final prompt P_f (docs/method.md, "Behaviour
semantics", step 3).

The fields are first reduced to what the person does
(:func:`~sesahand.semantics.focus.focus_fields`): the environment becomes one place phrase
("in a bakery kitchen"), never a list of objects, and objects stay only in the hand action,
where a hand interacts with them. This holds for
every path (template, LLM sentence, the Compose Prompt node), so a field the LLM copied from
the caption cannot bring the caption's clutter back.

The default is a deterministic template, in the paper's example style ("The person is sitting,
smiling, and holding a donut with one hand."):

    "The person is {pose}, {action}, and {hand_action} {environment}."

Empty fields are left out and a field repeating an earlier one is skipped.
:func:`compose_with_llm` lets the extractor's LLM write the sentence instead and falls back to
the template when its output is unusable (including when it brings back a word the focusing
removed).

Token budget: by default the prompt stays within CLIP's 77-token window (start and end
tokens included), counted with CLIP's BPE tokenizer (:func:`clip_token_count`). Whole fields
are dropped lowest priority first (:data:`DROP_ORDER`): the environment, the action, the
pose; as a last resort the hand action loses words from its end. What was dropped is
reported.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from ..attention.words import is_hand_word, split_words
from .focus import focus_fields
from .result import FIELDS

log = logging.getLogger(__name__)

#: CLIP's context: start token + 75 prompt tokens + end token.
CLIP_MAX_TOKENS = 77

#: Fields given up, first to last, when the prompt is over budget (the hand action stays).
DROP_ORDER = ("environment", "action", "pose")

_SUBJECT = re.compile(r"^(?:the|a)\s+person\s+(?:is\s+)?|^(?:he|she|they)\s+(?:is|are)\s+|^is\s+",
                      re.IGNORECASE)


@lru_cache(maxsize=1)
def _clip_tokenizer():
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError:
        raise RuntimeError("counting CLIP tokens needs open-clip-torch (pip install "
                           "open-clip-torch==3.3.0, it ships CLIP's BPE vocabulary), or give "
                           "count_tokens, or max_tokens=None for no limit") from None
    return SimpleTokenizer()


def clip_token_count(text: str) -> int:
    """Tokens ``text`` takes in CLIP's window: its BPE tokens plus the start and end tokens.

    Uses open_clip's ``SimpleTokenizer`` (CLIP's ``bpe_simple_vocab_16e6``, the SD1.x text
    encoder's tokenizer). Raises RuntimeError naming the package when open-clip-torch is
    missing.
    """
    return len(_clip_tokenizer().encode(text)) + 2


def clean_field(text: str) -> str:
    """A field as the template uses it: whitespace collapsed, outer punctuation and a
    leading subject ("the person is", "she is") removed."""
    text = " ".join(str(text).split()).strip(" .,;:!")
    return _SUBJECT.sub("", text).strip(" .,;:!")


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def template_prompt(fields: dict) -> str:
    """The deterministic template (module docstring) of the four fields after
    :func:`~sesahand.semantics.focus.focus_fields`, no budget."""
    parts = focus_fields({k: clean_field(fields.get(k, "")) for k in FIELDS})
    verbs, seen = [], set()
    for key in ("pose", "action", "hand_action"):
        if parts[key] and parts[key].lower() not in seen:
            seen.add(parts[key].lower())
            verbs.append(parts[key])
    place = parts["environment"]
    if verbs:
        return f"The person is {_join(verbs)}{' ' + place if place else ''}."
    return f"A person {place}." if place else "A person."


@dataclass
class Composition:
    """A composed prompt.

    Attributes:
        prompt: the text.
        source: ``"template"`` or ``"llm"``.
        truncated: True when parts were dropped or cut for the budget.
        dropped: what was given up, in order ("environment detail", "environment", ...,
            "hand_action words"); empty when nothing was.
        tokens: CLIP tokens of the prompt (start and end included); None without a budget.
        hand_terms: :func:`hand_terms` of the hand action as it appears in the prompt.
        fields: the focused fields the prompt was composed from (after dropping for the
            budget).
    """

    prompt: str
    source: str = "template"
    truncated: bool = False
    dropped: list[str] = field(default_factory=list)
    tokens: int | None = None
    hand_terms: list[str] = field(default_factory=list)
    fields: dict = field(default_factory=dict)


def _check_budget(max_tokens) -> None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 8):
        raise ValueError(f"max_tokens: expected an integer >= 8 (CLIP tokens, start and end "
                         f"included; 77 is CLIP's window) or None for no limit, got {max_tokens!r}")


def _check_fields(fields) -> dict:
    if not isinstance(fields, dict) or any(not isinstance(fields.get(k, ""), str) for k in FIELDS):
        raise ValueError(f"fields: expected a dict of strings with keys {FIELDS}, got {fields!r}")
    return {k: fields.get(k, "") for k in FIELDS}


def compose_prompt(fields: dict, max_tokens: int | None = CLIP_MAX_TOKENS,
                   count_tokens: Callable[[str], int] | None = None) -> Composition:
    """The template prompt of ``fields`` (focused: module docstring), fitted to ``max_tokens``.

    Args:
        fields: ``{"pose", "action", "hand_action", "environment"}`` strings (missing = "").
        max_tokens: budget in CLIP tokens, start and end tokens included (>= 8), or None for
            no limit.
        count_tokens: text -> tokens (default :func:`clip_token_count`).

    Returns:
        :class:`Composition` with ``source="template"``.

    Raises:
        ValueError: bad ``fields`` or ``max_tokens``.
        RuntimeError: no ``count_tokens`` and open-clip-torch is missing.
    """
    _check_budget(max_tokens)
    parts = focus_fields({k: clean_field(v) for k, v in _check_fields(fields).items()})
    prompt = template_prompt(parts)
    if max_tokens is None:
        return Composition(prompt, hand_terms=hand_terms(parts["hand_action"]), fields=parts)
    count = count_tokens or clip_token_count
    dropped: list[str] = []
    for key in DROP_ORDER:
        if count(prompt) <= max_tokens:
            break
        if parts[key]:
            parts[key] = ""
            dropped.append(key)
            prompt = template_prompt(parts)
    words = parts["hand_action"].split()
    while count(prompt) > max_tokens and words:
        words.pop()
        parts["hand_action"] = " ".join(words)
        prompt = template_prompt(parts)
        if "hand action words" not in dropped:
            dropped.append("hand action words")
    if dropped:
        log.info("prompt over %d CLIP tokens: dropped %s", max_tokens, ", ".join(dropped))
    return Composition(prompt, "template", bool(dropped), dropped, count(prompt),
                       hand_terms(parts["hand_action"]), parts)


def hand_terms(phrase: str) -> list[str]:
    """The hand words of a hand-action phrase (AE's token set I, eq. AE-1): the words that
    :func:`sesahand.attention.words.is_hand_word` accepts (hand nouns, grip words, gerunds),
    lower case, first occurrence order, without repeats."""
    return list(dict.fromkeys(w for w in split_words(phrase) if is_hand_word(w)))


#: Words that carry no object or place: never counted as "brought back" in an LLM sentence.
_FUNCTION_WORDS = frozenset({
    "a", "an", "the", "and", "or", "with", "in", "on", "at", "of", "to", "by", "for", "from",
    "his", "her", "their", "its", "one", "both", "is", "are", "he", "she", "they", "person",
    "'s", "three", "two", "some", "while", "near", "next", "behind", "beside",
})


def compose_with_llm(extractor, fields: dict, max_tokens: int | None = CLIP_MAX_TOKENS,
                     count_tokens: Callable[[str], int] | None = None) -> Composition:
    """Let the extractor's LLM write the prompt (``prompts.json`` "compose") from the
    focused fields, one greedy line of at most 64 new tokens.

    The sentence is used when it is non-empty, within ``max_tokens``, contains every hand
    word of the hand action (:func:`hand_terms`) and none of the words the focusing removed
    from ``fields`` (an LLM that restores the caption's clutter is not trusted); otherwise
    the result is :func:`compose_prompt`'s template (``source="template"``).

    Args:
        extractor: an :class:`~sesahand.semantics.extractor.Extractor` (its ``generate``).
        fields, max_tokens, count_tokens: as :func:`compose_prompt`.

    Raises:
        ValueError, RuntimeError: as :func:`compose_prompt`.
    """
    import json

    from .extractor import prompt_templates

    _check_budget(max_tokens)
    raw = {k: clean_field(v) for k, v in _check_fields(fields).items()}
    parts = focus_fields(raw)
    removed = (set(split_words(" ".join(raw.values())))
               - set(split_words(" ".join(parts.values()))) - _FUNCTION_WORDS)
    request = prompt_templates()["compose"].format(fields=json.dumps(parts))
    text = extractor.generate([{"role": "user", "content": request}], stop=("\n",),
                              max_new_tokens=64)
    sentence = " ".join(text.split("\n", 1)[0].split()).strip('"')
    count = count_tokens or clip_token_count
    tokens = count(sentence) if max_tokens is not None else None
    words = set(split_words(sentence))
    missing = set(hand_terms(parts["hand_action"])) - words
    restored = removed & words
    if sentence and not missing and not restored \
            and (max_tokens is None or tokens <= max_tokens):
        return Composition(sentence, "llm", False, [], tokens, hand_terms(parts["hand_action"]),
                           parts)
    why = (f"misses {sorted(missing)}" if missing else
           f"brings back dropped words {sorted(restored)}" if restored else
           "empty or over budget")
    log.info("LLM composition %r unusable (%s); using the template", sentence, why)
    return compose_prompt(parts, max_tokens, count_tokens)
