"""SemanticsPipeline: captions in batches with caching, extraction (cached, rule-based without
an LLM), pose-aware hand action, composition, result records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sesahand.camera import Camera
from sesahand.semantics.cache import SemanticsCache
from sesahand.semantics.extractor import Extraction, rule_based_extraction
from sesahand.semantics.pipeline import SemanticsPipeline
from sesahand.semantics.result import SemanticsResult

CAPTIONS = {
    (255, 0, 0): "A man sitting on a bench in a park, waving with an open hand and smiling.",
    (0, 255, 0): "A woman standing in a kitchen, holding a knife in her right hand.",
    (0, 0, 255): "A cat on a sofa in a living room.",
}


class FakeCaptioner:
    """TEST DOUBLE for the VLM captioner: the caption is looked up by the image's top-left
    pixel colour (other colours: "A photo."); records every ``caption`` call."""

    model_id = "fake-vlm"

    def __init__(self):
        self.calls = []

    def caption(self, images, batch_size=8):
        self.calls.append((len(images), batch_size))
        return [CAPTIONS.get(image.getpixel((0, 0)), "A photo.") for image in images]


class FakeExtractor:
    """TEST DOUBLE for the LLM extractor: rule-based fields labelled "model"; counts calls."""

    model_id = "fake-llm"
    config_id = "cfg"

    def __init__(self):
        self.calls = 0

    def extract(self, caption):
        self.calls += 1
        return Extraction(rule_based_extraction(caption), "model", ["raw"], 1, [])


def words_count(text: str) -> int:
    """TEST DOUBLE token counter: one token per word plus start and end."""
    return len(text.split()) + 2


def image(colour, mode="RGB", size=(40, 30)):
    return Image.new("RGB", size, colour).convert(mode)


@pytest.fixture(scope="module")
def fist_joints(anny_model):
    from sesahand.hands import PoseSpec

    scene, = PoseSpec.preset("fist").resolve(anny_model, Camera.default(512, 512))
    return anny_model(scene.hands)[0].joints.numpy()


def test_run_without_llm_uses_the_labelled_rule_based_extraction():
    captioner = FakeCaptioner()
    pipe = SemanticsPipeline(captioner, None, count_tokens=words_count, batch_size=2)
    images = [image((255, 0, 0)), image((0, 255, 0), "RGBA"), image((0, 0, 255)),
              image((90, 90, 90), "L", (7, 300))]
    results = pipe.run(images)
    assert captioner.calls == [(4, 2)], "one batched captioner call for the batch"
    first = results[0]
    assert first.caption == CAPTIONS[(255, 0, 0)] and first.caption_source == "model"
    assert first.semantics == rule_based_extraction(first.caption)
    assert first.semantics_source == "fallback" and first.models["extractor"] == "rule-based"
    assert first.prompt.startswith("The person is sitting")
    assert first.hand_action_source == "text" and first.conflicts == []
    assert "waving" in first.hand_terms and "hand" in first.hand_terms
    assert len({r.image_hash for r in results}) == 4
    assert results[2].semantics["environment"] == "in a living room", "a sofa is no place"
    assert results[3].caption == "A photo." and results[3].prompt == "A person."


def test_rerun_with_the_same_models_is_free(tmp_path):
    cache = SemanticsCache(tmp_path / "cache")
    captioner, extractor = FakeCaptioner(), FakeExtractor()
    pipe = SemanticsPipeline(captioner, extractor, cache=cache, count_tokens=words_count)
    images = [image((255, 0, 0)), image((0, 255, 0))]
    first = pipe.run(images)
    assert (len(captioner.calls), extractor.calls) == (1, 2)
    again = SemanticsPipeline(captioner, extractor, cache=SemanticsCache(tmp_path / "cache"),
                              count_tokens=words_count).run(images + [image((0, 0, 255))])
    assert captioner.calls[-1][0] == 1, "only the new image is captioned"
    assert extractor.calls == 3, "only the new caption is extracted"
    assert [r.to_dict() for r in again[:2]] == [r.to_dict() for r in first]
    assert first[0].semantics_source == "model"


def test_a_new_model_identity_runs_the_model_again(tmp_path):
    cache = SemanticsCache(tmp_path)
    captioner = FakeCaptioner()
    pipe = SemanticsPipeline(captioner, None, cache=cache, count_tokens=words_count)
    pipe.run([image((255, 0, 0))])
    other = FakeCaptioner()
    other.model_id = "another-vlm"
    SemanticsPipeline(other, None, cache=cache, count_tokens=words_count).run([image((255, 0, 0))])
    assert len(other.calls) == 1


def test_pose_overrides_a_contradicting_caption_and_records_it(fist_joints):
    pipe = SemanticsPipeline(FakeCaptioner(), None, count_tokens=words_count)
    results = pipe.run([image((255, 0, 0)), image((0, 255, 0))],
                       joints3d=[[(fist_joints, "right")], [fist_joints]])
    waving, holding = results
    assert waving.hand_action_source == "pose"
    assert waving.semantics["hand_action"] == "making a fist with the right hand"
    assert "making a fist with the right hand" in waving.prompt
    assert len(waving.conflicts) == 1 and "waving" in waving.conflicts[0]
    assert "fist" in waving.hand_terms and "waving" not in waving.hand_terms
    # holding a knife is compatible with a fist: the caption's hand action stays
    assert holding.hand_action_source == "text" and holding.conflicts == []
    assert "holding a knife" in holding.semantics["hand_action"]


def test_budget_and_truncation_are_reported():
    long_caption = ("A man sitting on a bench in a park, in a garden, by a lake, near a bridge, "
                    "holding a cup in his right hand.")
    pipe = SemanticsPipeline(None, None, max_tokens=14, count_tokens=words_count)
    result, = pipe.run_captions([long_caption])
    assert result.caption_source == "given" and "captioner" not in result.models
    assert result.truncated and words_count(result.prompt) <= 14
    assert "holding a cup" in result.prompt


def test_results_round_trip_through_json(fist_joints):
    pipe = SemanticsPipeline(FakeCaptioner(), None, count_tokens=words_count)
    result, = pipe.run([image((255, 0, 0))], [[fist_joints]])
    line = json.dumps(result.to_dict())
    assert SemanticsResult.from_dict(json.loads(line)) == result


def test_bad_input_fails_before_any_model_runs(fist_joints):
    captioner = FakeCaptioner()
    pipe = SemanticsPipeline(captioner, None, count_tokens=words_count)
    with pytest.raises(ValueError, match="empty"):
        pipe.run([])
    with pytest.raises(ValueError, match="2 entries for 1 images"):
        pipe.run([image((255, 0, 0))], [[fist_joints], []])
    with pytest.raises(ValueError, match=r"joints3d\[0\]\[1\]: joints: expected shape"):
        pipe.run([image((255, 0, 0))], [[fist_joints, np.zeros((5, 3))]])
    assert captioner.calls == []
    with pytest.raises(ValueError, match="no captioner"):
        SemanticsPipeline(None).run([image((255, 0, 0))])
    with pytest.raises(ValueError, match="not strings"):
        pipe.run_captions(["ok", 3])


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="compose"):
        SemanticsPipeline(FakeCaptioner(), compose="poetry")
    with pytest.raises(ValueError, match="needs an extractor"):
        SemanticsPipeline(FakeCaptioner(), None, compose="llm")
    with pytest.raises(ValueError, match="batch_size"):
        SemanticsPipeline(FakeCaptioner(), batch_size=0)


def test_result_validates_its_sources():
    fields = {"pose": "", "action": "", "hand_action": "", "environment": ""}
    with pytest.raises(ValueError, match="semantics_source"):
        SemanticsResult(caption="c", semantics=fields, prompt="p", semantics_source="guess")
    with pytest.raises(ValueError, match="semantics"):
        SemanticsResult(caption="c", semantics={"pose": "x"}, prompt="p")
    with pytest.raises(ValueError, match="missing keys"):
        SemanticsResult.from_dict({"caption": "c"})
