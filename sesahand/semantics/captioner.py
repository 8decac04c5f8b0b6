"""Captioner: a local vision-language model writes a caption X_t of an image (docs/method.md,
behaviour semantics, step 1).

Any VLM that transformers loads from a local folder works: ``AutoProcessor`` +
``AutoModelForImageTextToText`` (LLaVA, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, SmolVLM / Idefics3,
Florence-2, BLIP, BLIP-2 ...), or the class named in the folder's ``config.json`` when the auto
class does not know the model but it has a vision tower. Nothing is downloaded
(``local_files_only=True``). transformers is an optional dependency, imported on load.

Images are read with PIL defensively (:func:`load_image`) and normalised to 8-bit RGB
(:func:`to_rgb`), whatever their size and mode.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..io import pil_to_rgb

logger = logging.getLogger(__name__)

#: The captioning instruction (OPEN in the paper; this project's choice): people first, and
#: what each hand does, so the extractor finds pose, action and hand action in the caption.
CAPTION_PROMPT = (
    "Describe this image in detail, focusing on the people. Say how each person's body is "
    "posed, what they are doing, and exactly what each of their hands is doing: what the hand "
    "holds or touches, the gesture, and which fingers are extended or bent. Then describe the "
    "setting in one short sentence.")

#: Prompt text for model families whose processor has no chat template and which expect a
#: fixed task text instead of an instruction ("" = unconditional captioning).
PLAIN_PROMPTS = {"florence2": "<MORE_DETAILED_CAPTION>", "blip": ""}

#: Default number of generated tokens per caption.
MAX_NEW_TOKENS = 160

#: Files a model folder must hold, by role, as alternatives (one of each group).
EXPECTED_FILES = {
    "config": ("config.json",),
    "weights": ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json"),
    "processor": ("processor_config.json", "preprocessor_config.json"),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"),
}

ImageInput = Union[Image.Image, str, os.PathLike]


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image``, any mode and size.

    The mode rules are :func:`sesahand.io.pil_to_rgb`'s (alpha over white; 16-bit from
    0..65535; 32-bit integers and floats by their range), the same as for fitted photos.

    Raises:
        ValueError: ``image`` is not a PIL image, or has zero width or height.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a PIL image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image: size {image.width}x{image.height} has no pixels")
    return pil_to_rgb(image)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB (see :func:`to_rgb`): PIL verifies the file, then
    loads it fully (a truncated or corrupt file fails here, not later).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable image (naming the file and PIL's reason).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path}: no such file")
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
            loaded = image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"image {path}: not a readable image ({exc}); re-export or remove "
                         "the file") from exc
    return to_rgb(loaded)


def as_rgb_images(images: Sequence[ImageInput]) -> list[Image.Image]:
    """RGB images from a sequence of PIL images and/or image file paths.

    Raises:
        ValueError: ``images`` is empty, or an item is neither a PIL image nor a readable file.
        FileNotFoundError: a path does not exist.
    """
    if isinstance(images, (Image.Image, str, os.PathLike)):
        raise ValueError("images: expected a list of images or paths, got a single one; "
                         "wrap it in a list")
    images = list(images)
    if not images:
        raise ValueError("images: the batch is empty; give at least one image")
    return [image if isinstance(image, Image.Image) and image.mode == "RGB" else
            to_rgb(image) if isinstance(image, Image.Image) else load_image(image)
            for image in images]


def _missing_files(folder: Path) -> list[str]:
    """The roles of :data:`EXPECTED_FILES` with no matching file in ``folder``."""
    return [f"{role} ({' or '.join(patterns)})" for role, patterns in EXPECTED_FILES.items()
            if not any(next(folder.glob(p), None) for p in patterns)]


def check_model_folder(folder: str | os.PathLike, what: str = "VLM") -> Path:
    """``folder`` as a Path when it holds a loadable model (see :data:`EXPECTED_FILES`).

    Raises:
        FileNotFoundError: the folder does not exist or lacks some expected files; the message
            names the folder searched and the files expected.
    """
    folder = Path(folder).expanduser()
    expected = "; ".join(f"{role}: {' or '.join(p)}" for role, p in EXPECTED_FILES.items())
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist; give a local model "
                                f"folder (as saved by save_pretrained) holding {expected}")
    missing = _missing_files(folder)
    if missing:
        raise FileNotFoundError(f"{what} folder {folder} lacks {', '.join(missing)}; a model "
                                f"folder holds {expected}")
    return folder


def _model_class(folder: Path, config):
    """The transformers class that loads the VLM in ``folder`` (auto first, then the class
    named by ``config.architectures`` when the config has a vision tower).

    Raises:
        ValueError: the model is not a vision-language model (naming the class found).
    """
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return transformers.AutoModelForImageTextToText
    names = list(getattr(config, "architectures", None) or [])
    found = names[0] if names else type(config).__name__
    own = getattr(transformers, found, None)
    if own is not None and getattr(config, "vision_config", None) is not None:
        return own
    raise ValueError(
        f"VLM folder {folder} holds a {found} (model_type {config.model_type!r}), which is not a "
        "vision-language model: the captioner needs an image-text-to-text model (LLaVA, "
        "Qwen2-VL, SmolVLM, Florence-2, BLIP ...); a text-only model can be the extractor LLM")


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch dtype (float32, float16, bfloat16), "
                         f"got {dtype!r}")
    return value


def model_identity(folder: Path, *settings: object) -> str:
    """``"<folder name>-<10 hex>"``: the hash covers ``config.json``, the weight files' names and
    sizes, and ``settings``, so another model or prompt never shares cache entries (two
    fine-tunes with the same config, weight sizes and folder name would)."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    weights = sorted({p for pattern in EXPECTED_FILES["weights"] for p in folder.glob(pattern)})
    for value in [(p.name, p.stat().st_size) for p in weights] + list(settings):
        digest.update(b"\0" + repr(value).encode())
    return f"{folder.name}-{digest.hexdigest()[:10]}"


