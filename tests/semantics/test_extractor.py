"""Extractor: JSON parsing, schema validation, repair retries, the labelled rule-based
fallback, and model loading errors."""

from __future__ import annotations

import json

import jsonschema
import pytest

from sesahand.semantics.extractor import (Extractor, few_shot_examples, parse_last_json,
                                          prompt_templates, rule_based_extraction,
                                          semantics_schema, validate_semantics)
from sesahand.semantics.result import FIELDS

GOOD = {"pose": "sitting", "action": "smiling", "hand_action": "holding a cup",
        "environment": "in a park"}


class ScriptedExtractor(Extractor):
    """TEST DOUBLE: an Extractor whose ``generate`` returns scripted replies in order and
    records every call (chat, prefix, stop, token bound); no model is involved."""

    def __init__(self, replies, **kwargs):
        super().__init__(model=None, tokenizer=None, model_id="scripted", **kwargs)
        self.replies = list(replies)
        self.calls = []

    def generate(self, messages, prefix="", stop=(), max_new_tokens=None):
        self.calls.append({"messages": messages, "prefix": prefix, "stop": stop,
                           "max_new_tokens": max_new_tokens})
        return self.replies.pop(0) if self.replies else "nothing useful"


def json_tail(fields: dict) -> str:
    """What the model writes after the prefilled '{"pose": "'."""
    return json.dumps(fields)[len('{"pose": "'):]


# --------------------------------------------------------------------------- parsing

def test_parse_finds_json_after_chain_of_thought():
    text = ("The man sits on a bench, so the pose is sitting. His hand holds a cup.\n"
            f"JSON: {json.dumps(GOOD)}\nThat is all.")
    assert parse_last_json(text) == GOOD


def test_parse_takes_the_last_of_several_objects_and_skips_nested_ones():
    first = {"pose": "standing", "action": "", "hand_action": "", "environment": ""}
    nested = {"answer": {"pose": "x"}, "pose": "lying"}
    text = f"draft {json.dumps(first)} then {json.dumps(nested)} trailing"
    assert parse_last_json(text) == nested
    text = f"```json\n{json.dumps(first)}\n```\nand finally ```json\n{json.dumps(GOOD)}\n```"
    assert parse_last_json(text) == GOOD


@pytest.mark.parametrize("text", [
    "", "no json here", '{"pose": "sitting", "action": "smiling"',
    "{'pose': 'sitting'}", '{"pose": "sitting",}', "[1, 2, 3]", "{ { {",
])
def test_parse_rejects_broken_or_non_object_json(text):
    assert parse_last_json(text) is None


def test_parse_keeps_an_earlier_valid_object_when_a_later_one_is_broken():
    text = f"{json.dumps(GOOD)} and then {{\"pose\": \"oops"
    assert parse_last_json(text) == GOOD


# --------------------------------------------------------------------------- schema

def test_schema_is_valid_and_examples_conform():
    jsonschema.Draft202012Validator.check_schema(semantics_schema())
    examples = few_shot_examples()
    assert len(examples) >= 2
    for example in examples:
        assert validate_semantics(example["answer"])[1] is None
        assert list(example["answer"]) == list(FIELDS), "the JSON prefix assumes pose first"


def test_validate_accepts_extra_keys_and_normalises_whitespace():
    fields, error = validate_semantics({**GOOD, "hand_action": "  holding\n a  cup ",
                                        "reasoning": "ignored"})
    assert error is None
    assert fields == {**GOOD, "hand_action": "holding a cup"}


@pytest.mark.parametrize("value, where", [
    ({k: v for k, v in GOOD.items() if k != "environment"}, "environment"),
    ({**GOOD, "pose": 3}, "pose"),
    ({**GOOD, "action": None}, "action"),
    ({**GOOD, "hand_action": "x" * 201}, "hand_action"),
    (["sitting"], "object"),
])
def test_validate_names_the_problem(value, where):
    fields, error = validate_semantics(value)
    assert fields is None and where in error


# --------------------------------------------------------------------------- retries

def test_first_valid_answer_is_labelled_model_with_reasoning_kept():
    ex = ScriptedExtractor(["He sits and holds a cup.", json_tail(GOOD)], max_new_tokens=40)
    result = ex.extract("A man sits in a park holding a cup.")
    assert (result.fields, result.source, result.attempts, result.errors) == (GOOD, "model", 1, [])
    assert result.raw_outputs[0].startswith("He sits and holds a cup.\n")
    reasoning, answer = ex.calls
    assert reasoning["prefix"] == "" and "\n" in reasoning["stop"]
    assert answer["prefix"].endswith(prompt_templates()["json_prefix"])
    assert "}" in answer["stop"]
    assert reasoning["max_new_tokens"] + answer["max_new_tokens"] == 40
    chat = reasoning["messages"]
    assert chat[0]["role"] == "system" and chat[-1]["role"] == "user"
    assert "A man sits in a park holding a cup." in chat[-1]["content"]
    assert len(chat) == 2 + 2 * len(few_shot_examples()), "system, examples, caption"


def test_model_writing_its_own_json_start_is_not_duplicated():
    ex = ScriptedExtractor(['Sitting. JSON: {"pose": "', json_tail(GOOD)])
    result = ex.extract("caption")
    assert result.source == "model"
    assert result.raw_outputs[0].count("JSON") == 1


