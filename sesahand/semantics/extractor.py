"""Extractor: caption X_t -> the four behaviour fields (docs/method.md, behaviour semantics,
step 2).

A local instruction LLM (any causal LM transformers loads from a folder, a ``.gguf`` file, or
a vision-language model used as a text model) is prompted with few-shot examples
(``data/examples.json``) and the templates of ``data/prompts.json``: it reasons in a sentence
or two and ends with a JSON object ``{"pose", "action", "hand_action", "environment"}``.

The answer is the last top-level JSON object in the output (:func:`parse_last_json`; JSON
only, nothing is evaluated), validated against ``data/semantics.schema.json``
(:func:`validate_semantics`). A malformed answer gets a repair prompt naming the problem, at
most ``max_repairs`` times; after that, or without an LLM, the fields come from
:func:`rule_based_extraction` and the result says so (``source="fallback"``). Decoding is
greedy and every generation is bounded by ``max_new_tokens``, so extraction always ends.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..attention.words import HAND_WORDS, is_gerund, split_words
from .focus import (ARTICLES, HAND_VERBS, POSTURES, action_phrase, hand_action_phrase,
                    place_phrase, strip_places)
from .result import FIELDS

log = logging.getLogger(__name__)

#: Captions longer than this many characters are cut before prompting (bounds the context).
MAX_CAPTION_CHARS = 2000


def _data(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath("data", name)
                      .read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def semantics_schema() -> dict:
    """The JSON Schema of the four fields (``data/semantics.schema.json``, draft 2020-12)."""
    return _data("semantics.schema.json")


@lru_cache(maxsize=1)
def prompt_templates() -> dict:
    """The prompt templates (``data/prompts.json``): system, user, assistant, repair, compose."""
    return _data("prompts.json")


@lru_cache(maxsize=1)
def few_shot_examples() -> list[dict]:
    """The few-shot examples (``data/examples.json``): caption, reasoning, answer."""
    return _data("examples.json")["examples"]


# --------------------------------------------------------------------------- parsing


def parse_last_json(text: str) -> dict | None:
    """The last top-level JSON object in ``text`` (chain-of-thought, code fences, several
    objects around it are fine), or None when there is none.

    Every ``{`` is tried as the start of a JSON object (:meth:`json.JSONDecoder.raw_decode`);
    objects nested in an earlier one are skipped, so the result is the last outermost
    object. Only strict JSON is accepted (no single quotes, no trailing commas).
    """
    decoder = json.JSONDecoder()
    last, i = None, text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(value, dict):
            last = value
        i = text.find("{", end)
    return last


def validate_semantics(value) -> tuple[dict | None, str | None]:
    """Check a decoded answer against :func:`semantics_schema`.

    Returns:
        ``(fields, None)`` with the four fields (stripped strings, other keys dropped) when
        valid, else ``(None, message)`` naming the first problem (for the repair prompt).
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(semantics_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        return None, f"{where + ': ' if where else ''}{error.message}"
    return {k: " ".join(value[k].split()) for k in FIELDS}, None


# --------------------------------------------------------------------------- rule-based

_SENTENCE = re.compile(r"(?<=[.!?;])\s+")
_CLAUSE = re.compile(r",\s*|\s+(?:while|whereas)\s+|\s+and\s+(?=[a-z]+ing\b)")


def _clauses(caption: str) -> list[tuple[str, bool]]:
    """(clause, is an object's description): a clause after a comma that starts with an
    article ("..., a red bucket lying in the sand") describes a thing, not the person."""
    text = " ".join(caption.split())
    parts = []
    for sentence in _SENTENCE.split(text):
        for k, clause in enumerate(_CLAUSE.split(sentence)):
            clause = clause.strip(" .!?;")
            if clause:
                parts.append((clause, k > 0 and clause.split()[0] in ARTICLES))
    return parts


def _from_first(clause: str, wanted) -> str | None:
    """The clause from its first word satisfying ``wanted`` to its end, or None."""
    tokens = clause.split()
    for i, token in enumerate(tokens):
        word = re.sub(r"[^a-z'-]", "", token.lower())
        if wanted(word):
            return " ".join(tokens[i:])
    return None


def _after_article(clause: str, phrase: str) -> bool:
    before = clause[:len(clause) - len(phrase)].split()
    return bool(before) and before[-1] in ARTICLES


def rule_based_extraction(caption: str) -> dict[str, str]:
    """The four fields from the caption alone, by simple rules (no model).

    The caption is split into clauses (sentences, then commas, "while", and "and" before an
    "-ing" word; a clause after a comma that starts with an article describes a thing and
    gives no pose or action); then, with the distractor rules of :mod:`sesahand.semantics.focus`:

    * ``hand_action``: clauses naming a hand word (:data:`~sesahand.attention.words.HAND_WORDS`)
      or a hand verb (:data:`~sesahand.semantics.focus.HAND_VERBS`), each from its first hand
      verb or "-ing" word (or the clause start) on, the verb in its "-ing" form, joined with
      ", " and reduced to the objects the hands interact with
      (:func:`~sesahand.semantics.focus.hand_action_phrase`);
    * ``environment``: the first place phrase, "place preposition [article] [modifiers]
      scene noun" (:func:`~sesahand.semantics.focus.place_phrase`); objects and furniture
      never count ("at the table" is not a place);
    * ``pose``: the posture words (:data:`~sesahand.semantics.focus.POSTURES`, as "-ing"
      forms) in order, joined with " and ";
    * ``action``: the first "-ing" word of the remaining clauses (not a posture or hand
      word) with the rest of its clause, as one verb phrase
      (:func:`~sesahand.semantics.focus.action_phrase`).

    Fields with nothing found are empty strings. Lower case, whitespace collapsed.
    """
    clauses = _clauses(caption[:MAX_CAPTION_CHARS].lower())
    hands, actions, poses, place = [], [], [], ""
    for clause, is_thing in clauses:
        words = split_words(clause)
        for word in [] if is_thing else words:
            if word in POSTURES and POSTURES[word] not in poses:
                poses.append(POSTURES[word])
        place = place or place_phrase(clause, need_preposition=True)
        if any(w in HAND_WORDS or w in HAND_VERBS for w in words):
            phrase = _from_first(clause, lambda w: w in HAND_VERBS or is_gerund(w)) or clause
            verb, _, rest = phrase.partition(" ")
            hands.append(" ".join([HAND_VERBS.get(verb, verb), rest]).strip())
            continue
        phrase = None if is_thing else _from_first(
            clause, lambda w: is_gerund(w) and w not in POSTURES)
        if phrase and _after_article(clause, phrase):  # "a watering can" is an object
            phrase = None
        phrase = action_phrase(strip_places(phrase)) if phrase else ""
        if phrase and phrase not in actions:
            actions.append(phrase)
    return {
        "pose": " and ".join(poses),
        "action": actions[0] if actions else "",
        "hand_action": hand_action_phrase(", ".join(dict.fromkeys(hands))),
        "environment": place,
    }


# --------------------------------------------------------------------------- the LLM


@dataclass
class Extraction:
    """The outcome of one :meth:`Extractor.extract` call.

    Attributes:
        fields: ``{"pose", "action", "hand_action", "environment"}`` strings.
        source: ``"model"`` (first answer valid), ``"repaired"`` (valid after a repair
            prompt) or ``"fallback"`` (:func:`rule_based_extraction`).
        raw_outputs: the LLM's text of every attempt, in order (empty without an LLM).
        attempts: number of generations run (at most ``1 + max_repairs``).
        errors: why each rejected attempt was rejected.
    """

    fields: dict[str, str]
    source: str
    raw_outputs: list[str] = field(default_factory=list)
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


def _schema_keys() -> str:
    return ", ".join(f'"{k}"' for k in FIELDS)


def _model_source(path: Path) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a model path; FileNotFoundError if unusable."""
    expected = ("a folder with config.json, tokenizer files (tokenizer.json or "
                "tokenizer_config.json) and weights (*.safetensors), or a .gguf file")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise FileNotFoundError(f"LLM path {path} is a file but not a .gguf file; "
                                    f"give {expected}")
        return path.parent, path.name
    if not path.is_dir():
        raise FileNotFoundError(f"LLM path {path} does not exist; give {expected}")
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0].name
    found = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "nothing"
    raise FileNotFoundError(f"LLM folder {path} has no config.json"
                            f"{' and several .gguf files' if ggufs else ''} (found: {found}); "
                            f"give {expected}")


class Extractor:
    """Few-shot chain-of-thought extraction of the four behaviour fields with a local LLM.

    Args:
        model: a transformers model with ``generate`` (causal LM, or a VLM given text only).
        tokenizer: its tokenizer (a chat template is used when it has one, else a plain
            "Role: text" transcript).
        model_id: identity of the model (cache keys, result records).
        max_new_tokens: bound of every generation (reasoning + JSON; > 0).
        max_repairs: repair prompts after a malformed answer (>= 0) before the fallback.

    Raises:
        ValueError: ``max_new_tokens`` < 1 or ``max_repairs`` < 0.
    """

    def __init__(self, model, tokenizer, model_id: str, *, max_new_tokens: int = 192,
                 max_repairs: int = 2):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
        if isinstance(max_repairs, bool) or not isinstance(max_repairs, int) or max_repairs < 0:
            raise ValueError(f"max_repairs: expected an integer >= 0, got {max_repairs!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.max_repairs = max_repairs
        self._shared = None

    @classmethod
    def load(cls, path, device="cpu", dtype=None, **kwargs) -> "Extractor":
        """Load a local LLM (no downloads: ``local_files_only=True``).

        Args:
            path: a model folder (``config.json`` + tokenizer + weights), a ``.gguf`` file
                (loaded with ``gguf_file=``, de-quantised; needs the ``gguf`` package), or a
                folder holding exactly one ``.gguf`` file. A vision-language model folder
                works too (used as a text model).
            device: torch device of the model.
            dtype: torch dtype of the weights (default float32).
            **kwargs: :class:`Extractor` options (``max_new_tokens``, ``max_repairs``).

        Raises:
            FileNotFoundError: the path is missing or holds no loadable model (the message
                names the path and the expected files).
            ValueError: transformers cannot build a text-generating model from it.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, gguf = _model_source(Path(path).expanduser())
        common = {"local_files_only": True}
        if gguf:
            common["gguf_file"] = gguf
        dtype = torch.float32 if dtype is None else dtype
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **common)
            try:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **common)
            except ValueError:  # a vision-language model: use it as a text model
                from transformers import AutoModelForImageTextToText

                model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, **common)
        except OSError as exc:
            raise FileNotFoundError(f"LLM {folder / (gguf or '')}: transformers could not load "
                                    f"it ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"LLM {folder / (gguf or '')} is not a text-generating model "
                             f"transformers knows ({exc})") from None
        model.to(device).eval()
        return cls(model, tokenizer, gguf or folder.name, **kwargs)

    @property
    def config_id(self) -> str:
        """Short hash of everything besides the model that shapes the answer (prompts,
        examples, schema, bounds): part of extraction cache keys."""
        blob = json.dumps([prompt_templates(), few_shot_examples(), semantics_schema(),
                           self.max_new_tokens, self.max_repairs], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def messages(self, caption: str) -> list[dict]:
        """The chat of the first attempt: system prompt, few-shot turns, the caption."""
        t = prompt_templates()
        keys = _schema_keys()
        chat = [{"role": "system", "content": t["system"]}]
        for example in few_shot_examples():
            chat.append({"role": "user", "content": t["user"].format(
                caption=example["caption"], schema_keys=keys)})
            chat.append({"role": "assistant", "content": t["assistant"].format(
                reasoning=example["reasoning"], answer=json.dumps(example["answer"]))})
        chat.append({"role": "user", "content": t["user"].format(
            caption=caption[:MAX_CAPTION_CHARS], schema_keys=keys)})
        return chat

    def _render(self, messages: list[dict], generation: bool) -> list[int]:
        """Token ids of a chat: the tokenizer's chat template when it has one (it writes the
        special tokens itself), else a "Role: text" transcript."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=generation,
                                           tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
        return tok(text + ("Assistant: " if generation else ""))["input_ids"]

    def _prefix_cache(self, ids: list[int]):
        """A fresh copy of the key/value cache of the system prompt and few-shot turns, or
        None when ``ids`` does not start with them. Every generation starts with the same
        turns, so they are encoded once (on first use) and reused."""
        import torch

        if self._shared is None:
            # the tokens the few-shot turns alone and a whole extraction chat have in common
            turns = self._render(self.messages("")[:-1], generation=False)
            chat = self._render(self.messages(""), generation=True)
            n = 0
            while n < min(len(turns), len(chat)) and turns[n] == chat[n]:
                n += 1
            cache = None
            if n:
                device = next(self.model.parameters()).device
                with torch.inference_mode():
                    cache = self.model(input_ids=torch.tensor([chat[:n]], device=device),
                                       use_cache=True).past_key_values
            self._shared = (chat[:n], cache)
        shared, cache = self._shared
        if cache is None or len(ids) <= len(shared) or ids[:len(shared)] != shared:
            return None
        return copy.deepcopy(cache)

    def generate(self, messages: list[dict], prefix: str = "", stop: tuple[str, ...] = (),
                 max_new_tokens: int | None = None) -> str:
        """Greedy continuation of a chat.

        The key/value cache of the system prompt and few-shot turns (:meth:`_prefix_cache`)
        is reused, so only the rest of the chat is encoded.

        Args:
            messages: ``[{"role", "content"}, ...]``; rendered with the tokenizer's chat
                template when it has one, else as a "Role: text" transcript.
            prefix: text the assistant's reply starts with (prefilled, not generated).
            stop: strings that end generation once produced (kept in the output).
            max_new_tokens: bound on new tokens (default ``self.max_new_tokens``).

        Returns:
            The generated text after ``prefix``.
        """
        import torch

        tok = self.tokenizer
        ids = self._render(messages, generation=True)
        ids += tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        options = {"stop_strings": list(stop), "tokenizer": tok} if stop else {}
        cache = self._prefix_cache(ids)
        if cache is not None:
            options["past_key_values"] = cache
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids,
                                      attention_mask=torch.ones_like(input_ids),
                                      do_sample=False, pad_token_id=pad,
                                      max_new_tokens=max_new_tokens or self.max_new_tokens,
                                      **options)
        return tok.decode(out[0, len(ids):], skip_special_tokens=True)

    def _attempt(self, chat: list[dict], first: bool) -> str:
        """One attempt's full assistant reply. The first reasons (up to half the token
        budget, until a line break or a brace), then the JSON is started for the model
        (``prompts.json`` "json_prefix"); a repair attempt starts with the JSON directly."""
        t = prompt_templates()
        budget = max(1, self.max_new_tokens // 2)
        reply = ""
        if first:
            reasoning = self.generate(chat, stop=("\n", "{"), max_new_tokens=budget)
            reasoning = re.split(r"\{|\n|JSON", reasoning, maxsplit=1)[0].strip()
            reply = reasoning + "\n" if reasoning else ""
        reply += t["json_prefix"] if first else t["repair_prefix"]
        return reply + self.generate(chat, prefix=reply, stop=("}",),
                                     max_new_tokens=self.max_new_tokens - budget
                                     if first else self.max_new_tokens)

    def extract(self, caption: str) -> Extraction:
        """The four fields of ``caption`` (see the module docstring for the procedure).

        Raises:
            ValueError: ``caption`` is not a string.
        """
        if not isinstance(caption, str):
            raise ValueError(f"caption: expected a string, got {type(caption).__name__}")
        chat = self.messages(caption)
        raw, errors = [], []
        for attempt in range(1 + self.max_repairs):
            text = self._attempt(chat, first=attempt == 0)
            raw.append(text)
            value = parse_last_json(text)
            if value is None:
                error = "it contains no complete JSON object"
            else:
                fields, error = validate_semantics(value)
                if error is None:
                    return Extraction(fields, "model" if attempt == 0 else "repaired", raw,
                                      attempt + 1, errors)
            errors.append(error)
            log.info("extractor attempt %d rejected: %s", attempt + 1, error)
            chat = chat + [{"role": "assistant", "content": text},
                           {"role": "user", "content": prompt_templates()["repair"].format(
                               error=error, schema_keys=_schema_keys())}]
        log.warning("extractor %s gave no valid JSON in %d attempts; using the rule-based "
                    "fallback", self.model_id, len(raw))
        return Extraction(rule_based_extraction(caption), "fallback", raw, len(raw), errors)
