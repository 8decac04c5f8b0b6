"""Semantics that drop distractors (issue 13, item 7): the environment is a place, never a
list of objects; objects stay only where a hand interacts with them. Checked on the
rule-based fallback, on fields an LLM copied from the caption, on the LLM composer and on
the few-shot examples."""

from __future__ import annotations

import pytest

from sesahand.attention.words import split_words
from sesahand.semantics.compose import compose_prompt, compose_with_llm
from sesahand.semantics.extractor import few_shot_examples, rule_based_extraction
from sesahand.semantics.focus import (focus_fields, hand_action_phrase, place_phrase,
                                      scene_noun)


def words_count(text: str) -> int:
    """TEST DOUBLE token counter: one token per word plus start and end."""
    return len(text.split()) + 2


#: (caption, words the prompt keeps, words it drops, the environment)
CAPTIONS = [
    # indoor, one hand, object held vs objects merely present
    ("A baker stands in a bakery kitchen behind a steel table with three baskets of "
     "croissants, a scale and a clock, shaping dough with both hands.",
     {"standing", "shaping", "dough", "hands", "bakery", "kitchen"},
     {"steel", "table", "baskets", "croissants", "scale", "clock"}, "in a bakery kitchen"),
    ("A pink donut on a white plate on a wooden table. A woman in a blue shirt sits at the "
     "table, smiling, and holds a donut in one hand.",
     {"sitting", "smiling", "holding", "donut", "hand"},
     {"pink", "plate", "wooden", "table", "blue", "shirt"}, ""),
    ("A young woman in an office sits at a desk with a laptop, a stack of papers and a "
     "potted plant, typing on a keyboard with both hands.",
     {"sitting", "typing", "keyboard", "hands", "office"},
     {"desk", "laptop", "stack", "papers", "potted", "plant"}, "in an office"),
    ("A man holding a cup of coffee in his right hand next to a laptop and a vase of "
     "flowers in a cafe.",
     {"holding", "cup", "coffee", "hand", "cafe"}, {"laptop", "vase", "flowers"}, "in a cafe"),
    ("A chef chopping onions with a knife in a restaurant kitchen, pots, pans and a "
     "kettle on the stove.",
     {"chopping", "onions", "knife", "restaurant", "kitchen"},
     {"pots", "pans", "kettle", "stove"}, "in a restaurant kitchen"),
    ("A girl in a red dress sitting on a sofa in a living room, holding a remote control "
     "in her hand, a lamp, a bookshelf and a television behind her.",
     {"sitting", "holding", "remote", "hand", "living", "room"},
     {"red", "dress", "sofa", "lamp", "bookshelf", "television"}, "in a living room"),
    ("A student writing with a pen in a classroom, a globe and a map on the wall.",
     {"writing", "pen", "classroom"}, {"globe", "map", "wall"}, "in a classroom"),
    ("A mechanic kneeling in a garage, gripping a wrench with his left hand, tyres and a "
     "toolbox around him.",
     {"kneeling", "gripping", "wrench", "hand", "garage"}, {"tyres", "toolbox"},
     "in a garage"),
    ("A woman with a handbag and sunglasses pointing at a painting in a museum.",
     {"pointing", "museum"}, {"handbag", "sunglasses"}, "in a museum"),
    # outdoor
    ("Two children are running on a sandy beach at sunset, one of them waving with an "
     "open hand, a red bucket lying in the sand.",
     {"running", "waving", "open", "hand", "beach"}, {"red", "bucket", "sunset", "lying"},
     "on a sandy beach"),
    ("A man sitting on a bench in a park, holding a cup of coffee in his right hand and "
     "smiling, pigeons and a fountain nearby.",
     {"sitting", "smiling", "holding", "cup", "coffee", "park"},
     {"bench", "pigeons", "fountain"}, "in a park"),
    ("A hiker standing on a mountain trail with a backpack, trees and clouds, raising a "
     "water bottle in her hand.",
     {"standing", "raising", "bottle", "hand", "trail"}, {"backpack", "trees", "clouds"},
     "on a mountain trail"),
    ("A street vendor stands on a busy street among cars, bicycles and shop signs, "
     "handing a bag of chestnuts to a customer with his right hand.",
     {"standing", "bag", "chestnuts", "hand", "street"}, {"cars", "bicycles", "signs"},
     "on a busy street"),
    ("A gardener crouching in a garden, pulling weeds with gloved hands, flower pots, a "
     "watering can and a wheelbarrow beside her.",
     {"crouching", "pulling", "weeds", "hands", "garden"},
     {"pots", "watering", "wheelbarrow"}, "in a garden"),
    ("A boy catches a frisbee with one hand in a playground, a slide and swings in the "
     "background.",
     {"catching", "frisbee", "hand", "playground"}, {"slide", "swings", "background"},
     "in a playground"),
    ("A woman jogging in a city park at dawn, holding a phone in her left hand, cars "
     "parked along the road.",
     {"holding", "phone", "hand", "park"}, {"cars", "parked", "road"}, "in a city park"),
    # two hands, one or two people
    ("A man kneading dough with both hands in a bakery, flour bags, a rolling pin and "
     "trays of bread on the shelves.",
     {"kneading", "dough", "hands", "bakery"}, {"flour", "bags", "rolling", "trays", "shelves"},
     "in a bakery"),
    ("A woman standing in a kitchen, cutting bread with a knife in her right hand while "
     "her left hand holds the loaf, a kettle and a toaster on the counter.",
     {"standing", "cutting", "bread", "knife", "hand", "loaf", "kitchen"},
     {"kettle", "toaster", "counter"}, "in a kitchen"),
    ("Two friends shaking hands on a sidewalk, a parked bus and a lamppost behind them.",
     {"shaking", "hands", "sidewalk"}, {"parked", "bus", "lamppost"}, "on a sidewalk"),
    ("A father and a daughter clapping their hands at a party, balloons, a cake and "
     "presents on the table.",
     {"clapping", "hands", "party"}, {"balloons", "cake", "presents", "table"}, "at a party"),
    ("A pianist sitting at a grand piano on a stage, pressing the keys with both hands, "
     "a microphone and a music stand next to him.",
     {"sitting", "pressing", "keys", "hands", "stage"}, {"microphone", "music"},
     "on a stage"),
    ("A close-up of a hand making a fist in front of a white wall with a poster.",
     {"making", "fist"}, {"white", "wall", "poster"}, ""),
    ("A nurse in a hospital corridor holding a clipboard with both hands, wheelchairs and "
     "a vending machine along the wall.",
     {"holding", "clipboard", "hands", "hospital", "corridor"},
     {"wheelchairs", "vending", "machine"}, "in a hospital corridor"),
]


