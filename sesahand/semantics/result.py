"""The result of the behaviour-semantics pipeline for one image (docs/method.md).

A :class:`SemanticsResult` carries every intermediate product (raw caption, the four-field
JSON, the final prompt, the hand terms for AE) and which path produced each one, so a dataset
built from it can be audited and re-run. ``to_dict`` / ``from_dict`` give one JSON object per
image (the lines of ``captions.jsonl``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

#: The four behaviour fields of the extractor's JSON, in prompt order.
FIELDS = ("pose", "action", "hand_action", "environment")

CAPTION_SOURCES = ("model", "given")
SEMANTICS_SOURCES = ("model", "repaired", "fallback")
PROMPT_SOURCES = ("template", "llm")
HAND_ACTION_SOURCES = ("text", "pose")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


@dataclass
class SemanticsResult:
    """Behaviour semantics of one image.

    Attributes:
        caption: the captioner's raw caption X_t.
        caption_source: ``"model"`` (written by the captioner) or ``"given"`` (supplied by the
            caller, no captioner run).
        semantics: ``{"pose", "action", "hand_action", "environment"}``, all strings (empty
            when unknown); ``hand_action`` is the final one (pose-derived on a conflict).
        semantics_source: ``"model"`` (the LLM's first answer was valid), ``"repaired"``
            (valid after a repair prompt), ``"fallback"`` (rule-based extraction from the
            caption: no LLM given, or it never produced valid JSON).
        prompt: the composed prompt P_f.
        prompt_source: ``"template"`` (deterministic) or ``"llm"`` (LLM composition).
        truncated: True when parts were dropped or cut to fit the token budget.
        hand_terms: hand words of the hand-action phrase, for AE's token set I.
        hand_action_source: ``"text"`` (from the extraction) or ``"pose"`` (described from the
            conditioning hand's joints).
        conflicts: human-readable notes where the text's hand action contradicted the pose.
        image_hash: content hash of the image (cache key), ``""`` when unknown.
        models: model identities used, e.g. ``{"captioner": ..., "extractor": ...}``.

    Raises:
        ValueError: a source is not one of its allowed values, or ``semantics`` lacks a field
            or holds a non-string.
    """

    caption: str
    semantics: dict
    prompt: str
    caption_source: str = "model"
    semantics_source: str = "fallback"
    prompt_source: str = "template"
    truncated: bool = False
    hand_terms: list[str] = field(default_factory=list)
    hand_action_source: str = "text"
    conflicts: list[str] = field(default_factory=list)
    image_hash: str = ""
    models: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_choice("caption_source", self.caption_source, CAPTION_SOURCES)
        _check_choice("semantics_source", self.semantics_source, SEMANTICS_SOURCES)
        _check_choice("prompt_source", self.prompt_source, PROMPT_SOURCES)
        _check_choice("hand_action_source", self.hand_action_source, HAND_ACTION_SOURCES)
        if not isinstance(self.semantics, dict):
            raise ValueError(f"semantics: expected a dict with keys {FIELDS}, "
                             f"got {type(self.semantics).__name__}")
        missing = [k for k in FIELDS if not isinstance(self.semantics.get(k), str)]
        if missing:
            raise ValueError(f"semantics: fields {missing} are missing or not strings; "
                             f"give all of {FIELDS} as strings (empty when unknown)")

    def to_dict(self) -> dict:
        """JSON-ready dict (strings, bools, lists, dicts only)."""
        data = asdict(self)
        data["semantics"] = {k: self.semantics[k] for k in FIELDS}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SemanticsResult":
        """Inverse of :meth:`to_dict`; unknown keys are ignored.

        Raises:
            ValueError: a required key (caption, semantics, prompt) is missing, or a value is
                invalid (see the class).
        """
        names = {f.name for f in fields(cls)}
        missing = [k for k in ("caption", "semantics", "prompt") if k not in data]
        if missing:
            raise ValueError(f"semantics result: missing keys {missing}")
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("hand_terms", "conflicts"):
            if key in kwargs:
                kwargs[key] = list(kwargs[key])
        if "models" in kwargs:
            kwargs["models"] = dict(kwargs["models"])
        kwargs["semantics"] = dict(kwargs["semantics"])
        return cls(**kwargs)
