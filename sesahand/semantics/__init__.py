"""Behaviour semantics (docs/method.md): image -> VLM caption -> LLM extraction of pose, action,
hand action and environment -> pose-aware hand action -> composed prompt + AE hand terms.

transformers (and accelerate, gguf for .gguf LLMs) is an optional dependency, imported when a
model is loaded; everything else here works without it.
"""

from .cache import SemanticsCache, image_hash
from .captioner import CAPTION_PROMPT, Captioner, load_image, to_rgb
from .compose import CLIP_MAX_TOKENS, Composition, clip_token_count, compose_prompt, hand_terms
from .extractor import Extraction, Extractor, rule_based_extraction
from .focus import focus_fields, place_phrase
from .hand_action import HandPoseDescription, describe_hand, reconcile_hand_action
from .pipeline import SemanticsPipeline
from .result import FIELDS, SemanticsResult

__all__ = [
    "CAPTION_PROMPT", "CLIP_MAX_TOKENS", "Captioner", "Composition", "Extraction", "Extractor",
    "FIELDS", "HandPoseDescription", "SemanticsCache", "SemanticsPipeline", "SemanticsResult",
    "clip_token_count", "compose_prompt", "describe_hand", "focus_fields", "hand_terms",
    "image_hash", "place_phrase",
    "load_image", "reconcile_hand_action", "rule_based_extraction", "to_rgb",
]