class Captioner:
    """A local VLM that writes captions, batched and greedy by default.

    Build with :meth:`load`. ``model_id`` identifies model and caption settings (cache key).

    Attributes:
        model: the transformers model (on ``device``, ``dtype``, eval mode).
        processor: its processor (tokenizer + image processor).
        text: the prompt text given to the processor with each image.
        max_new_tokens: generated tokens per caption at most.
        model_id: see :func:`model_identity`.
    """

    def __init__(self, model, processor, text: str | None, model_id: str,
                 max_new_tokens: int = MAX_NEW_TOKENS, generate_kwargs: dict | None = None):
        self.model = model
        self.processor = processor
        self.text = text
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = dict(generate_kwargs or {})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype | str = torch.float32, prompt: str = CAPTION_PROMPT,
             max_new_tokens: int = MAX_NEW_TOKENS, generate_kwargs: dict | None = None) -> "Captioner":
        """Load the VLM saved in the local folder ``path``.

        Args:
            path: a model folder (``save_pretrained`` layout, see :data:`EXPECTED_FILES`).
            device: torch device for the model and inputs ("cpu", "cuda", "cuda:1" ...).
            dtype: model dtype (float32, float16, bfloat16; a name or a torch dtype).
            prompt: the instruction; sent through the processor's chat template when it has
                one; models listed in :data:`PLAIN_PROMPTS` get their task text instead.
            max_new_tokens: generated tokens per caption at most (positive).
            generate_kwargs: extra ``generate`` arguments (default: greedy, one beam).

        Raises:
            FileNotFoundError: missing folder or files (the message lists what is expected).
            ValueError: the folder holds no vision-language model (naming its class), no
                image processor, or ``dtype`` / ``max_new_tokens`` are invalid.
            RuntimeError: transformers is not installed.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        torch_dtype = _dtype(dtype)
        try:
            from transformers import AutoConfig, AutoProcessor
        except ImportError:
            raise RuntimeError("the captioner needs transformers: pip install transformers "
                               "accelerate") from None

        folder = Path(path).expanduser()
        if (folder / "config.json").is_file():  # a text-only model is named before missing files
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            model_class = _model_class(folder, config)
        check_model_folder(folder, "VLM")
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        if getattr(processor, "image_processor", None) is None:
            raise ValueError(f"VLM folder {folder}: its processor ({type(processor).__name__}) "
                             "has no image processor; the folder needs processor_config.json or "
                             "preprocessor_config.json")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only generation pads on the left
        model = model_class.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
        model = model.to(device).eval()
        text = cls._prompt_text(processor, config.model_type, prompt)
        model_id = model_identity(folder, text, max_new_tokens, sorted((generate_kwargs or {}).items()))
        logger.info("captioner %s (%s) on %s, %s", model_id, type(model).__name__, device, torch_dtype)
        return cls(model, processor, text, model_id, max_new_tokens, generate_kwargs)

    @staticmethod
    def _prompt_text(processor, model_type: str, prompt: str) -> str | None:
        """The text given with each image: the chat template applied to one user turn (image
        + ``prompt``), a family's task text, or ``prompt`` after the image token."""
        if getattr(processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": prompt}]}]
            return processor.apply_chat_template(messages, add_generation_prompt=True)
        if model_type in PLAIN_PROMPTS:
            return PLAIN_PROMPTS[model_type] or None
        image_token = getattr(processor, "image_token", None)
        return f"{image_token}\n{prompt}" if image_token else prompt

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @torch.inference_mode()
    def caption(self, images: Sequence[ImageInput], batch_size: int = 8) -> list[str]:
        """Caption ``images`` (PIL images of any mode/size, or image file paths).

        Args:
            images: one or more images.
            batch_size: images per ``generate`` call (positive).

        Returns:
            One caption per image, in order (special tokens and the prompt removed, stripped).

        Raises:
            ValueError: empty ``images``, ``batch_size`` < 1, or an unreadable image.
            FileNotFoundError: an image path does not exist.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rgb = as_rgb_images(images)
        captions: list[str] = []
        for start in range(0, len(rgb), batch_size):
            captions.extend(self._caption_batch(rgb[start:start + batch_size]))
        return captions

    def _caption_batch(self, images: list[Image.Image]) -> list[str]:
        text = None if self.text is None else [self.text] * len(images)
        inputs = self.processor(images=images, text=text, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        for key, value in inputs.items():
            if torch.is_tensor(value) and value.is_floating_point():
                inputs[key] = value.to(self.dtype)
        options = {"do_sample": False, "num_beams": 1, **self.generate_kwargs}
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **options)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and output.shape[1] >= prompt_ids.shape[1] and \
                torch.equal(output[:, :prompt_ids.shape[1]], prompt_ids):
            output = output[:, prompt_ids.shape[1]:]
        return [c.strip() for c in self.processor.batch_decode(output, skip_special_tokens=True)]
