"""The behaviour-semantics pipeline (docs/method.md): image -> caption -> four fields
-> pose-aware hand action -> prompt and AE hand terms, with caching.

Cache entries (:class:`~sesahand.semantics.cache.SemanticsCache`), so re-running a dataset
with the same models only hashes images and reads small files:

* ``"caption"``: key ``"{captioner.model_id}:{image sha256}"`` -> ``{"caption"}``;
* ``"semantics"``: key ``"{extractor.model_id}:{extractor.config_id}:{caption sha256}"`` ->
  the :class:`~sesahand.semantics.extractor.Extraction` fields (LLM extractions only; the
  rule-based one is cheaper than a cache read).

The pose-aware hand action and the composition are recomputed every time (cheap, and they
depend on the hands given).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Sequence

from .compose import CLIP_MAX_TOKENS, Composition, compose_prompt, compose_with_llm
from .extractor import Extraction, rule_based_extraction
from .hand_action import HandPoseDescription, describe_hand, reconcile_hand_action
from .result import SemanticsResult

log = logging.getLogger(__name__)

COMPOSE_MODES = ("template", "llm")


def _hands(entry, where: str) -> list[HandPoseDescription]:
    """Descriptions of one image's hands: each a (21, 3) array or a ``(joints, side)`` pair."""
    if entry is None:
        return []
    out = []
    for k, hand in enumerate(entry):
        joints, side = hand if isinstance(hand, tuple) and len(hand) == 2 else (hand, "")
        try:
            out.append(describe_hand(joints, side))
        except ValueError as exc:
            raise ValueError(f"{where}[{k}]: {exc}") from None
    return out


