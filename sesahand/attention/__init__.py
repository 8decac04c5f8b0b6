"""Hand structure attention enhancement (AE): a bias on the cross-attention logits of
hand-related prompt tokens (eq. AE-1), no parameters.

``find_hand_tokens`` selects the hand words of a prompt (hand lexicon, gerunds, explicit
terms) and maps them to the key positions of CLIP's chunked tokenisation; ``HandTokens.key_bias``
is the bias row; ``biased_attention`` is the attention with that bias (SDPA, float mask),
optionally restricted to query pixels inside a hand mask (``hand_query_weights``);
``joint_key_bias`` is the same bias as a mask for joint text-image attention (Flux, SD3).
"""

from .bias import (ALPHA_RANGE, DEFAULT_ALPHA, biased_attention, check_alpha, hand_query_weights,
                   joint_key_bias)
from .tokens import STYLES, HandTokens, PromptWord, find_hand_tokens, join_hand_tokens, prompt_words
from .words import (HAND_WORD_PRESETS, HAND_WORDS, NOT_GERUNDS, PAPER_HAND_WORDS, hand_word_set,
                    is_gerund, is_hand_word, parse_terms, split_words)

__all__ = ["ALPHA_RANGE", "DEFAULT_ALPHA", "HAND_WORDS", "HAND_WORD_PRESETS", "NOT_GERUNDS",
           "PAPER_HAND_WORDS", "STYLES", "HandTokens", "PromptWord", "biased_attention",
           "check_alpha", "find_hand_tokens", "hand_query_weights", "hand_word_set", "is_gerund",
           "is_hand_word", "join_hand_tokens", "joint_key_bias", "parse_terms", "prompt_words",
           "split_words"]
