"""Keep the person, drop the distractors: the four behaviour fields reduced to what the paper's
semantic alignment keeps (docs/method.md, "Behaviour semantics").

Raw captions list objects that pull attention away from the hand ("a steel table with three
baskets of croissants, a scale and a clock"). The rules, applied by the rule-based extractor
and by the composer to whatever the LLM wrote (so they hold when it copies the caption):

* **environment is a place**: one scene noun phrase, "preposition [article] [up to two
  modifiers] scene noun(s)" ("in a bakery kitchen", "on a sandy beach"), found by its scene
  noun (``data/scenes.json``: places, never objects or furniture); everything else is
  dropped, and with no scene noun the environment is empty (:func:`place_phrase`);
* **objects appear only in the hand action**, i.e. when a hand interacts with them: the
  hand action keeps its parts (split at sentence ends, commas, semicolons, "while") that
  name a hand, a hand verb or start with a gerund, each from its verb on (unless the words
  before the verb name the hand); inside each part, place phrases are
  removed and the text is cut where merely present objects begin ("next to", "beside",
  "surrounded by", "in front of", "with ... in the background", ...)
  (:func:`hand_action_phrase`);
* **action** is one verb phrase: cut at its first comma, "with", "and", "while", a place
  phrase or a co-presence marker (:func:`action_phrase`);
* **pose** is the posture: cut at its first preposition, comma or conjunction (one that
  is not followed by another posture word) (:func:`pose_phrase`).

All functions take and return plain strings and never raise on odd text (empty in, empty
out).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

from ..attention.words import HAND_WORDS, is_gerund, split_words

_HAND_VERB_FORMS = (  # (base, third person, gerund)
    ("hold", "holds", "holding"), ("grab", "grabs", "grabbing"), ("grip", "grips", "gripping"),
    ("grasp", "grasps", "grasping"), ("carry", "carries", "carrying"),
    ("wave", "waves", "waving"), ("point", "points", "pointing"),
    ("touch", "touches", "touching"),
    ("type", "types", "typing"), ("clap", "claps", "clapping"), ("catch", "catches", "catching"),
    ("throw", "throws", "throwing"), ("pick", "picks", "picking"), ("pinch", "pinches", "pinching"),
    ("press", "presses", "pressing"), ("push", "pushes", "pushing"), ("pull", "pulls", "pulling"),
    ("write", "writes", "writing"), ("cut", "cuts", "cutting"), ("chop", "chops", "chopping"),
    ("raise", "raises", "raising"), ("shake", "shakes", "shaking"), ("hug", "hugs", "hugging"),
    ("clasp", "clasps", "clasping"), ("squeeze", "squeezes", "squeezing"),
    ("tap", "taps", "tapping"), ("knead", "kneads", "kneading"), ("shape", "shapes", "shaping"),
    ("scroll", "scrolls", "scrolling"), ("applaud", "applauds", "applauding"),
)

#: Verbs of hand use: every form -> its "-ing" form.
HAND_VERBS: dict[str, str] = {form: forms[2] for forms in _HAND_VERB_FORMS for form in forms}

#: Body-posture words of the ``pose`` field, each mapped to the form the field uses.
POSTURES: dict[str, str] = {
    **{w: w for w in ("sitting", "standing", "lying", "kneeling", "crouching", "squatting",
                      "leaning", "walking", "running", "jumping", "bending", "reclining",
                      "dancing", "stretching", "climbing", "riding", "swimming", "posing")},
    "sits": "sitting", "seated": "sitting", "stands": "standing", "lies": "lying",
    "kneels": "kneeling", "crouches": "crouching", "squats": "squatting", "leans": "leaning",
    "walks": "walking", "runs": "running", "jumps": "jumping", "bends": "bending",
    "dances": "dancing", "rides": "riding", "poses": "posing",
}

#: Prepositions a place phrase may start with ("in a park", "at the station").
PLACE_PREPOSITIONS = frozenset({
    "in", "at", "on", "inside", "outside", "near", "by", "beside", "under", "behind",
    "along", "across", "against", "over", "around", "within", "among", "beneath", "amid",
})
ARTICLES = frozenset({"a", "an", "the", "his", "her", "their", "its", "my", "our", "some",
                      "this", "that"})
#: Words that end a place phrase's modifiers when walking back from its scene noun.
_NOT_MODIFIERS = PLACE_PREPOSITIONS | ARTICLES | frozenset({
    "of", "with", "and", "or", "but", "while", "to", "from", "for", "is", "are", "was", "were",
    "be", "he", "she", "they", "it", "him", "them", "who", "which", "where", "as", "during",
    "than", "into", "onto", "through", "next", "front", "up", "down", "out", "off", "today", "now", "alone",
    "together", "there", "here",
})
#: Where merely present things begin in a hand action or action (the text is cut there).
_CO_PRESENCE = re.compile(
    r"\s(?:next to|beside|besides|near|nearby|surrounded by|in front of|behind|among|amid|"
    r"alongside|as well as|while|whereas|with\s[^,;]*?\bin the background|in the background|"
    r"on the wall)\b.*$", re.IGNORECASE)
_PARTS = re.compile(r"\s*[,;.!?]\s*|\s+(?:while|whereas)\s+", re.IGNORECASE)
_POSE_END = re.compile(
    r"[,;]|\s(?:" + "|".join(sorted(PLACE_PREPOSITIONS | {"with", "of", "while", "to", "for",
                                                          "into", "onto", "through", "where",
                                                          "which", "who"})) + r")\s",
    re.IGNORECASE)
_ACTION_END = re.compile(r"[,;]|\s(?:with|and|while|where|which|who)\s", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'-]*|[^\sA-Za-z]")


@lru_cache(maxsize=1)
def scene_vocabulary() -> dict:
    """``data/scenes.json``: ``nouns`` (set), ``on``, ``the`` and ``adverbs`` (sets)."""
    data = json.loads(resources.files(__package__).joinpath("data", "scenes.json")
                      .read_text(encoding="utf-8"))
    return {key: frozenset(data[key]) for key in ("nouns", "on", "the", "adverbs")}


def scene_noun(word: str) -> str | None:
    """The singular scene noun of ``word`` (lower case; plural "s"/"es"/"ies" accepted), or
    None when it is not a place."""
    nouns = scene_vocabulary()["nouns"]
    word = word.lower()
    for form in (word, word[:-1] if word.endswith("s") else "",
                 word[:-2] if word.endswith("es") else "",
                 word[:-3] + "y" if word.endswith("ies") else ""):
        if form in nouns:
            return form
    return None


def _span(tokens: list[str], i: int) -> tuple[int, int, str | None, bool]:
    """(start, end, given preposition, has article) of the place phrase around scene noun i;
    start -1 when the noun is an object's modifier ("an office desk")."""
    end = i + 1
    while end < len(tokens) and scene_noun(tokens[end]):  # compounds: "train station"
        end += 1
    start, mods = i, 0
    while start > 0 and mods < 2:
        word = tokens[start - 1].lower()
        if not word[0].isalpha() or word in _NOT_MODIFIERS:
            break
        start, mods = start - 1, mods + 1
    if end < len(tokens):  # "office desk": the scene noun names an object's kind
        nxt = tokens[end].lower()
        if nxt[0].isalpha() and nxt not in _NOT_MODIFIERS and not is_gerund(nxt) \
                and nxt not in HAND_VERBS and nxt not in POSTURES and not nxt.endswith("s"):
            return -1, -1, None, False
    article = start > 0 and tokens[start - 1].lower() in ARTICLES
    start -= article
    prep = tokens[start - 1].lower() if start > 0 else None
    if prep in PLACE_PREPOSITIONS:
        start -= 1
    else:
        prep = None
    return start, end, prep, article


