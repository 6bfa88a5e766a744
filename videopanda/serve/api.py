"""`videopanda serve`: an OpenAI-compatible chat completions API about videos (FastAPI + uvicorn).

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (streaming or not), `GET /health`.
A message's content mixes text parts and one video, as vLLM accepts it:
`{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}`, or a path / file:// URL inside
`--media-dir`; `{"type": "image_url", ...}` is a 1-frame image. The video belongs to the first user message; earlier
user/assistant turns become the history.

Flow of a request: check the API key and the declared body size, reserve a place in the queue (503 when full), read
the body (413 past the limit, 408 past `--body-timeout`), check the JSON's shape (depth, number of values) before
parsing it, validate it, refuse text that cannot fit the model's context from its length alone, then in a prepare
thread count the text's tokens exactly, decode the video (each upload in a private temp folder that is always
removed) and hand a `_Job` to the single `_Worker` thread. The worker owns the model: it batches queued
non-streaming jobs with the same settings into one left-padded `model.generate`, and runs a streaming job alone with
a streamer that feeds the response. A client that goes away while its body arrives, while it is prepared, while it
waits in the queue or while it is generated gives its place back at once; a `StoppingCriteria` stops its generation.

Connections: `guarded_h11_protocol` closes connections that send no complete request head within
`--header-timeout`, and keeps at most `--max-connections` open (the oldest connection still waiting for a head
makes room for a new one), so idle or slow sockets cannot lock good clients out.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hmac
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

import anyio
import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..inference import decoding_options
from ..processing import PLACEHOLDER, VIDEO_TOKEN, VideoPandaProcessor
from ..video import VideoDecodeError, is_image_path, load_image, load_video
from . import ServeArgs

__all__ = ["APIError", "Cancelled", "QuietLogs", "TextBudget", "UploadFolders", "check_json_shape", "create_app",
           "guarded_h11_protocol", "run_server"]

logger = logging.getLogger(__name__)

MIB = 1 << 20
MAX_FRAME_PIXELS = 3840 * 2160  # 4K; larger frames are refused before decoding (8 of them are 200 MB of RGB)
# One request's decode may not take more than this (a clip of many frames behind one keyframe): 2,000 frames are a
# minute of 30 fps video after the nearest keyframe, far more than sampling a real clip needs.
MAX_DECODED_FRAMES, DECODE_BUDGET_S = 2000, 15.0
MAX_JSON_DEPTH = 32  # a chat request nests 5 deep (body, messages, message, content part, video_url)
MAX_JSON_TOKENS = 100_000  # strings, brackets and commas of a body: a 1,000-turn history is about 6,000
MAX_PATH_CHARS = 4096  # a path or file:// URL longer than Linux's PATH_MAX names no file
FALLBACK_CONTEXT = 32_768  # the text bound of a model whose config names no context length
_BODY_SLACK = MIB  # the JSON around the base64 upload: text, history, settings
_DISCONNECT_POLL_S = 0.25
_ECHO_CHARS = 120  # how much of a client's value an error message repeats
_MIME_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
                "video/x-msvideo": ".avi", "image/gif": ".gif", "image/png": ".png", "image/jpeg": ".jpg",
                "image/webp": ".webp", "image/bmp": ".bmp"}


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style `{"error": {...}}` body with this HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers


class _ClientGone(Exception):
    """The client closed its connection before its answer: nothing can be sent, its place is already free."""


def _short(value: str) -> str:
    """A client's value as an error message repeats it: quoted, and cut to a few words."""
    return repr(_short_plain(value))


def _short_plain(value: str) -> str:
    return value if len(value) <= _ECHO_CHARS else value[:_ECHO_CHARS] + "..."


