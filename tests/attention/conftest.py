"""Fixtures of the attention tests: CLIP's real BPE tokenizer and ComfyUI's chunk layout."""

from __future__ import annotations

import pytest

CHUNK = 77  # CLIP's context length: start token, 75 prompt tokens, end token (+ padding)


@pytest.fixture(scope="session")
def clip_bpe():
    """CLIP's BPE tokenizer with its real vocabulary (``bpe_simple_vocab_16e6.txt.gz``, as
    shipped in the open-clip-torch wheel)."""
    tokenizer = pytest.importorskip(
        "open_clip.tokenizer", reason="pip install -r requirements-dev.txt (open-clip-torch)")
    return tokenizer.SimpleTokenizer()


def comfy_chunks(tokenizer, segments, length: int = CHUNK) -> list[list[tuple]]:
    """``(token, weight, word_id)`` chunks laid out as ComfyUI's tokenizer does.

    ``segments`` are ``(text, weight)`` pairs (a prompt after its ``(text:weight)`` syntax is
    parsed); each segment gets its own word id, as in ComfyUI. Every chunk is the start token,
    up to ``length - 2`` prompt tokens, the end token, and end-token padding; the prompt
    tokens run on into the next chunk (cutting words where they fall).
    """
    start, end = tokenizer.encoder["<start_of_text>"], tokenizer.encoder["<end_of_text>"]
    tokens = [(token, weight, word_id)
              for word_id, (text, weight) in enumerate(segments, start=1)
              for token in tokenizer.encode(text)]
    body = length - 2
    chunks = []
    for i in range(0, max(len(tokens), 1), body):
        chunk = [(start, 1.0, 0)] + tokens[i:i + body] + [(end, 1.0, 0)]
        chunks.append(chunk + [(end, 1.0, 0)] * (length - len(chunk)))
    return chunks


@pytest.fixture(scope="session")
def tokenize(clip_bpe):
    """``tokenize(segments, length=77)``: :func:`comfy_chunks` with the real CLIP tokenizer;
    a plain string is one segment of weight 1."""
    def run(segments, length: int = CHUNK):
        if isinstance(segments, str):
            segments = [(segments, 1.0)]
        return comfy_chunks(clip_bpe, segments, length)
    return run