def place_phrase(text: str, need_preposition: bool = False) -> str:
    """The first place of ``text`` as a prepositional scene noun phrase, or "".

    The scene noun (:func:`scene_noun`) is taken with following scene nouns ("train
    station"), up to two modifiers before it ("busy", "bakery"), its article or possessive,
    and the preposition before that when it is a place preposition; without one the phrase
    gets "in" (or "on" for the nouns of ``scenes.json`` "on"), and without an article "a"/"an"
    ("the" for the nouns of "the"; none for plurals). Objects around it are dropped: "a
    steel table with croissants in a bakery kitchen" -> "in a bakery kitchen". Without a
    scene noun, an adverb place ("outdoors") on its own; else "".

    Args:
        text: any text (a field, a clause, a whole caption).
        need_preposition: only phrases that start with a place preposition count (used on
            whole captions, where "a toy car" is an object, not a place).
    """
    tokens = _TOKEN.findall(text)
    vocab = scene_vocabulary()
    for i, token in enumerate(tokens):
        noun = scene_noun(token)
        if not noun:
            continue
        start, end, prep, article = _span(tokens, i)
        if start < 0 or (need_preposition and prep is None):
            continue
        words = [t.lower() for t in tokens[start:end]]
        if prep is None:
            head = scene_noun(words[-1]) or noun
            if not article:
                plural = words[-1] != head
                words.insert(0, "the" if head in vocab["the"] or plural
                             else "an" if words[0][0] in "aeiou" else "a")
            words.insert(0, "on" if head in vocab["on"] else "in")
        return " ".join(w for w in words if w)
    if not need_preposition:
        for token in tokens:
            if token.lower() in vocab["adverbs"]:
                return token.lower()
    return ""