def test_repair_prompt_names_the_error_and_succeeds():
    missing = {k: v for k, v in GOOD.items() if k != "environment"}
    ex = ScriptedExtractor(["thinking", json_tail(missing), json_tail(GOOD)], max_repairs=2)
    result = ex.extract("A man in a park.")
    assert result.source == "repaired" and result.attempts == 2 and result.fields == GOOD
    assert len(result.errors) == 1 and "environment" in result.errors[0]
    repair = ex.calls[-1]
    assert repair["prefix"] == prompt_templates()["repair_prefix"]
    chat = repair["messages"]
    assert chat[-2]["role"] == "assistant" and chat[-2]["content"] == result.raw_outputs[0]
    assert chat[-1]["role"] == "user" and "environment" in chat[-1]["content"]


@pytest.mark.parametrize("repairs", [0, 1, 2, 3])
def test_never_valid_falls_back_after_bounded_attempts(repairs):
    caption = "A woman standing in a kitchen, chopping onions with a knife in her right hand."
    ex = ScriptedExtractor(["reasoning"] + ["not json"] * 10, max_repairs=repairs)
    result = ex.extract(caption)
    assert result.source == "fallback"
    assert result.attempts == 1 + repairs == len(result.raw_outputs) == len(result.errors)
    assert len(ex.calls) == 2 + repairs, "one reasoning call, then one JSON call per attempt"
    assert result.fields == rule_based_extraction(caption)


def test_bad_settings_and_caption_are_rejected():
    with pytest.raises(ValueError, match="max_new_tokens"):
        ScriptedExtractor([], max_new_tokens=0)
    with pytest.raises(ValueError, match="max_repairs"):
        ScriptedExtractor([], max_repairs=-1)
    with pytest.raises(ValueError, match="caption"):
        ScriptedExtractor([]).extract(None)


def test_config_id_changes_with_the_bounds():
    assert ScriptedExtractor([]).config_id == ScriptedExtractor([]).config_id
    assert ScriptedExtractor([]).config_id != ScriptedExtractor([], max_repairs=0).config_id


# --------------------------------------------------------------------------- rule-based

def test_rule_based_extraction_of_the_paper_example():
    caption = ("A pink donut on a white plate on a wooden table. A woman in a blue shirt sits "
               "at the table, smiling, and holds a donut in one hand.")
    fields = rule_based_extraction(caption)
    assert fields["pose"] == "sitting"
    assert fields["action"] == "smiling"
    assert fields["hand_action"] == "holding a donut in one hand"
    assert fields["environment"] == "", "a table is furniture, not a place"
    assert not {"blue", "plate", "table"} & set(" ".join(fields.values()).split()), \
        "clutter stays out"


def test_rule_based_extraction_splits_gerund_clauses_and_finds_places():
    fields = rule_based_extraction(
        "A man sitting on a bench in a park, holding a cup of coffee in his right hand and "
        "smiling.")
    assert fields == {"pose": "sitting", "action": "smiling",
                      "hand_action": "holding a cup of coffee in his right hand",
                      "environment": "in a park"}


@pytest.mark.parametrize("caption", ["", "   ", "A cat.", "!!!", "x" * 5000])
def test_rule_based_extraction_always_gives_four_strings(caption):
    fields = rule_based_extraction(caption)
    assert list(fields) == list(FIELDS) and all(isinstance(v, str) for v in fields.values())


def test_rule_based_hand_clause_starts_at_the_hand_verb():
    assert rule_based_extraction("A close-up of a hand making a fist.")["hand_action"] == \
        "making a fist"


# --------------------------------------------------------------------------- loading

def test_load_errors_name_the_path_and_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*config.json.*gguf"):
        Extractor.load(tmp_path / "missing")
    text = tmp_path / "weights.bin"
    text.write_bytes(b"0")
    with pytest.raises(FileNotFoundError, match="not a .gguf"):
        Extractor.load(text)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"no config.json.*notes.txt"):
        Extractor.load(tmp_path)


def test_a_random_tiny_llm_ends_in_bounded_attempts(tiny_llm_dir):
    """A real transformers model (random weights, garbage text) through load, the chat
    template, prefilled JSON and stop strings: it ends, labelled, within the bounds."""
    ex = Extractor.load(tiny_llm_dir, max_new_tokens=8, max_repairs=1)
    assert ex.model_id == tiny_llm_dir.name
    caption = "A man waving his hand on a beach."
    result = ex.extract(caption)
    assert result.source in ("model", "repaired", "fallback")
    assert 1 <= result.attempts <= 2 and len(result.raw_outputs) == result.attempts
    if result.source == "fallback":
        assert result.fields == rule_based_extraction(caption)
    else:
        assert validate_semantics(result.fields)[1] is None


def test_the_few_shot_prefix_cache_does_not_change_the_answer(tiny_llm_dir):
    """Generations reuse the encoded system prompt and few-shot turns; the text must equal
    a plain ``generate`` on the whole chat."""
    ex = Extractor.load(tiny_llm_dir, max_new_tokens=6)
    chat = ex.messages("A man waving his hand on a beach.")
    first, second = ex.generate(chat), ex.generate(chat)
    shared_ids, cache = ex._shared  # white-box: the prefix cache was built and is in use
    assert cache is not None and len(shared_ids) > 10
    tok = ex.tokenizer
    inputs = tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True,
                                     return_tensors="pt")
    out = ex.model.generate(**inputs, do_sample=False, max_new_tokens=6,
                            pad_token_id=tok.pad_token_id)
    plain = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert first == second == plain


def test_a_vision_language_model_serves_as_the_text_model(tiny_vlm_dir):
    ex = Extractor.load(tiny_vlm_dir, max_new_tokens=6, max_repairs=0)
    result = ex.extract("A man waving his hand.")
    assert result.attempts == 1 and result.source in ("model", "fallback")
