"""The bounds of one conversation (objects, question length, prompt and answer tokens, history, time).

They sit with the chat that enforces them; what one upload may be is `pixelrefer.media.limits.MediaLimits`.
The app's values live in `pixelrefer.serve.service.AppSettings`. Every refusal happens before any network
runs and names the limit, the request's value and the excess.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..media.limits import LimitExceeded

__all__ = ["ChatLimits"]


def _count(value: float) -> str:
    """Numbers as people read them: 16384 → '16,384', 4.0 → '4'."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,g}"


@dataclass(frozen=True)
class ChatLimits:
    """Per-session bounds of a conversation; every refusal happens before any network runs.

    `masks_per_object` and `max_region_tokens` are not refusals but the rule for how many masks of a clip
    the Lite model sees; `cache_bytes` bounds the feature cache (older entries are recomputed when needed);
    `generation_timeout_s` ends an answer that runs too long (its `finish_reason` is "timeout").
    """

    max_objects: int = 16
    max_question_chars: int = 4000
    max_prompt_tokens: int = 16384
    max_new_tokens: int = 16384
    max_history: int = 20
    masks_per_object: int = 8
    max_region_tokens: int = 1024
    cache_bytes: int = 1 << 30
    generation_timeout_s: float | None = 300.0

    def describe(self) -> str:
        """One line for the UI, next to the chat."""
        return (
            f"Up to {self.max_objects} objects, questions of up to {_count(self.max_question_chars)} characters, "
            f"answers of up to {_count(self.max_new_tokens)} tokens, {self.max_history} questions per chat."
        )

    def check_object_count(self, current: int) -> None:
        """Refuse one more object when `current` are already marked."""
        if current >= self.max_objects:
            raise LimitExceeded(
                f"This would be object {current + 1}; the limit is {self.max_objects} objects. "
                "Delete one to mark another."
            )

    def check_question(self, question: str) -> None:
        """Refuse a question longer than `max_question_chars` (counted after trimming spaces)."""
        length = len(question)
        if length > self.max_question_chars:
            raise LimitExceeded(
                f"The question is {length:,} characters long; the limit is {self.max_question_chars:,} "
                f"({length - self.max_question_chars:,} over). Shorten it."
            )

    def check_new_tokens(self, max_new_tokens: int) -> None:
        """Refuse a request for longer answers than `max_new_tokens`."""
        if max_new_tokens > self.max_new_tokens:
            raise LimitExceeded(
                f"max_new_tokens is {max_new_tokens:,}; the limit is {self.max_new_tokens:,} "
                f"({max_new_tokens - self.max_new_tokens:,} over)."
            )

    def check_history(self, exchanges: int) -> None:
        """Refuse a new question once the chat holds `max_history` questions and answers."""
        if exchanges >= self.max_history:
            raise LimitExceeded(
                f"This chat already has {exchanges} questions and answers; the limit is {self.max_history}. "
                "Clear the chat (the objects stay) to ask more."
            )

    def check_prompt(self, prompt_tokens: int, new_tokens: int, context: int) -> None:
        """Refuse a prompt over `max_prompt_tokens`, or one that with its answer would not fit the model's context."""
        limit = min(self.max_prompt_tokens, context - new_tokens)
        if prompt_tokens > limit:
            which = (
                f"the limit is {limit:,} prompt tokens"
                if limit == self.max_prompt_tokens
                else f"with {new_tokens:,} new tokens the model's context of {context:,} allows {max(limit, 0):,}"
            )
            raise LimitExceeded(
                f"The conversation is too long: {prompt_tokens:,} prompt tokens; {which} "
                f"({prompt_tokens - max(limit, 0):,} over). Clear the chat, or use fewer objects or frames."
            )
