"""Composer: the four behaviour fields -> the final prompt P_f (METHOD.md component 1, step 3).

The default is a deterministic template, in the paper's example style ("The person is sitting,
smiling, and holding a donut with one hand."):

    "The person is {pose}, {action}, and {hand_action} {environment}."

Empty fields are left out, a field repeating an earlier one is skipped, and an environment
that does not start with a preposition gets "in " (plus "a"/"an" when it has no article).
:func:`compose_with_llm` lets the extractor's LLM write the sentence instead and falls back to
the template when its output is unusable.

Token budget: by default the prompt stays within CLIP's 77-token window (start and end
tokens included), counted with CLIP's BPE tokenizer (:func:`clip_token_count`). Parts are
dropped lowest priority first (:data:`DROP_ORDER`): the environment's detail (everything after
its first comma, "with", "and", "where", "while"), the environment, the action's detail, the
action, the pose's detail, the pose; as a last resort the hand action loses words from its
end. What was dropped is reported.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from ..attention.words import is_hand_word, split_words
from .result import FIELDS

log = logging.getLogger(__name__)

#: CLIP's context: start token + 75 prompt tokens + end token.
CLIP_MAX_TOKENS = 77

#: What is given up, first to last, when the prompt is over budget (the hand action stays).
DROP_ORDER = (("environment", "detail"), ("environment", "all"), ("action", "detail"),
              ("action", "all"), ("pose", "detail"), ("pose", "all"))

#: Words an environment phrase may start with as it is.
PLACE_STARTS = frozenset({
    "in", "at", "on", "inside", "outside", "near", "by", "beside", "under", "behind",
    "along", "across", "outdoors", "indoors", "against", "over", "around", "within",
    "among", "underwater", "before", "beneath", "amid", "next", "from",
})
_ARTICLES = frozenset({"a", "an", "the", "his", "her", "their", "its", "my", "our", "some"})
_SUBJECT = re.compile(r"^(?:the|a)\s+person\s+(?:is\s+)?|^(?:he|she|they)\s+(?:is|are)\s+|^is\s+",
                      re.IGNORECASE)
_DETAIL = re.compile(r",|;|\s(?:with|and|where|while|which)\s")


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


def environment_phrase(text: str) -> str:
    """``text`` as a place phrase: kept when it starts with a preposition
    (:data:`PLACE_STARTS`), else "in " + text, with "a"/"an" added when it has no article
    ("park" -> "in a park")."""
    words = text.split()
    if not words or words[0].lower() in PLACE_STARTS:
        return text
    if words[0].lower() not in _ARTICLES:
        text = ("an " if words[0][0].lower() in "aeiou" else "a ") + text
    return "in " + text


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def template_prompt(fields: dict) -> str:
    """The deterministic template (module docstring) of the four fields, no budget."""
    parts = {k: clean_field(fields.get(k, "")) for k in FIELDS}
    verbs, seen = [], set()
    for key in ("pose", "action", "hand_action"):
        if parts[key] and parts[key].lower() not in seen:
            seen.add(parts[key].lower())
            verbs.append(parts[key])
    place = environment_phrase(parts["environment"]) if parts["environment"] else ""
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
    """

    prompt: str
    source: str = "template"
    truncated: bool = False
    dropped: list[str] = field(default_factory=list)
    tokens: int | None = None
    hand_terms: list[str] = field(default_factory=list)


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
    """The template prompt of ``fields``, fitted to ``max_tokens``.

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
    parts = _check_fields(fields)
    prompt = template_prompt(parts)
    if max_tokens is None:
        return Composition(prompt, hand_terms=hand_terms(parts["hand_action"]))
    count = count_tokens or clip_token_count
    dropped: list[str] = []
    for key, what in DROP_ORDER:
        if count(prompt) <= max_tokens:
            break
        if what == "detail":
            short = _DETAIL.split(clean_field(parts[key]), maxsplit=1)[0]
            if not short or short == clean_field(parts[key]):
                continue
            parts[key] = short
        elif parts[key]:
            parts[key] = ""
        else:
            continue
        dropped.append(f"{key.replace('_', ' ')}{' detail' if what == 'detail' else ''}")
        prompt = template_prompt(parts)
    words = clean_field(parts["hand_action"]).split()
    while count(prompt) > max_tokens and words:
        words.pop()
        parts["hand_action"] = " ".join(words)
        prompt = template_prompt(parts)
        if "hand action words" not in dropped:
            dropped.append("hand action words")
    if dropped:
        log.info("prompt over %d CLIP tokens: dropped %s", max_tokens, ", ".join(dropped))
    return Composition(prompt, "template", bool(dropped), dropped, count(prompt),
                       hand_terms(parts["hand_action"]))


def hand_terms(phrase: str) -> list[str]:
    """The hand words of a hand-action phrase (AE's token set I, eq. AE-1): the words that
    :func:`sesahand.attention.words.is_hand_word` accepts (hand nouns, grip words, gerunds),
    lower case, first occurrence order, without repeats."""
    return list(dict.fromkeys(w for w in split_words(phrase) if is_hand_word(w)))


def compose_with_llm(extractor, fields: dict, max_tokens: int | None = CLIP_MAX_TOKENS,
                     count_tokens: Callable[[str], int] | None = None) -> Composition:
    """Let the extractor's LLM write the prompt (``prompts.json`` "compose"), one greedy
    line of at most 64 new tokens.

    The sentence is used when it is non-empty, within ``max_tokens`` and contains every hand
    word of the hand action (:func:`hand_terms`); otherwise the result is
    :func:`compose_prompt`'s template (``source="template"``).

    Args:
        extractor: an :class:`~sesahand.semantics.extractor.Extractor` (its ``generate``).
        fields, max_tokens, count_tokens: as :func:`compose_prompt`.

    Raises:
        ValueError, RuntimeError: as :func:`compose_prompt`.
    """
    import json

    from .extractor import prompt_templates

    _check_budget(max_tokens)
    parts = _check_fields(fields)
    request = prompt_templates()["compose"].format(fields=json.dumps(parts))
    text = extractor.generate([{"role": "user", "content": request}], stop=("\n",),
                              max_new_tokens=64)
    sentence = " ".join(text.split("\n", 1)[0].split()).strip('"')
    count = count_tokens or clip_token_count
    tokens = count(sentence) if max_tokens is not None else None
    missing = set(hand_terms(parts["hand_action"])) - set(split_words(sentence))
    if sentence and not missing and (max_tokens is None or tokens <= max_tokens):
        return Composition(sentence, "llm", False, [], tokens, hand_terms(parts["hand_action"]))
    log.info("LLM composition %r unusable (%s); using the template", sentence,
             f"misses {sorted(missing)}" if missing else "empty or over budget")
    return compose_prompt(parts, max_tokens, count_tokens)