@pytest.mark.parametrize("caption, keep, drop, environment", CAPTIONS,
                         ids=[c[0][:40] for c in CAPTIONS])
def test_rule_based_fallback_keeps_the_person_and_drops_the_clutter(caption, keep, drop,
                                                                   environment):
    fields = rule_based_extraction(caption)
    assert fields["environment"] == environment
    prompt = compose_prompt(fields, None).prompt
    words = set(split_words(prompt))
    assert keep <= words, f"lost {sorted(keep - words)}: {prompt!r}"
    assert not drop & words, f"kept clutter {sorted(drop & words)}: {prompt!r}"


@pytest.mark.parametrize("caption, keep, drop, environment", CAPTIONS,
                         ids=[c[0][:40] for c in CAPTIONS])
def test_composer_drops_the_clutter_when_the_llm_copies_the_caption(caption, keep, drop,
                                                                   environment):
    """An LLM that copies the whole caption into the hand action and the environment still
    yields a prompt without the clutter, with the hand's objects and the place."""
    fields = rule_based_extraction(caption)
    copied = dict(fields, hand_action=caption, environment=caption)
    composed = compose_prompt(copied, None)
    words = set(split_words(composed.prompt))
    assert not drop & words, f"kept clutter {sorted(drop & words)}: {composed.prompt!r}"
    objects = {w for w in keep if not w.endswith("ing")} - set(environment.split())
    assert objects <= words, f"lost {sorted(objects - words)}: {composed.prompt!r}"
    assert composed.fields["environment"] == environment


