"""The official instruction of each benchmark and variant, exactly as the official inference scripts send it.

Strings use the official syntax: each `<region>` is the next object, `<video>`/`<image>` places the media
(the full model gets it at the start when the tag is missing, as the official `mm_infer` does; Lite has
no media tokens). No demo declaration ("There is 2 objects ...") is added: what is here is what is sent.
`docs/eval.md` lists the same table; `tests/test_eval_prompts.py` pins every string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model.config import Variant

__all__ = ["FIXED_PROMPTS", "prompt_for"]

_MC_SUFFIX = ". Answer with the option's letter from the given choices directly."

FIXED_PROMPTS: dict[tuple[str, Variant], str] = {
    ("videorefer-d", "full"): "<video>\nPlease describe in detail the marked object <region> in the video.",
    ("videorefer-d", "lite"): (
        "There is one object in the video: <region>.\nPlease describe in detail the marked object in the video."
    ),
    ("hcstvg", "full"): "Please describe the object <region> in brief in the video.",
    ("hcstvg", "lite"): (
        "There is one object in the video: <region>.\nPlease give a description of the highlighted object "
        "in the video. Using only one sentense."
    ),
    ("lvis", "full"): "What is the category of <region>? Using only one word or phrase.",
    ("paco", "full"): (
        "What is the category of <region>? It maybe a subpart of an object. If it is a subpart, output in the "
        "format of 'category:subcategory', else just output the category."
    ),
    ("vg", "full"): "Please describe <region> briefly.",
    ("refl4", "full"): "Please describe <region> in brief.",
    ("refl4-clair", "full"): "Please describe <region> in detail.",
    (
        "dlc",
        "full",
    ): "Please describe the region <region> in the image in detail. Do not describe anything else.",
}
"""Prompts that do not depend on the item. The image benchmarks send the same string to both variants."""

for _name in ("lvis", "paco", "vg", "refl4", "refl4-clair", "dlc"):
    FIXED_PROMPTS[(_name, "lite")] = FIXED_PROMPTS[(_name, "full")]


def prompt_for(benchmark: str, variant: Variant, fields: Mapping[str, Any]) -> str:
    """The instruction for one item; `fields` are the item's own question data (see the readers)."""
    if benchmark == "videorefer-q":
        # Both variants: the question, its options joined by spaces, then the answer-format sentence.
        return f"{fields['Question']} {' '.join(fields['options'])}{_MC_SUFFIX}"
    if benchmark == "ferret":
        text = fields["text"]
        if variant == "lite" and fields.get("category") == "reason":
            # Lite declares the region first and drops it from the question (the double space stays).
            return "There is 1 region in the image: <region> " + text.replace("<region>", "")
        return text
    return FIXED_PROMPTS[(benchmark, variant)]