def _error_response(status: int, message: str, kind: str, code: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- request schema ----------------------------------------------------------------------------------------------------
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


# -- media: uploads and files in --media-dir ---------------------------------------------------------------------------
def decode_data_url(url: str, limit: int) -> tuple[str, bytes]:
    """(mime type, bytes) of a base64 `data:` URL; 413 past `limit` bytes, checked before and after decoding."""
    header, comma, payload = url[5:].partition(",")
    params = header.split(";")
    if not comma or "base64" not in params[1:]:
        raise APIError(400, "data: URLs must be base64-encoded (data:video/mp4;base64,...)")
    if len(payload) // 4 * 3 > limit + 3:  # an upper bound of the decoded size, before allocating it
        raise APIError(413, _too_large(limit), code="upload_too_large")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the data: URL is not valid base64") from None
    if len(data) > limit:
        raise APIError(413, _too_large(limit), code="upload_too_large")
    return params[0].strip().lower(), data


def _too_large(limit: int) -> str:
    return f"the upload is larger than this server's limit of {limit / MIB:g} MiB (--max-upload-mb)"


def resolve_media_path(url: str, media_dir: str | None) -> str:
    """The real path of a file named by path or file:// URL, which must lie inside `media_dir` once every symlink
    and `..` is resolved. The resolved path is what gets opened, so a link cannot be swapped after the check."""
    if media_dir is None:
        raise APIError(403, "this server reads no local files: upload the video as a data: URL, or start the "
                            "server with --media-dir", code="media_dir_disabled")
    if len(url) > MAX_PATH_CHARS:
        raise APIError(400, f"the video URL is {len(url)} characters long; a path or file:// URL may have at most "
                            f"{MAX_PATH_CHARS}")
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise APIError(400, f"file:// URLs must name a local file, not host {parsed.netloc!r}")
        raw = unquote(parsed.path)
    elif "://" in url:
        raise APIError(400, "only data: URLs and files inside the media folder are accepted, not "
                            f"{_short(url.split(':')[0])}:// URLs (the server fetches nothing from the network)")
    else:
        raw = url
    root = os.path.realpath(media_dir)
    try:
        full = os.path.realpath(os.path.join(root, raw))  # an absolute `raw` replaces root, and is checked the same
    except (ValueError, OSError):
        raise APIError(400, f"{_short(url)} is not a valid path") from None
    if os.path.commonpath([root, full]) != root:
        raise APIError(403, f"{url}: outside the media folder", code="outside_media_dir")
    return full


class Cancelled(Exception):
    """The request's client went away; the work for it stops at the next step."""


class UploadFolders:
    """Each upload is written into a private, empty temp folder (`$TMPDIR/videopanda-upload-*`, mode 0700) that is
    removed when its decode ends, however it ends; `remove_all` removes those still being decoded (at shutdown)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders: set[str] = set()

    @contextlib.contextmanager
    def folder(self) -> Iterator[str]:
        with self._lock:
            path = tempfile.mkdtemp(prefix="videopanda-upload-")
            self._folders.add(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            with self._lock:
                self._folders.discard(path)

    def remove_all(self) -> None:
        with self._lock:
            folders, self._folders = self._folders, set()
        for path in folders:
            shutil.rmtree(path, ignore_errors=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._folders)


def load_media(kind: str, url: str, *, media_dir: str | None, max_upload: int, num_frames: int,
               uploads: UploadFolders | None = None, cancelled: threading.Event | None = None,
               ) -> tuple[np.ndarray, bool]:
    """Frames ([T, H, W, 3] uint8) of the visual a request names, and whether it is an image. `Cancelled` once
    `cancelled` is set (checked before the upload is written and before it is decoded)."""

    def check() -> None:
        if cancelled is not None and cancelled.is_set():
            raise Cancelled

    if url.startswith("data:"):
        mime, data = decode_data_url(url, max_upload)
        check()
        with (uploads if uploads is not None else UploadFolders()).folder() as folder:
            path = os.path.join(folder, "upload" + _MIME_SUFFIX.get(mime, ".bin"))
            with open(path, "xb") as f:
                f.write(data)
            del data
            check()
            return _decode(path, kind == "image", f"the uploaded {kind}", num_frames), kind == "image"
    path = resolve_media_path(url, media_dir)
    check()
    image = kind == "image" or is_image_path(path)
    return _decode(path, image, url, num_frames), image


def _decode(path: str, image: bool, label: str, num_frames: int) -> np.ndarray:
    try:
        if image:
            return load_image(path, max_pixels=MAX_FRAME_PIXELS)
        return load_video(path, num_frames, max_pixels=MAX_FRAME_PIXELS, max_decoded_frames=MAX_DECODED_FRAMES,
                          time_budget_s=DECODE_BUDGET_S)
    except VideoDecodeError as err:  # the message names our temp file; the reason alone is what the client needs
        raise APIError(400, f"{label}: {err.reason}", code="bad_media") from None


# -- text limits from the model's context ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextBudget:
    """How much text a prompt may hold, known from its length alone.

    Every token stands for at most `chars_per_token` characters and `bytes_per_token` UTF-8 bytes of text (the
    longest entry of the tokenizer's vocabulary, special tokens included), so a text of N characters needs at least
    N / chars_per_token tokens. A conversation whose text is longer than `(context - max_tokens) * chars_per_token`
    characters (or bytes) cannot fit, and is refused without being tokenised; shorter text is then counted exactly
    (bounded work). For a tokenizer whose normaliser may shrink text (NFKC ...) or whose unknown-character token
    may cover a run of characters, the bounds are taken 4 times larger.
    """

    context: int
    chars_per_token: int
    bytes_per_token: int

    @classmethod
    def of(cls, tokenizer: Any, context: int | None) -> TextBudget:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        spec: dict[str, Any] = {}
        if backend is not None:
            vocab = list(backend.get_vocab(with_added_tokens=True))
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                spec = json.loads(backend.to_str())
        else:
            vocab = list(tokenizer.get_vocab())
        vocab += [str(t) for t in getattr(tokenizer, "all_special_tokens", [])]
        chars = max(map(len, vocab), default=1)
        byte_level = any(p.get("type") == "ByteLevel" for p in _parts(spec.get("pre_tokenizer")))
        if byte_level:  # one character of a byte-level token is one byte
            added = [*getattr(tokenizer, "get_added_vocab", dict)(), *getattr(tokenizer, "all_special_tokens", [])]
            nbytes = max([chars, *(len(str(t).encode("utf-8", "surrogatepass")) for t in added)])
        else:  # sentencepiece style: "▁" stands for a space, "<0x0A>" for one byte
            nbytes = max((len(t.replace("\u2581", " ").encode("utf-8", "surrogatepass")) for t in vocab), default=1)
        model = spec.get("model") or {}
        exact = (model.get("type") == "BPE" and (byte_level or bool(model.get("byte_fallback")))
                 and all(_keeps_length(n) for n in _parts(spec.get("normalizer"))))
        factor = 1 if exact else 4
        return cls(context or FALLBACK_CONTEXT, max(1, chars) * factor, max(1, nbytes) * factor)

    def check(self, texts: Sequence[str], max_tokens: int) -> None:
        """400 when `texts` (the conversation's text) cannot fit in the context beside `max_tokens`, or is not
        valid Unicode; O(1) for ASCII text, one pass over text that is short enough to be counted anyway."""
        room = max(0, self.context - max_tokens)
        chars = sum(map(len, texts))
        if chars > room * self.chars_per_token:
            raise self._refusal(f"{chars} characters")
        nbytes = 0
        for text in texts:
            if text.isascii():
                nbytes += len(text)
                continue
            try:
                nbytes += len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise APIError(400, "message text is not valid Unicode: it holds a lone surrogate (a \\ud800-"
                                    "\\udfff escape that is not half of a pair)") from None
        if nbytes > room * self.bytes_per_token:
            raise self._refusal(f"{nbytes} bytes of UTF-8")

    def _refusal(self, size: str) -> APIError:
        return APIError(400, f"the conversation's text ({size}) cannot fit in the model's context of {self.context} "
                             f"tokens beside max_tokens (a token is at most {self.chars_per_token} characters for "
                             "this tokenizer): shorten the question or the history, or lower max_tokens",
                        code="context_length_exceeded")


def _parts(spec: Any) -> list[dict[str, Any]]:
    """The steps of a tokenizer.json normaliser or pre-tokeniser (a Sequence flattened; none: [])."""
    if not isinstance(spec, dict):
        return []
    inner = spec.get("normalizers") or spec.get("pretokenizers")
    if spec.get("type") == "Sequence" and isinstance(inner, list):
        return [p for step in inner for p in _parts(step)]
    return [spec]


def _keeps_length(step: dict[str, Any]) -> bool:
    """Whether a normaliser step can only keep or grow the text: Prepend, and Replace of a string by one no shorter
    (sentencepiece's " " -> "▁")."""
    if step.get("type") == "Prepend":
        return True
    if step.get("type") == "Replace":
        pattern = step.get("pattern") or {}
        return "String" in pattern and len(str(step.get("content", ""))) >= len(str(pattern["String"]))
    return False


# -- the worker that owns the model ------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Job:
    """One admitted request, from admission to its last token."""

    stream: bool
    max_tokens: int
    temperature: float
    top_p: float
    ignore_eos: bool
    prompt: str = ""  # used when input_ids is None
    pixels: torch.Tensor | None = None  # [T, 4, S, S]
    input_ids: list[int] | None = None  # the prompt's tokens, the video's placeholder ids included
    prompt_tokens: int = 0
    result: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: asyncio.Queue | None = None  # streaming: text pieces, then None
    loop: asyncio.AbstractEventLoop | None = None

    def key(self) -> tuple:
        """Jobs with equal keys can share one `generate` call."""
        sampling = (self.temperature, self.top_p) if self.temperature > 0 else (0.0, 1.0)
        return tuple(self.pixels.shape), sampling, self.ignore_eos

    def emit(self, piece: str | None) -> None:
        """Hand a text piece (None: the end) to the response, from the worker thread."""
        if self.events is None or self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, piece)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled.set()


@dataclass
class _Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class _CancelCheck(StoppingCriteria):
    """Stops the rows whose client went away (per row: the rest of a batch goes on)."""

    def __init__(self, jobs: Sequence[_Job]) -> None:
        self.jobs = jobs

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.tensor([j.cancelled.is_set() for j in self.jobs], dtype=torch.bool, device=input_ids.device)


class _JobStreamer(TextStreamer):
    """Sends each finished piece of text to the job's response (the event loop), instead of printing it."""

    def __init__(self, tokenizer: Any, job: _Job) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.job = job

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.job.emit(text)


class QueueFull(Exception):
    """No room for another request."""


class _Worker:
    """The one thread that runs the model; a bounded queue in front of it.

    `waiting` counts admitted requests that are not generating yet (their body arriving, being prepared, or queued);
    `admit` refuses one when `waiting >= max_queue`. A request that fails or whose client goes away before it is
    queued gives its place back with `abandon`; a queued one with `cancel`. The worker reads prompts as token ids
    (counted in the request threads), so no tokenising happens here and no lock is shared with request threads.
    """

    def __init__(self, model: Any, processor: VideoPandaProcessor, *, max_queue: int, max_batch: int,
                 decoding: str = "auto") -> None:
        self.model, self.processor = model, processor
        self.max_queue, self.max_batch = max_queue, max_batch
        self.decoding = decoding  # inference.decoding_options: "compiled" with --compile
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._waiting = 0
        self._running = 0
        self._closed = False
        self.stats = {"requests": 0, "batches": 0, "completion_tokens": 0, "rejected": 0, "cancelled": 0}
        eos = model.generation_config.eos_token_id
        self._eos = {*(eos if isinstance(eos, list) else [eos]), processor.tokenizer.eos_token_id} - {None}
        self._thread = threading.Thread(target=self._loop, name="videopanda-worker", daemon=True)
        self._thread.start()

    # -- called from request handlers --
    def admit(self) -> None:
        with self._cond:
            if self._closed or self._waiting >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull
            self._waiting += 1

    def abandon(self, gone: bool = False) -> None:
        """An admitted request that failed, or whose client went away (`gone`), before reaching the queue gives its
        place back."""
        with self._cond:
            self._waiting -= 1
            self.stats["cancelled"] += gone

    def enqueue(self, job: _Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    def cancel(self, job: _Job) -> None:
        """The job's client went away: a queued job leaves the queue (its place is free at once), a running one
        stops at its next token; a finished one is left as it is."""
        job.cancelled.set()
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:  # running, finished, or never queued
                return
            self._waiting -= 1
            self.stats["cancelled"] += 1
        job.result.cancel()
        job.emit(None)

    def status(self) -> dict[str, int]:
        with self._cond:
            return {"waiting": self._waiting, "queued": len(self._queue), "running": self._running, **self.stats}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._queue:
                job.cancelled.set()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # -- the worker thread --
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = self._take()
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as err:  # a failed batch fails its requests, never the server
                logger.exception("generation failed")
                for job in batch:
                    if not job.result.done():
                        job.result.set_exception(err)
                    job.emit(None)
            finally:
                with self._cond:
                    self._running = 0

    def _take(self) -> list[_Job]:
        """The next job and, if it does not stream, up to max_batch - 1 queued jobs that can share its batch.
        Jobs whose client has gone are dropped here. Called with the lock held."""
        first = self._queue.popleft()
        batch = [first]
        if not first.stream:
            key = first.key()
            for job in list(self._queue):
                if len(batch) >= self.max_batch:
                    break
                if not job.stream and job.key() == key:
                    self._queue.remove(job)
                    batch.append(job)
        self._waiting -= len(batch)
        live = [j for j in batch if not j.cancelled.is_set()]
        for job in batch:
            if job.cancelled.is_set():
                self.stats["cancelled"] += 1
                job.result.cancel()
                job.emit(None)
        self._running = len(live)
        return live

    @torch.inference_mode()
    def _run(self, jobs: list[_Job]) -> None:
        proc, model = self.processor, self.model
        rows = [j.input_ids if j.input_ids is not None else proc.tokenize(j.prompt, [proc.count_tokens(j.pixels)])
                for j in jobs]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), proc.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding, as generation needs
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row):] = 1
        inputs = {"input_ids": input_ids.to(model.device), "attention_mask": attention_mask.to(model.device),
                  "pixel_values": torch.stack([j.pixels for j in jobs]).to(model.device, model.dtype)}
        first = jobs[0]
        max_new = max(j.max_tokens for j in jobs)
        kwargs: dict[str, Any] = dict(do_sample=False)
        if first.temperature > 0:
            kwargs = dict(do_sample=True, temperature=first.temperature, top_p=first.top_p)
        if first.ignore_eos:
            kwargs["min_new_tokens"] = max_new  # keeps EOS from being chosen, as vLLM's ignore_eos
        streamer = _JobStreamer(proc.tokenizer, first) if first.stream else None
        with decoding_options(model, self.decoding, width + max_new, len(jobs)) as speed:
            out = model.generate(**inputs, max_new_tokens=max_new, streamer=streamer,
                                 pad_token_id=proc.tokenizer.pad_token_id,
                                 stopping_criteria=StoppingCriteriaList([_CancelCheck(jobs)]), **kwargs, **speed)
        for job, row in zip(jobs, out[:, width:].tolist()):
            job.pixels = job.input_ids = None  # 6 MB a video at 224 px; the job may outlive its request a little
            result = self._result(job, row)
            with self._cond:
                self.stats["requests"] += 1
                self.stats["completion_tokens"] += result.completion_tokens
                self.stats["cancelled"] += job.cancelled.is_set()
            job.result.set_result(result)
            job.emit(None)
        with self._cond:
            self.stats["batches"] += 1

    def _result(self, job: _Job, ids: list[int]) -> _Result:
        """Cut a generated row at its first end-of-sequence token and at the job's own max_tokens (a batch
        generates up to the largest max_tokens of its jobs, and pads the rows that stopped early)."""
        stop = None if job.ignore_eos else next((i for i, t in enumerate(ids) if t in self._eos), None)
        if stop is not None and stop < job.max_tokens:
            ids, finish = ids[: stop + 1], "stop"
        else:
            ids, finish = ids[: job.max_tokens], "length"
        return _Result(self.processor.decode(ids), finish, job.prompt_tokens, len(ids))


# -- the app -----------------------------------------------------------------------------------------------------------
def create_app(model: Any, processor: VideoPandaProcessor, args: ServeArgs) -> FastAPI:
    """The FastAPI app around a loaded model; its worker thread starts now and stops with the app's lifespan."""
    worker = _Worker(model, processor, max_queue=args.max_queue, max_batch=args.max_batch,
                     decoding="compiled" if args.compile else "auto")
    max_upload = int(args.max_upload_mb * MIB)
    body_limit = (max_upload + 2) // 3 * 4 + _BODY_SLACK
    num_frames = args.frames or processor.config.num_frames
    context = getattr(model.config.text_config, "max_position_embeddings", None)
    budget = TextBudget.of(processor.tokenizer, context)
    processor.tokenize("warm-up", [])  # settles the tokenizer's state before request threads share it
    uploads = UploadFolders()
    # Decoding, preprocessing and token counting; as many threads as waiting places. A decode whose client went
    # away runs to its end (or its decoder's budget) in the background, so at most this many run at once.
    prepare_pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.max_queue,
                                                         thread_name_prefix="videopanda-prepare")
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            worker.close()
            prepare_pool.shutdown(wait=False, cancel_futures=True)
            uploads.remove_all()

    app = FastAPI(title="videopanda", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.uploads, app.state.budget = worker, uploads, budget

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 503: "server_busy"}.get(err.status, err.kind)
        return _error_response(err.status, err.message, kind, err.code, err.headers)

    @app.exception_handler(_ClientGone)
    async def _client_gone(request: Request, err: _ClientGone) -> Response:
        client = request.client
        logger.info("client %s went away %s; its place is free", f"{client.host}:{client.port}" if client else "?",
                    err)
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _error_response(500, f"internal error: {type(err).__name__}: {_short_plain(str(err))}", "server_error")

    def check_key(request: Request) -> None:
        if args.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), args.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def model_card() -> dict[str, Any]:
        return {"id": args.model, "object": "model", "created": created, "owned_by": "videopanda"}

    def unknown_model(name: str) -> APIError:
        return APIError(404, f"the model {_short(name)} does not exist; this server serves {args.model!r}",
                        code="model_not_found")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": args.model, **worker.status()}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        check_key(request)
        if model_id != args.model:
            raise unknown_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_key(request)
        _check_declared_length(request, body_limit)
        try:  # the place is taken before the body is read: at most --max-queue bodies are held in memory
            worker.admit()
        except QueueFull:
            raise APIError(503, f"the server is busy ({args.max_queue} requests waiting; --max-queue): retry later",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        try:
            body = await _read_body(request, body_limit, args.body_timeout)
            req = await run_in_threadpool(_parse_request, body)
            del body
            if req.model is not None and req.model != args.model:
                raise unknown_model(req.model)
            conv = parse_conversation(req.messages)
            max_tokens = req.max_completion_tokens or req.max_tokens or args.max_tokens
            if max_tokens > args.max_tokens:
                raise APIError(400, f"max_tokens is {max_tokens}, more than this server allows ({args.max_tokens}; "
                                    "--max-tokens)")
            budget.check([conv.question, *(t for turn in conv.history for t in turn)], max_tokens)
            job = _Job(stream=req.stream, max_tokens=max_tokens, temperature=req.temperature or 0.0,
                       top_p=req.top_p or 1.0, ignore_eos=req.ignore_eos)
            await _watched(request, job, prepare_pool, lambda: _prepare(
                job, conv, processor, num_frames, budget.context, media_dir=args.media_dir, max_upload=max_upload,
                uploads=uploads))
        except BaseException as err:
            worker.abandon(gone=isinstance(err, _ClientGone))
            raise
        if job.stream:
            job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        worker.enqueue(job)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if job.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _JobResponse(_sse(job, rid, now, args.model, include_usage), job, worker, args.body_timeout)
        result = await _wait(request, job, worker)
        if result is None:
            raise _ClientGone("while its request waited or was generated")
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": now, "model": args.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(result)})

    return app


def _check_declared_length(request: Request, limit: int) -> None:
    """413 for a Content-Length above `limit`, before anything is read or reserved."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise APIError(400, "the Content-Length header is not a number")
    if int(declared) > limit:
        raise APIError(413, f"the request body ({int(declared) / MIB:.1f} MiB) is larger than this server "
                            f"accepts ({limit / MIB:.1f} MiB; --max-upload-mb)", code="body_too_large",
                       headers={"Connection": "close"})


async def _read_body(request: Request, limit: int, timeout: float) -> bytearray:
    """The request body: 413 past `limit` bytes, 408 when it has not all arrived `timeout` seconds after the
    request's head, `_ClientGone` when the client hangs up first."""
    body = bytearray()
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise APIError(413, f"the request body is larger than this server accepts ({limit / MIB:.1f} "
                                        "MiB; --max-upload-mb)", code="body_too_large", headers={"Connection": "close"})
                body += chunk
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout:g} s (--body-timeout; {len(body)} "
                            "bytes came)", code="body_timeout", headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise _ClientGone(f"while sending its body ({len(body)} bytes came)") from None
    return body


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


def _prepare(job: _Job, conv: Conversation, proc: VideoPandaProcessor, num_frames: int, context: int, *,
             media_dir: str | None, max_upload: int, uploads: UploadFolders) -> None:
    """Count the prompt's text tokens, decode the visual, then fill in the job's pixels and token ids (in a prepare
    thread; the text reaching here is short enough to be counted, see `TextBudget`). `Cancelled` between steps once
    the client has gone."""

    def check() -> None:
        if job.cancelled.is_set():
            raise Cancelled

    prompt = proc.build_prompt(conv.question, conv.history)
    text_ids = proc.tokenize(prompt, [0])  # the text only; the video's ids go at `at`
    at = len(proc.tokenize(prompt[: prompt.index(VIDEO_TOKEN) + len(VIDEO_TOKEN)], [0]))
    if len(text_ids) + job.max_tokens > context:
        raise APIError(400, f"the conversation's text takes {len(text_ids)} tokens and the answer up to "
                            f"{job.max_tokens}, more than the model's context of {context} tokens before the video "
                            "is counted: shorten the conversation or max_tokens", code="context_length_exceeded")
    check()
    frames, image = load_media(conv.kind, conv.url, media_dir=media_dir, max_upload=max_upload,
                               num_frames=num_frames, uploads=uploads, cancelled=job.cancelled)
    check()
    pixels = proc.preprocess(frames, image=image)
    del frames
    ids = text_ids[:at] + [proc.video_token_index] * proc.count_tokens(pixels) + text_ids[at:]
    if len(ids) + job.max_tokens > context:
        raise APIError(400, f"the prompt takes {len(ids)} tokens (video included) and the answer up to "
                            f"{job.max_tokens}, more than the model's context of {context} tokens: shorten the "
                            "conversation or max_tokens", code="context_length_exceeded")
    job.pixels, job.input_ids, job.prompt_tokens = pixels, ids, len(ids)


async def _watched(request: Request, job: _Job, pool: concurrent.futures.Executor, work: Callable[[], None]) -> None:
    """Run `work` in `pool`, watching the client: when it goes away, the job is cancelled (work not started yet
    never starts; started work stops at its next step) and `_ClientGone` is raised at once."""
    if await request.is_disconnected():  # gone while its body was parsed
        raise _ClientGone("before its video was prepared")
    future = asyncio.get_running_loop().run_in_executor(pool, work)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=_DISCONNECT_POLL_S)
            if done:
                try:
                    return future.result()
                except Cancelled:
                    raise _ClientGone("while its video was prepared") from None
            if await request.is_disconnected():
                raise _ClientGone("while its video was prepared")
    except BaseException:
        job.cancelled.set()
        future.cancel()
        future.add_done_callback(_ignore_result)  # no "exception was never retrieved" warning
        raise


