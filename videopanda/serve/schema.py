"""What a chat completions request may hold, and how a request body becomes one.

The body's JSON shape (depth, number of values) is checked before it is parsed, so a hostile body costs time linear
in its length; the parsed request is then validated against the schema and reduced to a `Conversation`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..processing import PLACEHOLDER
from .errors import APIError, _short, _short_plain

__all__ = ["ChatRequest", "Conversation", "Message", "check_json_shape", "parse_conversation"]

MAX_JSON_DEPTH = 32  # a chat request nests 5 deep (body, messages, message, content part, video_url)
MAX_JSON_TOKENS = 100_000  # strings, brackets and commas of a body: a 1,000-turn history is about 6,000


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, seed, metadata ...)


class _URL(_Schema):
    url: str


class TextPart(_Schema):
    type: Literal["text"]
    text: str


class VideoPart(_Schema):
    type: Literal["video_url"]
    video_url: _URL


class ImagePart(_Schema):
    type: Literal["image_url"]
    image_url: _URL


Part = Annotated[TextPart | VideoPart | ImagePart, Field(discriminator="type")]


class Message(_Schema):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(_Schema):
    include_usage: bool = False


class ChatRequest(_Schema):
    """The fields of OpenAI's chat completions request that change the answer; `ignore_eos` is vLLM's."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    logprobs: bool | None = None


@dataclass
class Conversation:
    """A chat request reduced to what the model takes: one visual, earlier (question, answer) turns, the question."""

    kind: Literal["video", "image"]
    url: str
    history: list[tuple[str, str]]
    question: str


def parse_conversation(messages: Sequence[Message]) -> Conversation:
    """System messages are dropped (the model's prompt format has its own); the rest must alternate user/assistant,
    start and end with a user message, and hold exactly one video or image, in the first user message."""
    turns = [m for m in messages if m.role in ("user", "assistant")]
    for i, m in enumerate(turns):
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise APIError(400, "messages must alternate user and assistant, starting with user (system messages "
                                f"aside); message {i} of the conversation is {m.role!r}")
    if not turns or turns[-1].role != "user":
        raise APIError(400, "the last message must be a user message (the question to answer)")
    texts, visuals = [], []
    for i, m in enumerate(turns):
        parts = [TextPart(type="text", text=m.content or "")] if not isinstance(m.content, list) else m.content
        texts.append("\n".join(p.text for p in parts if isinstance(p, TextPart)).strip())
        for p in parts:
            if isinstance(p, VideoPart):
                visuals.append((i, "video", p.video_url.url))
            elif isinstance(p, ImagePart):
                visuals.append((i, "image", p.image_url.url))
    if len(visuals) != 1 or visuals[0][0] != 0:
        raise APIError(400, "a conversation needs exactly one video_url (or image_url) part, in the first user "
                            f"message; got {len(visuals)}" + (" (not in the first user message)" if visuals else ""))
    if not texts[-1]:
        raise APIError(400, "the last user message has no text: ask a question about the video")
    if any(PLACEHOLDER.search(t) for t in texts):
        raise APIError(400, "message text must not contain '<video>' or '<image>': they are the model's "
                            "placeholders for the video; send the video as a video_url part")
    history = [(texts[k], texts[k + 1]) for k in range(0, len(texts) - 1, 2)]
    return Conversation(visuals[0][1], visuals[0][2], history, texts[-1])



def check_json_shape(text: str, max_depth: int = MAX_JSON_DEPTH, max_tokens: int = MAX_JSON_TOKENS) -> None:
    """400 when a JSON text nests deeper than `max_depth` or holds more than `max_tokens` strings, brackets and
    commas, found before it is parsed, in time linear in its length: strings are skipped by the json module's own
    C scanner, and the scan stops at the first limit passed. Invalid JSON is left for the parser to report."""
    scan, skip = _JSON_STRUCTURE.search, json.decoder.scanstring
    depth, count, pos = 0, 0, 0
    while (found := scan(text, pos)) is not None:
        count += 1
        if count > max_tokens:
            raise APIError(400, f"the request body holds more than {max_tokens} JSON values; a chat request needs "
                                "far fewer", code="json_too_large")
        char, pos = found.group(), found.end()
        if char == '"':
            try:
                pos = skip(text, pos)[1]
            except ValueError:  # an unterminated or invalid string
                return
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise APIError(400, f"the request body nests JSON more than {max_depth} levels deep; a chat request "
                                    "needs 5", code="json_too_deep")
        elif char in "]}":
            depth -= 1


_JSON_STRUCTURE = re.compile(r'["\[\]{},]')


def _parse_request(body: bytes | bytearray) -> ChatRequest:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"the request body is not valid JSON (not UTF-8 text: {err.reason} at byte "
                            f"{err.start})") from None
    if isinstance(body, bytearray):
        body.clear()  # the caller's copy too: a large body is held once, not twice
    check_json_shape(text)
    try:
        data = json.loads(text)
    except RecursionError:
        raise APIError(400, "the request body nests JSON too deeply", code="json_too_deep") from None
    except ValueError as err:  # JSONDecodeError, and numbers too long to convert
        raise APIError(400, f"the request body is not valid JSON ({_short(str(err))})") from None
    del text
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as err:
        where = "; ".join(f"{_short_plain('.'.join(map(str, e['loc'])) or 'body')}: {_short_plain(e['msg'])}"
                          for e in err.errors(include_url=False, include_input=False)[:5])
        raise APIError(422, f"the request does not match the chat completions schema: {where}") from None
    unsupported = [name for name, bad in (("n > 1", req.n != 1), ("stop", bool(req.stop)), ("tools", bool(req.tools)),
                                          ("logprobs", bool(req.logprobs))) if bad]
    if unsupported:
        raise APIError(400, f"not supported by this server: {', '.join(unsupported)}")
    return req

