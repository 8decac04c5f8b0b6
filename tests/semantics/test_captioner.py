"""Captioner: loading a local VLM folder, batching, decoding, image modes, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sesahand.semantics.captioner import (CAPTION_PROMPT, Captioner, as_rgb_images, load_image,
                                          to_rgb)


def noise_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (24 + 5 * i, 40 + 3 * i, 3), dtype=np.uint8))
            for i in range(count)]


def test_loads_through_the_auto_classes_with_the_chat_template(tiny_captioner, tiny_vlm_dir):
    assert type(tiny_captioner.model).__name__ == "LlavaForConditionalGeneration"
    assert not tiny_captioner.model.training
    assert tiny_captioner.device.type == "cpu" and tiny_captioner.dtype == torch.float32
    # the instruction went through the chat template: image token, then the prompt, then the
    # generation prompt
    text = tiny_captioner.text
    assert text.index("<image>") < text.index(CAPTION_PROMPT) < text.rindex("assistant")
    assert tiny_captioner.model_id.startswith(tiny_vlm_dir.name + "-")


def test_model_id_follows_the_config_and_the_prompt(tiny_vlm_dir, tmp_path, tiny_captioner):
    other = tmp_path / tiny_vlm_dir.name
    shutil.copytree(tiny_vlm_dir, other)
    assert Captioner.load(other, max_new_tokens=8).model_id == tiny_captioner.model_id
    assert Captioner.load(other, max_new_tokens=8, prompt="Describe the hands.").model_id \
        != tiny_captioner.model_id
    config = json.loads((other / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-5
    (other / "config.json").write_text(json.dumps(config))
    assert Captioner.load(other, max_new_tokens=8).model_id != tiny_captioner.model_id


def test_batched_captions_equal_one_by_one_greedy(tiny_captioner):
    images = noise_images(5)
    batched = tiny_captioner.caption(images, batch_size=3)
    single = [tiny_captioner.caption([image], batch_size=1)[0] for image in images]
    assert batched == single
    assert len(set(batched)) > 1  # the random model does look at the image
    assert tiny_captioner.caption(images) == batched  # greedy: deterministic


def test_mixed_image_sizes_are_padded_on_the_left(tiny_vlm, tmp_path):
    # Qwen2-VL: the image token count follows the image size, so this batch needs padding
    captioner = Captioner.load(tiny_vlm.build_tiny_qwen2_vl(tmp_path / "qwen"), max_new_tokens=6)
    assert type(captioner.model).__name__ == "Qwen2VLForConditionalGeneration"
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (28 * h, 28 * w, 3), dtype=np.uint8))
              for h, w in ((1, 1), (3, 4), (2, 1), (4, 4))]
    batched = captioner.caption(images, batch_size=4)
    assert batched == [captioner.caption([image])[0] for image in images]
    assert len(set(batched)) > 1


def record_generate(monkeypatch, captioner):
    """Record (input_ids, output ids) of every ``generate`` call of ``captioner``'s model."""
    calls = []
    generate = captioner.model.generate

    def spy(**kwargs):
        output = generate(**kwargs)
        calls.append((kwargs["input_ids"], output))
        return output

    monkeypatch.setattr(captioner.model, "generate", spy)
    return calls


def test_decoding_keeps_only_the_new_tokens(tiny_captioner, tiny_vlm, monkeypatch):
    calls = record_generate(monkeypatch, tiny_captioner)
    captions = tiny_captioner.caption(noise_images(4, seed=1), batch_size=4)
    ((prompt_ids, output),) = calls
    tokenizer = tiny_captioner.processor.tokenizer
    assert torch.equal(output[:, :prompt_ids.shape[1]], prompt_ids)
    new = output[:, prompt_ids.shape[1]:]
    assert 0 < new.shape[1] <= 8
    for caption, ids in zip(captions, new):
        assert caption == tokenizer.decode(ids, skip_special_tokens=True).strip()
        for special in tiny_vlm.SPECIALS:
            assert special not in caption


def test_max_new_tokens_bounds_the_generation(tiny_vlm_dir, monkeypatch):
    short = Captioner.load(tiny_vlm_dir, max_new_tokens=2)
    calls = record_generate(monkeypatch, short)
    short.caption(noise_images(3, seed=2))
    ((prompt_ids, output),) = calls
    assert output.shape[1] - prompt_ids.shape[1] <= 2


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1", "I;16", "I", "F", "CMYK"])
def test_any_mode_becomes_rgb(mode, tiny_captioner):
    image = Image.new(mode, (13, 301))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (13, 301)
    assert len(tiny_captioner.caption([image])) == 1


def test_transparent_pixels_become_white_and_wide_ints_are_scaled():
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    assert np.asarray(to_rgb(rgba)).tolist() == [[[255, 255, 255], [10, 20, 30]]]
    deep = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(deep))[0, :, 0].tolist() == [0, 255]
    unit = Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 255]


def test_images_of_very_different_sizes_in_one_batch(tiny_captioner):
    images = [Image.new("RGB", (1, 1), (255, 0, 0)), Image.new("RGB", (1200, 90), (0, 0, 255)),
              Image.new("L", (64, 700), 128)]
    assert len(tiny_captioner.caption(images, batch_size=3)) == 3


def test_paths_are_read_and_corrupt_files_are_named(tmp_path, tiny_captioner):
    good = tmp_path / "good.png"
    noise_images(1)[0].save(good)
    assert tiny_captioner.caption([good]) == tiny_captioner.caption([Image.open(good)])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match="corrupt.png.*not a readable image"):
        tiny_captioner.caption([good, corrupt])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image(text)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_empty_batch_and_bad_arguments(tiny_captioner):
    with pytest.raises(ValueError, match="empty"):
        tiny_captioner.caption([])
    with pytest.raises(ValueError, match="single one"):
        as_rgb_images(Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError, match="batch_size"):
        tiny_captioner.caption(noise_images(1), batch_size=0)
    with pytest.raises(ValueError, match="PIL image"):
        to_rgb(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="no pixels"):
        to_rgb(Image.new("RGB", (0, 5)))


def test_missing_folder_lists_the_folder_and_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        Captioner.load(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    for name in ("config.json", "safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert name in message


def test_incomplete_folder_names_what_is_missing(tmp_path, tiny_vlm_dir):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_vlm_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"partial lacks weights \("):
        Captioner.load(partial)


def test_a_text_only_model_is_refused_naming_its_class(tiny_llm_dir):
    with pytest.raises(ValueError, match="LlamaForCausalLM.*not a vision-language model"):
        Captioner.load(tiny_llm_dir)


def test_bad_dtype_and_max_new_tokens(tiny_vlm_dir):
    with pytest.raises(ValueError, match="dtype"):
        Captioner.load(tiny_vlm_dir, dtype="int8")
    with pytest.raises(ValueError, match="max_new_tokens"):
        Captioner.load(tiny_vlm_dir, max_new_tokens=0)
