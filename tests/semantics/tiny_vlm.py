"""Tiny random-weight models for the semantics tests and benchmark (no model hub needed).

* :func:`build_tiny_vlm` writes a LLaVA folder (CLIP vision tower 32x32 px, 8 px patches, a
  2-layer Llama text model) that ``AutoProcessor`` + ``AutoModelForImageTextToText`` load.
* :func:`build_tiny_qwen2_vl` writes a Qwen2-VL folder (dynamic resolution: the number of
  image tokens follows the image size, so a batch of mixed sizes is padded).
* :func:`build_tiny_llm` writes a 2-layer ``LlamaForCausalLM`` folder (a text-only model: the
  extractor's LLM, and a "not a VLM" case for the captioner).

They share a byte-level BPE tokenizer trained here, with a chat template. Outputs are random.
"""

from __future__ import annotations

from pathlib import Path

#: Words of the test vocabulary (after the special tokens).
WORDS = tuple(("a person is sitting standing holding waving a cup hand hands fingers open fist the "
               "on in at table kitchen street park smiling pointing with one two left right palm "
               "pose action environment describe people and what their do image { } \" : , .").split())
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
#: A chat template in the Hugging Face message format: text and image content parts.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} :"
    "{% if m['content'] is string %} {{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %} <image>{% else %} {{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}")
IMAGE_SIZE = 32
PATCH_SIZE = 8


QWEN_SPECIALS = ("<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer(specials=SPECIALS, chat_template=CHAT_TEMPLATE, **tokens):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on :data:`WORDS` (any text encodes;
    about 400 tokens), with ``specials`` and ``chat_template``. ``tokens`` name special tokens
    (default: the LLaVA set of :data:`SPECIALS`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    tokens = tokens or {"bos_token": "<s>", "eos_token": "</s>",
                        "extra_special_tokens": {"image_token": "<image>"}}
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                   chat_template=chat_template, padding_side="left", **tokens)


def _text_config(vocab_size: int, pad: int, bos: int, eos: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=4096, initializer_range=0.5, pad_token_id=pad, bos_token_id=bos,
                       eos_token_id=eos, tie_word_embeddings=False)


def build_tiny_vlm(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA (model, processor, tokenizer, chat template) to ``folder``."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    folder = Path(folder)
    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                              projection_dim=32, initializer_range=0.5, initializer_factor=5.0)
    config = LlavaConfig(vision_config=vision,
                         text_config=_text_config(len(tokenizer), ids("<pad>"), ids("<s>"), ids("</s>")),
                         image_token_index=ids("<image>"), projector_hidden_act="gelu",
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         pad_token_id=ids("<pad>"))
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
                               chat_template=CHAT_TEMPLATE, image_token="<image>",
                               num_additional_image_tokens=1)  # the CLS token
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_llm(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` and the test tokenizer to ``folder``."""
    import torch
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_text_config(len(tokenizer), ids("<pad>"), ids("<s>"), ids("</s>"))).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_qwen2_vl(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2-VL (14 px patches, 2x2 merge: one image token per 28x28 px,
    1 to 16 tokens per image) with its processor to ``folder``."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    folder = Path(folder)
    tokenizer = build_tokenizer(QWEN_SPECIALS, QWEN_CHAT_TEMPLATE, eos_token="<|im_end|>",
                                extra_special_tokens={"image_token": "<|image_pad|>",
                                                      "video_token": "<|video_pad|>"})
    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096, initializer_range=0.5, bos_token_id=None,
                eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<pad>"),
                rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision,
                           image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                           vision_start_token_id=ids("<|vision_start|>"),
                           vision_end_token_id=ids("<|vision_end|>"), pad_token_id=ids("<pad>"),
                           eos_token_id=ids("<|im_end|>"), bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 16),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