def test_the_issue_example_environment_is_a_place():
    caption_copy = ("a steel table with three baskets of croissants, a scale and a clock in "
                    "a bakery kitchen")
    assert place_phrase(caption_copy) == "in a bakery kitchen"
    assert place_phrase("a steel table with three baskets of croissants, a scale and a "
                        "clock") == "", "objects alone are no place"
    prompt = compose_prompt({"pose": "standing", "action": "", "hand_action":
                             "shaping dough with both hands",
                             "environment": caption_copy}, None).prompt
    assert prompt == "The person is standing and shaping dough with both hands in a bakery " \
                     "kitchen."


@pytest.mark.parametrize("text, place", [
    ("kitchen", "in a kitchen"), ("office", "in an office"), ("beach", "on a beach"),
    ("woods", "in the woods"), ("mountains", "on the mountains"), ("outdoors", "outdoors"),
    ("in the corner of a busy train station", "in a busy train station"),
    ("at a party with balloons", "at a party"), ("under a bridge at night", "under a bridge"),
    ("a desk, a lamp and a chair", ""), ("", ""), ("at an office desk", ""),
    ("a man in a park holds a cup", "in a park"),
])
def test_place_phrase(text, place):
    assert place_phrase(text) == place


def test_scene_nouns_are_places_not_furniture():
    assert scene_noun("kitchens") == "kitchen" and scene_noun("libraries") == "library"
    for thing in ("table", "desk", "sofa", "bench", "window", "wall", "counter", "shelf",
                  "bed", "chair", "floor"):
        assert scene_noun(thing) is None, thing


def test_hand_action_keeps_every_part_where_a_hand_acts():
    assert hand_action_phrase("chopping vegetables with a knife in the right hand, the left "
                              "hand holding a carrot, pots and a window behind") == \
        "chopping vegetables with a knife in the right hand, the left hand holding a carrot"
    assert hand_action_phrase("kneading dough, shaping croissants") == \
        "kneading dough, shaping croissants"
    assert hand_action_phrase("holding a cup with a clock in the background") == \
        "holding a cup"


def test_focus_is_idempotent_and_keeps_the_few_shot_answers():
    for example in few_shot_examples():
        answer = example["answer"]
        assert focus_fields(answer) == answer, "the examples follow the rules they teach"
        assert focus_fields(focus_fields(answer)) == answer
    envs = [e["answer"]["environment"] for e in few_shot_examples()]
    assert "" in envs, "an example shows that objects alone give no environment"


class ScriptedLLM:
    """TEST DOUBLE for the extractor in LLM composition: returns one scripted reply."""

    def __init__(self, reply):
        self.reply = reply
        self.requests = []

    def generate(self, messages, prefix="", stop=(), max_new_tokens=None):
        self.requests.append(messages[-1]["content"])
        return self.reply


def test_llm_composer_gets_focused_fields_and_cannot_restore_the_clutter():
    fields = {"pose": "standing", "action": "baking",
              "hand_action": "shaping dough with both hands",
              "environment": "a bakery kitchen with three baskets of croissants and a scale"}
    good = ScriptedLLM("A baker stands in a bakery kitchen, shaping dough with both hands.")
    result = compose_with_llm(good, fields, 77, words_count)
    assert result.source == "llm" and "croissants" not in good.requests[0]
    assert result.fields["environment"] == "in a bakery kitchen"
    bad = ScriptedLLM("A baker shaping dough with both hands beside baskets of croissants.")
    result = compose_with_llm(bad, fields, 77, words_count)
    assert result.source == "template" and "croissants" not in result.prompt
