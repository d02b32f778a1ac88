"""An OpenAI chat-completions request body, read and checked into what one region chat needs.

The server speaks the protocol the `openai` client and vLLM speak, so a team's existing code works: the
picture is an `image_url` part (a data URL), a clip a `video_url` part, earlier answers are `assistant`
messages. What the protocol has no word for travels in the body beside `messages` (the client's
`extra_body`): `regions`, one mask per object. Every field is type-checked here, before any media is
decoded, and a refusal names the field (`param`) as OpenAI's errors do. Options that would change the
answer in a way this server cannot honour (`n` > 1, `stop`, tools, logprobs, penalties) are refused rather
than ignored, so a client never gets an answer to a request it did not make.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..model.generation import GenerationSettings
from ..runtime.errors import InputError

__all__ = [
    "ChatRequest",
    "MediaPart",
    "RequestRefused",
    "data_url_bytes",
    "is_remote",
    "parse_request",
]


class RequestRefused(InputError):
    """A request the server answers with an OpenAI error object: HTTP `status`, `type`, `param` and `code`."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        self.status = status
        self.type = type
        self.code = code


@dataclass(frozen=True)
class MediaPart:
    """The conversation's picture or clip as the client sent it: a data URL, or a remote URL to fetch."""

    kind: Literal["image", "video"]
    url: str
    param: str

    @property
    def digest(self) -> str:
        """What identifies the media in a conversation's key (the URL holds the bytes, or names them)."""
        return hashlib.sha256(self.url.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: one media item, the regions as sent, the user questions and earlier answers."""

    model: str
    media: MediaPart
    regions: list[Any] | None
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    settings: GenerationSettings
    stream: bool
    include_usage: bool
    return_token_ids: bool

    def key(self, client: str, answers: Sequence[str]) -> str:
        """The conversation of this request's questions and `answers` (as many turns as answers), for
        `client`: a cache key that only the same client with the same media, regions and messages produces."""
        regions = json.dumps(self.regions, sort_keys=True, ensure_ascii=True)
        parts = [client, self.media.kind, self.media.digest, regions]
        for question, answer in zip(self.questions, answers, strict=False):
            parts += [question, answer]
        digest = hashlib.sha256()
        for part in parts:
            encoded = part.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "big") + encoded)
        return digest.hexdigest()


_DATA_URL = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,"
)
_REFUSED_OPTIONS = {
    "stop": "stop sequences",
    "tools": "tools",
    "functions": "functions",
    "logit_bias": "logit_bias",
    "audio": "audio output",
    "prediction": "predicted outputs",
}
_MEDIA_PART = {"image_url": "image", "video_url": "video"}


def is_remote(url: str) -> bool:
    """An http(s) URL: fetching it is a request from the server, which the operator must allow."""
    return url[:8].lower().startswith(("http://", "https://"))


def data_url_bytes(url: str, *, max_bytes: int, what: str, param: str) -> tuple[str, bytes]:
    """(media type, bytes) of a base64 data URL, refusing one over `max_bytes` before it is decoded."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise RequestRefused(
            f"{what} must be a base64 data URL (data:<type>;base64,...); got {url[:40]!r}", param=param
        )
    encoded = url[match.end() :]
    decoded_size = len(encoded) * 3 // 4
    if decoded_size > max_bytes:
        raise RequestRefused(
            f"{what} is about {decoded_size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB", param=param
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefused(f"{what} is not valid base64 after 'base64,'", param=param) from None
    if not data:
        raise RequestRefused(f"{what} is empty", param=param)
    return (match.group("type") or "").lower(), data


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise RequestRefused(f"{param} must be a string, not {_kind(value)}", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestRefused(f"{param} holds a character that is not valid Unicode", param=param) from None
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _number(body: Mapping, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestRefused(f"{name} must be a number, not {_kind(value)}", param=name)
    if not low <= value <= high:
        raise RequestRefused(f"{name} is {value}; it must be between {low:g} and {high:g}", param=name)
    return float(value)


def _integer(body: Mapping, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestRefused(f"{name} must be an integer, not {_kind(value)}", param=name)
    return value


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestRefused(f"{name} must be true or false, not {_kind(value)}", param=name)
    return value


def _user_content(content: Any, param: str) -> tuple[str, list[MediaPart]]:
    """The text of a user message (its text parts, in order) and its media parts."""
    if isinstance(content, str):
        return _text(content, param), []
    if not isinstance(content, list) or not content:
        raise RequestRefused(f"{param} must be a string or a non-empty array of parts", param=param)
    texts, media = [], []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, Mapping):
            raise RequestRefused(f"{where} must be an object with a 'type'", param=where)
        kind = part.get("type")
        if kind == "text":
            texts.append(_text(part.get("text"), f"{where}.text"))
        elif kind in _MEDIA_PART:
            holder = part.get(kind)
            url = holder.get("url") if isinstance(holder, Mapping) else holder
            media.append(MediaPart(_MEDIA_PART[kind], _text(url, f"{where}.{kind}.url"), f"{where}.{kind}"))
        else:
            raise RequestRefused(
                f"{where} is a {kind!r} part; this server reads 'text', 'image_url' and 'video_url' parts",
                param=where,
            )
    return "\n".join(texts), media


def _assistant_content(content: Any, param: str) -> str:
    if isinstance(content, list):
        pieces = []
        for index, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise RequestRefused(f"{param}[{index}] must be a text part", param=f"{param}[{index}]")
            pieces.append(_text(part.get("text"), f"{param}[{index}].text"))
        return "".join(pieces)
    return _text(content, param)


def _question(text: str) -> str:
    """The question as the chat takes it; a leading `<image>` (as Describe Anything's clients write) goes."""
    text = text.strip()
    if text.startswith("<image>"):
        text = text.removeprefix("<image>").strip()
    return text


def _conversation(messages: Any) -> tuple[MediaPart, tuple[str, ...], tuple[str, ...]]:
    if not isinstance(messages, list) or not messages:
        raise RequestRefused("messages must be a non-empty array", param="messages")
    questions: list[str] = []
    answers: list[str] = []
    media: list[MediaPart] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise RequestRefused(f"{param} must be an object with 'role' and 'content'", param=param)
        role = message.get("role")
        expected = "user" if index % 2 == 0 else "assistant"
        if role in ("system", "developer"):
            raise RequestRefused(
                f"{param} is a {role} message; PixelRefer was trained without one, so this server "
                "takes only user and assistant messages",
                param=f"{param}.role",
            )
        if role != expected:
            raise RequestRefused(
                f"{param} is {role!r}; messages must alternate user and assistant, starting and ending "
                f"with a user message (expected {expected!r} here)",
                param=f"{param}.role",
            )
        if role == "assistant":
            answers.append(_assistant_content(message.get("content"), f"{param}.content"))
            continue
        text, parts = _user_content(message.get("content"), f"{param}.content")
        if parts and index > 0:
            raise RequestRefused(
                f"{param} holds media; a conversation is about one picture or clip, sent in the first "
                "user message",
                param=parts[0].param,
            )
        media += parts
        questions.append(_question(text))
    if len(questions) == len(answers):
        raise RequestRefused(
            "The last message must be a user message", param=f"messages[{len(messages) - 1}]"
        )
    if not media:
        raise RequestRefused(
            "The conversation has no picture or clip: put an image_url (or video_url) part in the first "
            "user message",
            param="messages[0].content",
        )
    if len(media) > 1:
        raise RequestRefused(
            f"The first user message holds {len(media)} pictures or clips; a conversation is about one",
            param=media[1].param,
        )
    return media[0], tuple(questions), tuple(answers)


def _settings(body: Mapping, max_new_tokens: int) -> GenerationSettings:
    tokens = _integer(body, "max_completion_tokens")
    name = "max_completion_tokens"
    if tokens is None:
        tokens, name = _integer(body, "max_tokens"), "max_tokens"
    if tokens is not None and tokens < 1:
        raise RequestRefused(f"{name} must be at least 1", param=name)
    if tokens is not None and tokens > max_new_tokens:
        raise RequestRefused(
            f"{name} is {tokens:,}; this server's limit is {max_new_tokens:,} ({tokens - max_new_tokens:,} over)",
            param=name,
        )
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p == 0:
        raise RequestRefused("top_p must be above 0", param="top_p")
    seed = _integer(body, "seed")
    return GenerationSettings(
        max_new_tokens=tokens or max_new_tokens,
        do_sample=bool(temperature),
        temperature=temperature if temperature else None,
        top_p=top_p,
        seed=1234 if seed is None else seed,
    )


def _refuse_unsupported(body: Mapping) -> None:
    for name, what in _REFUSED_OPTIONS.items():
        if body.get(name) not in (None, [], {}, ""):
            raise RequestRefused(f"This server does not support {what} ({name})", param=name)
    n = _integer(body, "n")
    if n not in (None, 1):
        raise RequestRefused(f"n is {n}; this server gives one answer per request (n=1)", param="n")
    if _flag(body.get("logprobs"), "logprobs") or body.get("top_logprobs"):
        raise RequestRefused("This server does not return logprobs", param="logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, -2.0, 2.0):
            raise RequestRefused(
                f"This server does not support {name}; the checkpoint's repetition penalty applies",
                param=name,
            )
    response_format = body.get("response_format")
    if response_format not in (None, {}) and (
        not isinstance(response_format, Mapping) or response_format.get("type") != "text"
    ):
        raise RequestRefused(
            "This server answers in plain text only (response_format)", param="response_format"
        )


def parse_request(body: Any, *, max_new_tokens: int) -> ChatRequest:
    """Check a decoded JSON body; raises `RequestRefused` naming the first field that is wrong."""
    if not isinstance(body, Mapping):
        raise RequestRefused("The request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestRefused("model is required: the name GET /v1/models lists", param="model")
    _refuse_unsupported(body)
    media, questions, answers = _conversation(body.get("messages"))
    regions = body.get("regions")
    if regions is not None and (not isinstance(regions, list) or not regions):
        raise RequestRefused(
            "regions must be a non-empty array, one mask per object (<object1>, <object2>, ...)",
            param="regions",
        )
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise RequestRefused("stream_options must be an object", param="stream_options")
    return ChatRequest(
        model=model,
        media=media,
        regions=regions,
        questions=questions,
        answers=answers,
        settings=_settings(body, max_new_tokens),
        stream=_flag(body.get("stream"), "stream"),
        include_usage=_flag((options or {}).get("include_usage"), "stream_options.include_usage"),
        return_token_ids=_flag(body.get("return_token_ids"), "return_token_ids"),
    )
