"""Which prompt words are hand-related (the token set I of eq. AE-1).

The paper selects words with NLTK part-of-speech tags, following AttentionHand: a small set of
hand nouns, and gerund verbs (tag VBG: "holding", "waving"). NLTK's tagger model cannot be
downloaded at run time here, so gerunds are found by a documented heuristic instead
(:func:`is_gerund`), and the noun set is widened to the hand's parts and grip words
(:data:`HAND_WORDS`, the ``default`` preset); the ``paper`` preset keeps exactly the paper's
nouns (:data:`PAPER_HAND_WORDS`) plus gerunds, for reproducing its experiment. Explicit terms
(the captioner's ``hand_action`` phrase, user words) are matched as whole phrases on top.

Words are compared the way CLIP's BPE tokenizer sees them: lower case, split into runs of
letters, single digits and the English contractions ('s, 't, 're, 've, 'm, 'll, 'd), with
punctuation ignored (:func:`split_words`). Only ASCII text is compared reliably: CLIP's
byte-level pieces spell other characters as byte codes.
"""

from __future__ import annotations

import re

#: Hand nouns and grip words, lower case, singular and plural (the AttentionHand set
#: {hand, hands, finger, fingers, gesture} plus the hand's parts and grip words).
HAND_WORDS: frozenset[str] = frozenset({
    "hand", "hands", "finger", "fingers", "fingertip", "fingertips", "fingernail",
    "fingernails", "thumb", "thumbs", "palm", "palms", "fist", "fists", "wrist", "wrists",
    "knuckle", "knuckles", "grip", "grips", "grasp", "grasps", "gesture", "gestures",
    "handshake",
})

#: The paper's hand nouns, exactly (AttentionHand's set); with gerunds they are the ``paper``
#: preset.
PAPER_HAND_WORDS: frozenset[str] = frozenset({"hand", "hands", "finger", "fingers", "gesture"})

#: Named hand-word sets (gerunds are added to each by :func:`is_hand_word`): ``default`` (the
#: wider set, the pack's default) and ``paper`` (the paper's nouns only).
HAND_WORD_PRESETS: dict[str, frozenset[str]] = {"default": HAND_WORDS, "paper": PAPER_HAND_WORDS}

#: Words of five or more letters that end in "-ing" but are not gerund verbs in prompts:
#: nouns, prepositions, pronouns, and adjectives common in image prompts. Shorter "-ing"
#: words (ring, king, sing, wing) are never taken as gerunds.
NOT_GERUNDS: frozenset[str] = frozenset({
    # nouns
    "thing", "things", "string", "spring", "swing", "sling", "sting", "bring", "cling",
    "fling", "wring", "ceiling", "building", "morning", "evening", "clothing", "wedding",
    "pudding", "bedding", "awning", "lightning", "lighting", "offspring", "sibling",
    "darling", "duckling", "herring", "viking", "railing", "earring", "stocking", "icing",
    "painting", "rendering", "shading", "ending", "sterling", "seedling", "dumpling",
    # prepositions, pronouns
    "during", "nothing", "something", "anything", "everything",
    # adjectives of prompts
    "amazing", "stunning", "interesting", "charming", "striking", "breathtaking",
    "outstanding", "astonishing", "captivating", "exciting", "inspiring", "intriguing",
    "dazzling", "appealing", "pleasing", "boring", "glowing", "shimmering",
    "sparkling", "towering", "flowing",
})

_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d")


def split_words(text: str) -> list[str]:
    """The words of ``text`` as CLIP's tokenizer splits them, lower case, punctuation dropped.

    >>> split_words("Holding (a cup:1.2), the person's hand")
    ['holding', 'a', 'cup', '1', '2', 'the', 'person', "'s", 'hand']
    """
    return _WORD.findall(text.lower())


def is_word(text: str) -> bool:
    """True if ``text`` (one BPE word, lower case) is a word rather than punctuation."""
    return _WORD.fullmatch(text) is not None


def is_gerund(word: str) -> bool:
    """Heuristic stand-in for NLTK's VBG tag: a lower-case alphabetic word of at least five
    letters ending in "-ing" that is not in :data:`NOT_GERUNDS` ("holding", "waving",
    "typing"; not "thing", "ceiling", "morning", "amazing")."""
    return len(word) >= 5 and word.endswith("ing") and word.isalpha() and word not in NOT_GERUNDS


def hand_word_set(preset: str = "default") -> frozenset[str]:
    """The hand nouns of a preset of :data:`HAND_WORD_PRESETS`.

    Raises:
        ValueError: an unknown preset, naming the ones there are.
    """
    try:
        return HAND_WORD_PRESETS[preset]
    except (KeyError, TypeError):
        raise ValueError(f"hand-word preset must be one of {', '.join(HAND_WORD_PRESETS)}, got "
                         f"{preset!r}") from None


def is_hand_word(word: str, preset: str = "default") -> bool:
    """True if ``word`` (lower case) is a noun of the preset (:data:`HAND_WORDS` for
    ``default``, :data:`PAPER_HAND_WORDS` for ``paper``) or is a gerund (:func:`is_gerund`).

    Raises:
        ValueError: an unknown preset.
    """
    return word in hand_word_set(preset) or is_gerund(word)


def parse_terms(text: str) -> tuple[str, ...]:
    """The comma-separated hand terms (words or phrases) of ``text``, stripped, empty ones and
    ones without any word dropped.

    >>> parse_terms("holding a cup, Thumbs-up,, !")
    ('holding a cup', 'Thumbs-up')
    """
    return tuple(part.strip() for part in text.split(",") if split_words(part))
