"""Each benchmark's prompt for both variants, pinned to the official inference scripts' strings.

The strings are typed here from the official scripts (`PixelRefer/evaluation/pixelrefer*/infer_*.py`),
not imported from the code under test, so a changed prompt fails.
"""

from __future__ import annotations

import pytest

from pixelrefer.eval.benchmarks import BENCHMARKS
from pixelrefer.eval.prompts import prompt_for

OFFICIAL = {
    ("videorefer-d", "full"): "<video>\nPlease describe in detail the marked object <region> in the video.",
    ("videorefer-d", "lite"): "There is one object in the video: <region>.\n"
    "Please describe in detail the marked object in the video.",
    ("hcstvg", "full"): "Please describe the object <region> in brief in the video.",
    ("hcstvg", "lite"): "There is one object in the video: <region>.\n"
    "Please give a description of the highlighted object in the video. Using only one sentense.",
    ("lvis", "full"): "What is the category of <region>? Using only one word or phrase.",
    ("lvis", "lite"): "What is the category of <region>? Using only one word or phrase.",
    (
        "paco",
        "full",
    ): "What is the category of <region>? It maybe a subpart of an object. If it is a subpart, "
    "output in the format of 'category:subcategory', else just output the category.",
    (
        "paco",
        "lite",
    ): "What is the category of <region>? It maybe a subpart of an object. If it is a subpart, "
    "output in the format of 'category:subcategory', else just output the category.",
    ("vg", "full"): "Please describe <region> briefly.",
    ("vg", "lite"): "Please describe <region> briefly.",
    ("refl4", "full"): "Please describe <region> in brief.",
    ("refl4", "lite"): "Please describe <region> in brief.",
    ("refl4-clair", "full"): "Please describe <region> in detail.",
    ("refl4-clair", "lite"): "Please describe <region> in detail.",
    (
        "dlc",
        "full",
    ): "Please describe the region <region> in the image in detail. Do not describe anything else.",
    (
        "dlc",
        "lite",
    ): "Please describe the region <region> in the image in detail. Do not describe anything else.",
}


@pytest.mark.parametrize(("name", "variant"), sorted(OFFICIAL))
def test_fixed_prompts_are_the_official_strings(name: str, variant: str) -> None:
    assert prompt_for(name, variant, {}) == OFFICIAL[(name, variant)]


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_videorefer_q_question_options_and_answer_format(variant: str) -> None:
    fields = {"Question": "What is <object0><region> doing?", "options": ["(A) running", "(B) sitting"]}
    assert prompt_for("videorefer-q", variant, fields) == (
        "What is <object0><region> doing? (A) running (B) sitting. "
        "Answer with the option's letter from the given choices directly."
    )


def test_ferret_full_sends_the_question_and_lite_declares_the_region_first() -> None:
    fields = {"text": "What might be the purpose of the object <region> on the train?", "category": "reason"}
    assert (
        prompt_for("ferret", "full", fields)
        == "What might be the purpose of the object <region> on the train?"
    )
    assert prompt_for("ferret", "lite", fields) == (
        "There is 1 region in the image: <region> What might be the purpose of the object  on the train?"
    )
    other = {"text": "Describe <region>.", "category": "refer_desc"}
    assert prompt_for("ferret", "lite", other) == "Describe <region>."


def test_every_benchmark_has_a_prompt_for_both_variants() -> None:
    covered = {b for b, _ in OFFICIAL} | {"videorefer-q", "ferret"}
    assert covered == set(BENCHMARKS)
