"""Hand words -> cross-attention key positions of CLIP's chunked, weighted tokenisation.

Input format (ComfyUI's ``clip.tokenize(text, return_word_ids=True)`` per text encoder): a
list of chunks, each a list of ``(token, weight, word_id)`` with CLIP's fixed length (77 for
SD1.x / SDXL): the start token, up to 75 prompt tokens, the end token, then padding. The text
encoder encodes every chunk and concatenates them, so the conditioning has
``len(chunks) * 77`` keys and the token at index ``i`` of chunk ``c`` is key
``c * 77 + i``. Tokens with ``word_id == 0`` are the start, end and padding tokens; a token
that is a tensor is a textual-inversion embedding vector.

Words are recovered from the BPE pieces themselves, not from the word ids (ComfyUI gives one
word id per weighted segment of the prompt, not per word): CLIP's vocabulary marks the last
piece of every word with ``</w>``, so consecutive pieces up to that marker are one word,
wherever the prompt weights ``(hand:1.2)`` cut the text and even where a long word is cut
across two chunks. Positions count the start token and every earlier chunk, and a word split
into several BPE pieces has all of them selected.

T5's SentencePiece tokens (Flux, SD3/SD3.5; ``style="sentencepiece"``) come the same way from
ComfyUI, as one chunk without a start token: the end token, then padding to the tokenizer's
minimum length (256 for Flux, 77 for SD3). There a piece that begins with ``▁`` starts a new
word, and a piece of punctuation only is a word of its own.

Models with several text encoders lay their tokens out one after the other in the key sequence
(SD3: the CLIP-L/CLIP-G chunks, then the T5 tokens): :func:`join_hand_tokens` concatenates the
selections in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral

import torch

from .words import hand_word_set, is_hand_word, is_word, split_words

#: CLIP's end-of-word marker on the last BPE piece of every word.
END_OF_WORD = "</w>"
#: SentencePiece's word-start marker on the first piece of every word (T5).
WORD_START = "\u2581"
#: How a tokenizer marks words: ``clip`` (BPE, end-of-word marker), ``sentencepiece`` (T5,
#: word-start marker).
STYLES = ("clip", "sentencepiece")


@dataclass(frozen=True)
class PromptWord:
    """One word of the prompt as CLIP tokenized it.

    Attributes:
        text: lower-case word (BPE pieces joined, end-of-word marker removed); punctuation is
            a word of its own.
        positions: its flat key positions (ascending), one per BPE piece.
    """

    text: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class HandTokens:
    """The hand-related key positions of one prompt (the set I of eq. AE-1).

    Attributes:
        positions: flat key positions in ``[0, num_keys)``, ascending, without duplicates.
        words: the selected words in prompt order (for messages).
        num_keys: number of keys the prompt encodes to (chunks x chunk length).
        unmatched_terms: explicit terms that occur nowhere in the prompt.
    """

    positions: tuple[int, ...]
    words: tuple[str, ...]
    num_keys: int
    unmatched_terms: tuple[str, ...] = ()

    def key_bias(self, alpha: float, num_keys: int | None = None, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The bias row of eq. AE-1: ``alpha`` at the hand positions, 0 elsewhere.

        Args:
            alpha: the bias added to the logits of hand tokens.
            num_keys: key length of the cross-attention (default ``self.num_keys``). A
                multiple of ``self.num_keys`` tiles the row: samplers repeat a shorter
                conditioning to the length of a longer one when they batch them together
                (which leaves attention unchanged, and the tiled bias keeps it so).
            device, dtype: of the result.

        Returns:
            Tensor ``(num_keys,)``.

        Raises:
            ValueError: ``num_keys`` is not a multiple of ``self.num_keys`` (the prompt is
                not the text that was encoded).
        """
        n = self.num_keys if num_keys is None else num_keys
        if n <= 0 or n % self.num_keys:
            raise ValueError(
                f"the cross-attention has {n} text tokens, which is not a multiple of the "
                f"{self.num_keys} tokens of the prompt: give as prompt the same text that "
                "was encoded into the positive conditioning")
        row = torch.zeros(self.num_keys, device=device, dtype=dtype)
        row[list(self.positions)] = alpha
        return row.repeat(n // self.num_keys)


def prompt_words(chunks: Sequence[Sequence[tuple]], vocab: Mapping[int, str], *,
                 style: str = "clip") -> list[PromptWord]:
    """The words of a chunked tokenisation with their flat key positions.

    Args:
        chunks: ``[[(token, weight, word_id), ...], ...]`` (see the module docstring).
        vocab: token id -> piece (``"hand</w>"`` for CLIP, ``"▁hand"`` for T5), e.g.
            ComfyUI's ``SDTokenizer.inv_vocab``, open_clip's ``SimpleTokenizer.decoder`` or
            transformers' ``convert_ids_to_tokens``.
        style: ``clip`` or ``sentencepiece`` (:data:`STYLES`): how pieces mark words.

    Returns:
        The words in prompt order. Embedding vectors are no word and end the word before them.

    Raises:
        ValueError: an entry is not a ``(token, weight, word_id)`` triple, a token id is
            not in ``vocab``, or an unknown ``style``.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    words: list[PromptWord] = []
    text, positions = "", []

    def finish() -> None:
        nonlocal text, positions
        if positions:
            words.append(PromptWord(text.lower(), tuple(positions)))
        text, positions = "", []

    offset = 0
    for chunk in chunks:
        for index, entry in enumerate(chunk):
            if len(entry) != 3:
                raise ValueError("tokens need word ids: tokenize with "
                                 "clip.tokenize(text, return_word_ids=True)")
            token, _weight, word_id = entry
            if word_id == 0:  # start, end and padding tokens; a cut word goes on after them
                continue
            if not isinstance(token, Integral):  # an embedding vector
                finish()
                continue
            try:
                piece = vocab[int(token)]
            except KeyError:
                raise ValueError(f"token id {int(token)} is not in the tokenizer's vocabulary") \
                    from None
            if style == "sentencepiece":
                if piece.startswith(WORD_START):
                    finish()
                    piece = piece[len(WORD_START):]
                if not piece:  # a bare word-start piece: a space
                    continue
                if not any(c.isalnum() for c in piece):  # punctuation: a word of its own
                    finish()
                    text, positions = piece, [offset + index]
                    finish()
                    continue
                text += piece
                positions.append(offset + index)
                continue
            positions.append(offset + index)
            if piece.endswith(END_OF_WORD):
                text += piece[:-len(END_OF_WORD)]
                finish()
            else:
                text += piece
        offset += len(chunk)
    finish()
    return words


def find_hand_tokens(chunks: Sequence[Sequence[tuple]], vocab: Mapping[int, str],
                     terms: Iterable[str] = (), *, preset: str = "default",
                     style: str = "clip") -> HandTokens:
    """Select the hand-related tokens of a prompt (eq. AE-1's set I).

    A word is selected if it is a hand word of ``preset`` or a gerund
    (:func:`words.is_hand_word`), or if it is part of an occurrence of one of ``terms`` (a
    word or phrase, compared word by word with :func:`words.split_words`, punctuation
    ignored). Every piece of a selected word is selected.

    Args:
        chunks, vocab, style: as :func:`prompt_words`.
        terms: extra words or phrases (the captioner's hand-action phrase, user words).
        preset: ``default`` (the wider hand-word set) or ``paper`` (exactly hand, hands,
            finger, fingers, gesture), see :data:`words.HAND_WORD_PRESETS`.

    Returns:
        :class:`HandTokens`; ``positions`` is empty when nothing matched.

    Raises:
        ValueError: as :func:`prompt_words`, or an unknown ``preset``.
    """
    hand_word_set(preset)  # an unknown preset fails even for a prompt without words
    words = [word for word in prompt_words(chunks, vocab, style=style) if is_word(word.text)]
    texts = [word.text for word in words]
    chosen = {i for i, text in enumerate(texts) if is_hand_word(text, preset)}
    unmatched = []
    for term in terms:
        wanted = split_words(term)
        n = len(wanted)
        starts = [i for i in range(len(texts) - n + 1) if n and texts[i:i + n] == wanted]
        if not starts:
            unmatched.append(term)
        for start in starts:
            chosen.update(range(start, start + n))
    order = sorted(chosen)
    positions = sorted({p for i in order for p in words[i].positions})
    return HandTokens(positions=tuple(positions), words=tuple(texts[i] for i in order),
                      num_keys=sum(len(chunk) for chunk in chunks),
                      unmatched_terms=tuple(unmatched))


def join_hand_tokens(parts: Sequence[HandTokens]) -> HandTokens:
    """The selections of several text encoders whose outputs are concatenated along the
    sequence (SD3: CLIP-L/G chunks, then T5), as one selection over the whole key sequence.

    Args:
        parts: the selections in sequence order, each in its own encoder's key positions.

    Returns:
        :class:`HandTokens` with each part's positions shifted by the keys before it,
        ``num_keys`` the sum, ``words`` those of the first part that found any, and as
        ``unmatched_terms`` the terms no part found.

    Raises:
        ValueError: ``parts`` is empty.
    """
    if not parts:
        raise ValueError("join_hand_tokens needs at least one selection")
    positions, offset = [], 0
    for part in parts:
        positions.extend(offset + p for p in part.positions)
        offset += part.num_keys
    words = next((part.words for part in parts if part.words), ())
    unmatched = tuple(t for t in parts[0].unmatched_terms
                      if all(t in part.unmatched_terms for part in parts))
    return HandTokens(positions=tuple(positions), words=words, num_keys=offset,
                      unmatched_terms=unmatched)