def strip_places(text: str) -> str:
    """``text`` without its prepositional place phrases ("holding a cup in a cafe" ->
    "holding a cup")."""
    tokens = _TOKEN.findall(text)
    keep = [True] * len(tokens)
    for i, token in enumerate(tokens):
        if scene_noun(token):
            start, end, prep, _ = _span(tokens, i)
            if start >= 0 and prep is not None:
                keep[start:end] = [False] * (end - start)
    return _detokenize([t for t, k in zip(tokens, keep) if k])


def _detokenize(tokens: list[str]) -> str:
    return re.sub(r"\s+([,;.:!?)])", r"\1", " ".join(tokens)).strip(" ,;:.")


def _clean(text: str) -> str:
    return " ".join(str(text).split()).strip(" .,;:!")


def _tail(text: str) -> str:
    """Drop dangling connectives left by cutting ("holding a cup with" -> "holding a cup")."""
    words = text.split()
    while words and words[-1].lower() in _NOT_MODIFIERS:
        words.pop()
    return " ".join(words).strip(" ,;:.")


def _interacts(part: str) -> bool:
    words = split_words(part)
    if words and words[0] == "and":
        words = words[1:]
    return bool(words) and (any(w in HAND_WORDS or w in HAND_VERBS for w in words)
                            or is_gerund(words[0]))


def _from_action(part: str) -> str:
    """``part`` from its first hand verb or gerund on when the words before it name no hand
    ("a woman with a handbag pointing at a map" -> "pointing at a map"; "the left hand
    holding a carrot" stays)."""
    tokens = part.split()
    for i, token in enumerate(tokens):
        word = re.sub(r"[^a-z'-]", "", token.lower())
        if word in HAND_VERBS or is_gerund(word):
            lead = split_words(" ".join(tokens[:i]))
            return part if any(w in HAND_WORDS for w in lead) else " ".join(tokens[i:])
    return part


def hand_action_phrase(text: str) -> str:
    """The hand action with only the objects a hand interacts with (module docstring): the
    parts (split at sentence ends, commas, semicolons, "while") that name a hand or a hand
    verb or start with a gerund, or the first part when none does.

    >>> hand_action_phrase("holding a cup of coffee next to a laptop, a vase and a clock")
    'holding a cup of coffee'
    """
    parts = [p for p in _PARTS.split(_clean(text)) if p]
    acting = [p for p in parts if _interacts(p)] or parts[:1]
    kept = []
    for part in acting:
        part = _from_action(part)
        part = _tail(strip_places(_CO_PRESENCE.sub("", " " + part).strip()))
        if part and part not in kept:
            kept.append(part)
    return ", ".join(kept)


def action_phrase(text: str) -> str:
    """The action as one verb phrase, without places or merely present objects
    ("cooking dinner with pots and pans in a kitchen" -> "cooking dinner")."""
    first = _ACTION_END.split(_clean(text), maxsplit=1)[0]
    return _tail(strip_places(_CO_PRESENCE.sub("", " " + first).strip()))


def pose_phrase(text: str) -> str:
    """The posture, up to its first preposition, comma or conjunction ("sitting cross-legged
    on a sofa" -> "sitting cross-legged"; "sitting and standing" stays)."""
    text = _POSE_END.split(_clean(text), maxsplit=1)[0]
    words = text.split()
    for i, word in enumerate(words):
        nxt = words[i + 1].lower() if i + 1 < len(words) else ""
        if word.lower() in ("and", "or", "but") and nxt not in POSTURES:
            words = words[:i]
            break
    return _tail(" ".join(words))


def focus_fields(fields: dict) -> dict:
    """The four fields with distractors dropped: :func:`pose_phrase`, :func:`action_phrase`,
    :func:`hand_action_phrase`, and the environment as :func:`place_phrase` (a phrase with a
    place preposition first, then any scene noun). Missing keys count as ""."""
    env = fields.get("environment", "")
    return {
        "pose": pose_phrase(fields.get("pose", "")),
        "action": action_phrase(fields.get("action", "")),
        "hand_action": hand_action_phrase(fields.get("hand_action", "")),
        "environment": place_phrase(env, need_preposition=True) or place_phrase(env),
    }