def _ignore_result(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


async def _wait(request: Request, job: _Job, worker: _Worker) -> _Result | None:
    """The job's result; None (and the job cancelled, out of the queue) if the client disconnects first."""
    future = asyncio.wrap_future(job.result)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=_DISCONNECT_POLL_S)
            if done:
                return future.result()
            if await request.is_disconnected():
                return None
    finally:
        worker.cancel(job)  # no-op once finished; frees a queued job's place; stops a running one


def _usage(result: _Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


async def _sse(job: _Job, rid: str, created: int, model: str, include_usage: bool) -> AsyncIterator[str]:
    """The OpenAI chunk stream: a role chunk, content chunks, a finish chunk, [usage chunk,] `data: [DONE]`."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    while (piece := await job.events.get()) is not None:
        yield chunk({"content": piece})
    try:
        result = await asyncio.wrap_future(job.result)
    except Exception as err:  # reported in the stream, as OpenAI does
        error = {"message": f"generation failed: {type(err).__name__}: {err}", "type": "server_error"}
        yield f"data: {json.dumps({'error': error})}\n\n"
    else:
        yield chunk({}, result.finish_reason)
        if include_usage:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                    "usage": _usage(result)}
            yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


class _JobResponse(StreamingResponse):
    """A server-sent-events response that cancels its job however it ends (done, client gone, error): a job still
    queued leaves the queue, a running one stops. A client that leaves a chunk unread for `send_timeout` seconds
    (its socket's buffers full) is dropped, so a reader that never reads cannot hold its connection for good."""

    def __init__(self, content: AsyncIterator[str], job: _Job, worker: _Worker, send_timeout: float) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job, self.worker, self.send_timeout = job, worker, send_timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        dropped = False

        async def send_in_time(message: Any) -> None:
            # Past the timeout the rest is not sent: the job stops, the stream ends, and the server closes the
            # connection of a response that did not complete.
            nonlocal dropped
            if dropped:
                return
            with anyio.move_on_after(self.send_timeout) as waited:
                await send(message)
            if waited.cancelled_caught:
                dropped = True
                self.worker.cancel(self.job)
                logger.info("dropped a client that left its streamed answer unread for %g s (--body-timeout)",
                            self.send_timeout)

        try:
            await super().__call__(scope, receive, send_in_time)
        finally:
            self.worker.cancel(self.job)


# -- connections and logs ----------------------------------------------------------------------------------------------
def guarded_h11_protocol(max_connections: int, header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol (`uvicorn.Config(http=...)`) with two guards against idle and slow sockets:

    - a connection must send a complete request head within `header_timeout` seconds of opening, or of the end of
      its previous response (a kept-alive connection, or one still sending a body the server did not read); else it
      is closed without an answer;
    - at most `max_connections` are open: past that, a new connection closes the oldest one that is waiting for a
      request head, or, when every connection is busy with a request, is answered 503 and closed.

    The state is per server: each call makes a new class.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    hooks = ("connection_made", "data_received", "on_response_complete", "connection_lost")
    if not all(callable(getattr(H11Protocol, name, None)) for name in hooks) or \
            not {"cycle", "conn", "transport", "loop"} <= set(H11Protocol.__init__.__code__.co_names) | \
            set(H11Protocol.connection_made.__code__.co_names):
        logger.warning("this uvicorn's h11 protocol is not the one the connection guards were written for: serving "
                       "without --max-connections and --header-timeout (put a reverse proxy in front)")
        return H11Protocol
    waiting: dict[Any, None] = {}  # connections waiting for a request head, oldest first
    live: set[Any] = set()  # open connections that are not being closed
    message = (f"the server has {max_connections} connections open, each busy with a request (--max-connections): "
               "retry later")
    body = json.dumps({"error": {"message": message, "type": "server_busy", "param": None,
                                 "code": "too_many_connections"}}).encode()
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(live) >= max_connections:
                oldest = next(iter(waiting), None)
                if oldest is None:
                    logger.warning("refused a connection: %d open, each busy with a request (--max-connections)",
                                   len(live))
                    transport.write(busy)
                    transport.close()
                    return
                oldest._close("it was the oldest waiting for a request head, and --max-connections was reached")
            live.add(self)
            self._follow()

        def data_received(self, data: bytes) -> None:
            if self in live:
                super().data_received(data)
                self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            live.discard(self)
            super().connection_lost(exc)

        def _follow(self) -> None:
            """Start the head timer when the connection has no request in progress; stop it when one has begun."""
            idle = (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()
            if idle and self not in waiting:
                waiting[self] = None
                self._timer = self.loop.call_later(header_timeout, self._close,
                                                   f"it sent no complete request head within {header_timeout:g} s "
                                                   "(--header-timeout)")
            elif not idle and self in waiting:
                self._stop_waiting()

        def _stop_waiting(self) -> None:
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _close(self, why: str) -> None:
            self._stop_waiting()
            live.discard(self)
            if not self.transport.is_closing():
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self.transport.close()
            logger.info("closed a connection: %s", why)

    return GuardedH11Protocol


class QuietLogs(logging.Filter):
    """Lets through at most one record a second per message (its logger and format string); the next one let
    through says how many were dropped. Keeps a hostile client from filling the disk with log lines."""

    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            if len(self._last) > 1000:  # format strings are few; this only bounds the memory
                self._last.clear()
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.getMessage()} (and {dropped} more like it in the last seconds)"
            record.args = None
        return True


def _setup_logging() -> None:
    """Our log lines on stderr, one line each, rate-limited; uvicorn's and asyncio's rate-limited too."""
    quiet = QuietLogs()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("videopanda serve: %(levelname)s: %(message)s"))
    handler.addFilter(quiet)
    ours = logging.getLogger("videopanda.serve")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    for name in ("uvicorn.error", "asyncio"):
        logging.getLogger(name).addFilter(quiet)


def _raise_open_files_limit(needed: int) -> None:
    """Raise the soft limit of open files to `needed` if it is lower (the hard limit permitting), so that
    --max-connections sockets never make accept() fail."""
    try:
        import resource
    except ImportError:  # not Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        print(f"warning: --max-connections needs about {needed} open files and this process may open {soft} "
              "(ulimit -n): lower --max-connections", file=sys.stderr, flush=True)


# -- entry point -------------------------------------------------------------------------------------------------------
def run_server(args: ServeArgs) -> None:
    """Load the model, then serve until interrupted (the port opens only once the model is ready)."""
    import uvicorn
    from transformers.utils import logging as hf_logging

    from .. import inference

    hf_logging.disable_progress_bar()
    model, processor = inference.load(args.model, device=args.device, dtype=args.dtype, subfolder=args.subfolder,
                                        revision=args.revision)
    if args.frames is not None:
        processor.config.num_frames = args.frames
    app = create_app(model, processor, args)
    _raise_open_files_limit(args.max_connections + 256)  # the model's files, the log, the listening socket ...
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="on",
                            http=guarded_h11_protocol(args.max_connections, args.header_timeout),
                            timeout_keep_alive=min(5, args.header_timeout), timeout_graceful_shutdown=5)
    _setup_logging()
    where = f"http://{args.host}:{args.port}/v1"
    print(f"serving {args.model} at {where} (API key: {'required' if args.api_key else 'none'}; local files: "
          f"{args.media_dir or 'none, uploads only'})", file=sys.stderr, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: --host {args.host} opens the server to the network without an API key (--api-key)",
              file=sys.stderr, flush=True)
    uvicorn.Server(config).run()
