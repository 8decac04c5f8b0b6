"""Semantics nodes inside a real ComfyUI (in-process, CPU), with tiny random models
(``tests/semantics/tiny_vlm.py``) placed in a temporary folder registered as ``LLM``.

What is checked: the loader lists model folders (and .gguf files for the LLM) of the LLM folder
and refuses others; the captioner turns an IMAGE batch into lists (one item per image) of
prompt, semantics JSON, caption and hand terms, passes the conditioning hands on as joints;
Compose Prompt composes edited fields; the hand terms outputs plug into the hand-attention
nodes' hand_terms.
"""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.comfyui

FIELDS = ("pose", "action", "hand_action", "environment")


@pytest.fixture(scope="module")
def sem(comfyui):
    """The pack's ``nodes.semantics`` module as ComfyUI loaded it."""
    return importlib.import_module(comfyui.pack_module.__name__ + ".nodes.semantics")


@pytest.fixture(scope="module")
def llm_folder(comfyui, tiny_vlm, tmp_path_factory):
    """An LLM model folder: tiny-llava/ (VLM), org/tiny-llama/ (LLM), q.gguf, notes.txt."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("LLM")
    tiny_vlm.build_tiny_vlm(root / "tiny-llava")
    tiny_vlm.build_tiny_llm(root / "org" / "tiny-llama")
    (root / "q.gguf").write_bytes(b"GGUF")
    (root / "notes.txt").write_text("not a model")
    comfyui.folder_paths.add_model_folder_path("LLM", str(root))
    return root


@pytest.fixture(scope="module")
def models(sem, llm_folder):
    """Loaded tiny models; captions and extraction bounded to a few tokens (the node uses the
    models' defaults, hundreds of tokens)."""
    pipeline = sem.SesaHandLoadSemanticsModels.execute(
        vlm="tiny-llava", llm="org/tiny-llama", device="cpu", dtype="float32")[0]
    pipeline.captioner.max_new_tokens = 8
    pipeline.extractor.max_new_tokens = 16
    pipeline.extractor.max_repairs = 0
    return pipeline


def options(schema, name):
    return next(i for i in schema.inputs if i.id == name).options


def test_loader_lists_model_folders_and_gguf_files(sem, llm_folder):
    schema = sem.SesaHandLoadSemanticsModels.define_schema()
    vlms, llms = options(schema, "vlm"), options(schema, "llm")
    assert {"tiny-llava", "org/tiny-llama"} <= set(vlms) and "q.gguf" not in vlms
    assert {"tiny-llava", "org/tiny-llama", "q.gguf"} <= set(llms)
    assert not any("notes" in n or n.endswith("config.json") for n in vlms + llms)
    assert sem.model_path("tiny-llava") == str(llm_folder / "tiny-llava")
    assert sem.model_path("q.gguf") == str(llm_folder / "q.gguf")
    problem = sem.SesaHandLoadSemanticsModels.validate_inputs(vlm="gone", llm="q.gguf")
    assert "vlm 'gone'" in problem and "LLM model folder" in problem
    assert sem.SesaHandLoadSemanticsModels.validate_inputs(vlm="tiny-llava", llm="q.gguf") is True
    with pytest.raises(ValueError, match="put the model folder"):
        sem.model_path("gone")


def test_loader_refuses_a_text_model_as_captioner(sem, llm_folder):
    with pytest.raises(ValueError, match="LlamaForCausalLM.*not a vision-language model"):
        sem.SesaHandLoadSemanticsModels.execute(vlm="org/tiny-llama", llm="org/tiny-llama",
                                                device="cpu", dtype="float32")


def test_captioner_outputs_one_item_per_image(sem, models):
    schema = sem.SesaHandBehaviourCaptioner.define_schema()
    assert [o.id for o in schema.outputs] == ["prompt", "semantics", "caption", "hand_terms"]
    assert all(o.is_output_list for o in schema.outputs)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 40, 56, 3, generator=g)
    prompts, semantics, captions, terms = sem.SesaHandBehaviourCaptioner.execute(
        models=models, image=image).result
    assert len(prompts) == len(semantics) == len(captions) == len(terms) == 3
    # the raw captions are the captioner's, image by image
    assert captions == models.captioner.caption(sem.tensor_to_images(image))
    for prompt, fields, term in zip(prompts, semantics, terms):
        assert isinstance(prompt, str) and prompt
        assert set(json.loads(fields)) == set(FIELDS)
        assert isinstance(term, str)
    # RGBA and greyscale IMAGE tensors are accepted too
    assert len(sem.SesaHandBehaviourCaptioner.execute(
        models=models, image=torch.rand(2, 16, 16, 4)).result[0]) == 2
    assert len(sem.SesaHandBehaviourCaptioner.execute(
        models=models, image=torch.rand(1, 16, 16, 1)).result[0]) == 1


def fake_hands(frames):
    """A SESAHAND_HANDS stand-in: per frame one right hand with straight fingers."""
    joints = np.zeros((21, 3), dtype=np.float32)
    for finger in range(5):
        for k in range(4):
            joints[1 + 4 * finger + k] = [0.02 * (finger - 2), 0.03 + 0.025 * k, 0.5]
    label = SimpleNamespace(joints3d=torch.from_numpy(joints), side="right")
    return SimpleNamespace(labels=[[label] for _ in range(frames)]), joints


def test_captioner_gives_the_hands_joints_to_the_pipeline(sem, models, monkeypatch):
    seen = []
    run = models.run

    def spy(images, joints3d=None):
        seen.append(joints3d)
        return run(images, joints3d)

    monkeypatch.setattr(models, "run", spy)
    hands, joints = fake_hands(1)
    out = sem.SesaHandBehaviourCaptioner.execute(models=models, image=torch.rand(2, 16, 16, 3),
                                                 hands=hands).result
    assert len(out[0]) == 2
    assert len(seen[0]) == 2  # one frame serves both images
    for per_image in seen[0]:
        ((array, side),) = per_image
        assert side == "right" and np.array_equal(array, joints)
    with pytest.raises(ValueError, match="hands: 2 frames for 3 images"):
        sem.SesaHandBehaviourCaptioner.execute(models=models, image=torch.rand(3, 16, 16, 3),
                                               hands=fake_hands(2)[0])


def test_compose_prompt_from_edited_fields(sem):
    prompt, terms = sem.SesaHandComposePrompt.execute(
        pose="sitting", action="smiling", hand_action="holding a donut with one hand",
        environment="in a kitchen").result
    assert "holding a donut" in prompt and "sitting" in prompt
    assert "holding" in terms.split(", ")
    assert sem.clip_token_count(prompt) <= 77
    long, _ = sem.SesaHandComposePrompt.execute(
        pose="sitting", action="smiling " * 40, hand_action="holding a cup",
        environment="in a kitchen with " + "many things " * 40).result
    assert sem.clip_token_count(long) <= 77


def test_hand_terms_outputs_plug_into_the_attention_nodes(comfyui, sem):
    hand_terms_input = next(i for i in comfyui.node("SesaHandHandAttentionSampler")
                            .define_schema().inputs if i.id == "hand_terms")
    for node in (sem.SesaHandBehaviourCaptioner, sem.SesaHandComposePrompt):
        output = next(o for o in node.define_schema().outputs if o.id == "hand_terms")
        assert output.get_io_type() == hand_terms_input.get_io_type() == "STRING"


def test_nodes_are_registered(comfyui):
    for node_id in ("SesaHandLoadSemanticsModels", "SesaHandBehaviourCaptioner",
                    "SesaHandComposePrompt"):
        assert comfyui.node(node_id).define_schema().category == "SesaHand/semantics"