class SemanticsPipeline:
    """Caption, extract, check against the hand pose, compose.

    Args:
        captioner: has ``caption(images, batch_size) -> list[str]`` and ``model_id``
            (:class:`~sesahand.semantics.captioner.Captioner`); may be None when only
            :meth:`run_captions` is used.
        extractor: an :class:`~sesahand.semantics.extractor.Extractor`, or None for the
            rule-based extraction (:func:`~sesahand.semantics.extractor.rule_based_extraction`).
        cache: a :class:`~sesahand.semantics.cache.SemanticsCache`, or None.
        max_tokens: prompt budget in CLIP tokens (start and end included), None for no limit.
        compose: ``"template"`` (deterministic) or ``"llm"`` (the extractor writes the
            sentence; template when its output is unusable).
        count_tokens: text -> CLIP tokens (default
            :func:`~sesahand.semantics.compose.clip_token_count`, needs open-clip-torch).
        batch_size: images per captioner call.

    Raises:
        ValueError: unknown ``compose``, ``"llm"`` without an extractor, or ``batch_size`` < 1.
    """

    def __init__(self, captioner, extractor=None, cache=None,
                 max_tokens: int | None = CLIP_MAX_TOKENS, compose: str = "template",
                 count_tokens: Callable[[str], int] | None = None, batch_size: int = 8):
        if compose not in COMPOSE_MODES:
            raise ValueError(f"compose: expected 'template' or 'llm', got {compose!r}")
        if compose == "llm" and extractor is None:
            raise ValueError("compose='llm' needs an extractor LLM; give one or use 'template'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.captioner = captioner
        self.extractor = extractor
        self.cache = cache
        self.max_tokens = max_tokens
        self.compose = compose
        self.count_tokens = count_tokens
        self.batch_size = batch_size

    def _models(self) -> dict:
        models = {"extractor": self.extractor.model_id if self.extractor else "rule-based"}
        if self.captioner is not None:
            models["captioner"] = self.captioner.model_id
        return models

    def captions(self, images: Sequence) -> tuple[list[str], list[str]]:
        """Captions and image hashes of ``images`` (PIL images of any mode, or paths), the
        captioner run in batches on cache misses only.

        Raises:
            ValueError: no captioner, an empty batch, or an unreadable image.
        """
        from .cache import image_hash
        from .captioner import as_rgb_images

        if self.captioner is None:
            raise ValueError("this pipeline has no captioner: give one, or use run_captions")
        rgb = as_rgb_images(images)
        hashes = [image_hash(image) for image in rgb]
        keys = [f"{self.captioner.model_id}:{h}" for h in hashes]
        captions: list[str | None] = [None] * len(rgb)
        if self.cache is not None:
            for i, key in enumerate(keys):
                hit = self.cache.get("caption", key)
                if hit is not None and isinstance(hit.get("caption"), str):
                    captions[i] = hit["caption"]
        missing = [i for i, c in enumerate(captions) if c is None]
        if missing:
            new = self.captioner.caption([rgb[i] for i in missing], batch_size=self.batch_size)
            for i, caption in zip(missing, new):
                captions[i] = caption
                if self.cache is not None:
                    self.cache.put("caption", keys[i], {"caption": caption})
        log.info("captions: %d from the cache, %d generated", len(rgb) - len(missing), len(missing))
        return captions, hashes

    def extract(self, caption: str) -> Extraction:
        """The four fields of a caption: the extractor (cached) or the rule-based fallback."""
        if self.extractor is None:
            return Extraction(rule_based_extraction(caption), "fallback")
        digest = hashlib.sha256(caption.encode()).hexdigest()
        key = f"{self.extractor.model_id}:{self.extractor.config_id}:{digest}"
        if self.cache is not None:
            hit = self.cache.get("semantics", key)
            if hit is not None:
                try:
                    return Extraction(**hit)
                except TypeError:
                    log.warning("semantics cache entry for %s is malformed; re-extracting", key)
        extraction = self.extractor.extract(caption)
        if self.cache is not None:
            self.cache.put("semantics", key, vars(extraction))
        return extraction

    def _compose(self, fields: dict) -> Composition:
        if self.compose == "llm":
            return compose_with_llm(self.extractor, fields, self.max_tokens, self.count_tokens)
        return compose_prompt(fields, self.max_tokens, self.count_tokens)

    def describe(self, caption: str, hands=None, *, caption_source: str = "model",
                 image_hash: str = "") -> SemanticsResult:
        """Semantics of one caption: extraction, pose-aware hand action, composition.

        Args:
            caption: the caption X_t.
            hands: the image's hands, each a (21, 3) joints array (OpenPose order, metres,
                camera frame) or a ``(joints, side)`` pair; None or empty for none.
            caption_source: ``"model"`` or ``"given"`` (recorded).
            image_hash: recorded in the result.
        """
        extraction = self.extract(caption)
        fields = dict(extraction.fields)
        check = reconcile_hand_action(fields["hand_action"], _hands(hands, "hands"))
        for conflict in check.conflicts:
            log.info("hand-action conflict: %s", conflict)
        fields["hand_action"] = check.phrase
        composed = self._compose(fields)
        return SemanticsResult(
            caption=caption, caption_source=caption_source, semantics=fields,
            semantics_source=extraction.source, prompt=composed.prompt,
            prompt_source=composed.source, truncated=composed.truncated,
            hand_terms=composed.hand_terms,
            hand_action_source=check.source, conflicts=list(check.conflicts),
            image_hash=image_hash, models=self._models())

    def _check_joints(self, joints3d, count: int) -> list:
        if joints3d is None:
            return [None] * count
        joints3d = list(joints3d)
        if len(joints3d) != count:
            raise ValueError(f"joints3d: {len(joints3d)} entries for {count} images; give one "
                             "list of hands per image (an empty list for an image without)")
        for i, entry in enumerate(joints3d):
            _hands(entry, f"joints3d[{i}]")  # validate every hand before any model runs
        return joints3d

    def run(self, images: Sequence, joints3d: Sequence | None = None) -> list[SemanticsResult]:
        """Behaviour semantics of a batch of images.

        Args:
            images: PIL images (any mode and size) or image paths; not empty.
            joints3d: None, or one entry per image: a list of its conditioning hands, each
                a (21, 3) array (metres, camera frame, OpenPose order) or ``(joints, side)``.

        Returns:
            One :class:`~sesahand.semantics.result.SemanticsResult` per image, in order.

        Raises:
            ValueError: an empty batch, an unreadable image, ``joints3d`` of another length
                or with a malformed hand (checked before any model runs).
            FileNotFoundError: an image path does not exist.
        """
        images = list(images)
        if not images:
            raise ValueError("images: the batch is empty; give at least one image")
        hands = self._check_joints(joints3d, len(images))
        captions, hashes = self.captions(images)
        return [self.describe(c, h, image_hash=d) for c, h, d in zip(captions, hands, hashes)]

    def run_captions(self, captions: Sequence[str],
                     joints3d: Sequence | None = None) -> list[SemanticsResult]:
        """As :meth:`run`, for captions given by the caller (no captioner;
        ``caption_source="given"``).

        Raises:
            ValueError: an empty list, a caption that is not a string, or bad ``joints3d``.
        """
        captions = list(captions)
        if not captions:
            raise ValueError("captions: the list is empty; give at least one caption")
        bad = [i for i, c in enumerate(captions) if not isinstance(c, str)]
        if bad:
            raise ValueError(f"captions: items {bad} are not strings")
        hands = self._check_joints(joints3d, len(captions))
        return [self.describe(c, h, caption_source="given") for c, h in zip(captions, hands)]
