"""Prompts as ComfyUI's CLIP Text Encode sees them, for training: token ids, token weights and
the hand-token mask of eq. AE-1, at the same positions as at inference.

ComfyUI (``comfy/sd1_clip.py``) does not feed the prompt to CLIP's tokenizer as one string: it
parses the weight syntax first (``(hand:1.3)``: weight 1.3; ``(hand)``: x1.1 per level of
brackets; ``\\(`` and ``\\)`` are literal brackets), tokenizes every weighted segment on its own
(brackets and weights removed), and packs the tokens into chunks of 77 (start token, up to 75
tokens, end token, padding with the end token). A segment of fewer than 8 tokens that does not
fit in the current chunk moves whole to the next one; a longer one is cut at the boundary.
Weights are applied to the encoded tokens (``(z - z_empty) * weight + z_empty``,
:func:`sesahand.train.model.encode_text`). Training does the same here, so the hand mask of a
caption (``sesahand.attention.find_hand_tokens``, the function the Hand Attention node uses) is
at the positions ComfyUI biases.

Training encodes every chunk, each on its own, and concatenates them along the tokens, as
ComfyUI does (up to ``sesahand.limits.MAX_PROMPT_CHUNKS``; a longer caption's tail is dropped
with a warning). Captions of different chunk counts in one batch are repeated to a common
length (:func:`repeat_to_common_length`, ComfyUI's rule for batched conditionings: repeating
all keys leaves attention unchanged). Textual-inversion embeddings
(``embedding:NAME``) are not supported in training: the words are tokenized as text.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)

#: CLIP's context length (one chunk).
MAX_TOKENS = 77
#: Segments of at least this many tokens may be cut across two chunks (ComfyUI's rule).
MAX_WORD_LENGTH = 8
#: Weight of one level of plain brackets.
BRACKET_WEIGHT = 1.1
#: Stand-ins of escaped brackets while the weight syntax is parsed.
_ESCAPED = {"\\)": "\0\1", "\\(": "\0\2"}


def _top_level_groups(text: str) -> list[str]:
    """``text`` cut into plain runs and top-level bracket groups (brackets kept)."""
    groups, current, depth = [], "", 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                groups.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            current += char
            if depth == 0:
                groups.append(current)
                current = ""
        else:
            current += char
    if current:
        groups.append(current)
    return groups


def weighted_segments(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """The prompt's segments with their weights, as ComfyUI parses them.

    >>> weighted_segments("a (hand:1.3) and ((fingers))")
    [('a ', 1.0), ('hand', 1.3), (' and ', 1.0), ('fingers', 1.2100000000000002)]
    """
    for escaped, stand_in in _ESCAPED.items():
        text = text.replace(escaped, stand_in)
    return [(_unescape(segment), w) for segment, w in _parse(text, weight)]


def _parse(text: str, weight: float) -> list[tuple[str, float]]:
    out = []
    for group in _top_level_groups(text):
        if len(group) >= 2 and group[0] == "(" and group[-1] == ")":
            inner, inner_weight = group[1:-1], weight * BRACKET_WEIGHT
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _parse(inner, inner_weight)
        else:
            out.append((group, weight))
    return out


def _unescape(text: str) -> str:
    for escaped, stand_in in _ESCAPED.items():
        text = text.replace(stand_in, escaped[1])
    return text


def comfy_chunks(tokenizer, prompt: str) -> list[list[tuple[int, float, int]]]:
    """The prompt tokenized as ComfyUI's SD1.5 CLIP Text Encode does (module docstring).

    Args:
        tokenizer: the SD1.5 ``transformers.CLIPTokenizer`` (start, end and padding tokens
            ``<|startoftext|>``, ``<|endoftext|>``, ``<|endoftext|>``).
        prompt: the text, with ComfyUI's weight syntax.

    Returns:
        Chunks of 77 ``(token id, weight, word id)`` (word id 0: start, end and padding; i + 1
        for the tokens of segment i), the format of ``clip.tokenize(text, return_word_ids=True)``
        that ``sesahand.attention.find_hand_tokens`` reads.
    """
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    groups = []
    for segment, weight in weighted_segments(prompt):
        if segment:
            groups.append([(t, weight) for t in tokenizer(segment)["input_ids"][1:-1]])
    chunks, chunk = [], [(start, 1.0, 0)]
    for index, group in enumerate(groups):
        large = len(group) >= MAX_WORD_LENGTH
        while group:
            room = MAX_TOKENS - 1 - len(chunk)
            if len(group) <= room:
                chunk.extend((t, w, index + 1) for t, w in group)
                group = []
                continue
            if large:  # cut the segment at the chunk boundary
                chunk.extend((t, w, index + 1) for t, w in group[:room])
                group = group[room:]
                chunk.append((end, 1.0, 0))
            else:  # end the chunk here; the segment goes whole into the next one
                chunk.append((end, 1.0, 0))
                chunk.extend([(end, 1.0, 0)] * room)
            chunks.append(chunk)
            chunk = [(start, 1.0, 0)]
    chunk.append((end, 1.0, 0))
    chunk.extend([(end, 1.0, 0)] * (MAX_TOKENS - len(chunk)))
    chunks.append(chunk)
    return chunks


def tokenize_prompt(tokenizer, vocab: dict[int, str], prompt: str, terms: Sequence[str] = ()
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, token weights and hand-token mask of a prompt, as ComfyUI has them.

    Args:
        tokenizer: the SD1.5 ``CLIPTokenizer`` (transformers).
        vocab: token id -> BPE piece of that tokenizer.
        prompt: the text (ComfyUI weight syntax allowed); beyond
            ``sesahand.limits.MAX_PROMPT_CHUNKS`` chunks (75 tokens each) the rest is dropped
            with a warning.
        terms: extra hand words/phrases (:func:`sesahand.attention.find_hand_tokens`).

    Returns:
        ``input_ids`` (C * 77,) int64 for C chunks, ``token_weights`` (C * 77,) float32 (1
        outside weighted segments) and ``hand_token_mask`` (C * 77,) bool, True at the
        positions of hand words (eq. AE-1's set I): ComfyUI's tokens, weights and the Hand
        Attention node's positions for the same prompt.
    """
    from ..attention.tokens import find_hand_tokens
    from ..limits import MAX_PROMPT_CHUNKS

    chunks = comfy_chunks(tokenizer, prompt)
    if len(chunks) > MAX_PROMPT_CHUNKS:
        log.warning("caption longer than %d CLIP chunks (%d tokens); training uses the first %d: %.60s...",
                    MAX_PROMPT_CHUNKS, 75 * MAX_PROMPT_CHUNKS, MAX_PROMPT_CHUNKS, prompt)
        chunks = chunks[:MAX_PROMPT_CHUNKS]
    hand = find_hand_tokens(chunks, vocab, terms)
    tokens = [token for chunk in chunks for token in chunk]
    mask = torch.zeros(len(tokens), dtype=torch.bool)
    mask[list(hand.positions)] = True
    ids = torch.tensor([t for t, _, _ in tokens], dtype=torch.long)
    weights = torch.tensor([w for _, w, _ in tokens], dtype=torch.float32)
    return ids, weights, mask


def repeat_to_common_length(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-prompt token tensors of C_i * 77 tokens (dim 0) into one batch, repeating each
    along its tokens to the least common multiple of the lengths: ComfyUI's rule for batching
    conditionings of different lengths (``comfy.conds.CONDCrossAttn.concat``). Repeating every
    key of a cross-attention the same number of times leaves its output unchanged, and a
    repeated hand-token mask biases the same keys.

    Args:
        rows: tensors ``(L_i, ...)`` with ``L_i`` a multiple of 77 (ids, weights, masks or
            encodings without their batch axis).

    Returns:
        ``(len(rows), L, ...)`` with ``L = lcm(L_i)``.

    Raises:
        ValueError: a length that is not a whole number of chunks, or rows whose other
            dimensions differ.
    """
    lengths = [int(r.shape[0]) for r in rows]
    if not rows or any(n == 0 or n % MAX_TOKENS for n in lengths):
        raise ValueError(f"prompt token rows must be whole chunks of {MAX_TOKENS}, got lengths {lengths}")
    common = math.lcm(*lengths)
    return torch.stack([r.repeat(common // r.shape[0], *([1] * (r.ndim - 1))) for r in rows])
