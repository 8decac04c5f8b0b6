"""Shared fixtures of the semantics tests (built once per session, a few seconds in all).

Fixtures:
    tiny_vlm_dir: folder of a tiny random LLaVA (``tests/semantics/tiny_vlm.py``) that the
        captioner loads; 32x32 images, word-level test tokenizer with a chat template.
    tiny_llm_dir: folder of a tiny random ``LlamaForCausalLM`` with the same tokenizer (a
        text-only model: an extractor LLM whose output is garbage, so the pipeline falls back).
    tiny_captioner: ``Captioner`` loaded from ``tiny_vlm_dir`` on CPU, float32,
        ``max_new_tokens=8``.

``tiny_vlm`` (the module ``tests/semantics/tiny_vlm.py`` itself: builders, tokenizer) is in
``tests/conftest.py``: the node tests build their LLM folder with it too.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny_vlm_dir(tiny_vlm, tmp_path_factory):
    return tiny_vlm.build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_llm_dir(tiny_vlm, tmp_path_factory):
    return tiny_vlm.build_tiny_llm(tmp_path_factory.mktemp("tiny_llm") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_captioner(tiny_vlm_dir):
    from sesahand.semantics.captioner import Captioner

    return Captioner.load(tiny_vlm_dir, device="cpu", dtype="float32", max_new_tokens=8)
