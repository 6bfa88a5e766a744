"""`videopanda serve`: an OpenAI-compatible chat completions API about videos (FastAPI + uvicorn).

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (streaming or not), `GET /health`.
A message's content mixes text parts and one video, as vLLM accepts it:
`{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}`, or a path / file:// URL inside
`--media-dir`; `{"type": "image_url", ...}` is a 1-frame image. The video belongs to the first user message; earlier
user/assistant turns become the history.

Flow of a request: check the API key and the body size, validate the JSON, reserve a place in the queue (503 when
full), decode the video in a thread (uploads go to a temp file that is always deleted), tokenise, then hand a `_Job`
to the single `_Worker` thread. The worker owns the model: it batches queued non-streaming jobs with the same
settings into one left-padded `model.generate`, and runs a streaming job alone with a streamer that feeds the
response. A `StoppingCriteria` watches each job's cancel flag, so a client that goes away frees its slot at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..inference import decoding_options
from ..processing import VideoPandaProcessor
from ..video import VideoDecodeError, is_image_path, load_image, load_video
from . import ServeArgs

__all__ = ["APIError", "create_app", "run_server"]

logger = logging.getLogger(__name__)

MIB = 1 << 20
MAX_FRAME_PIXELS = 3840 * 2160  # 4K; larger frames are refused before decoding (8 of them are 200 MB of RGB)
_BODY_SLACK = MIB  # the JSON around the base64 upload: text, history, settings
_DISCONNECT_POLL_S = 0.25
_MIME_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
                "video/x-msvideo": ".avi", "image/gif": ".gif", "image/png": ".png", "image/jpeg": ".jpg",
                "image/webp": ".webp", "image/bmp": ".bmp"}


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style `{"error": {...}}` body with this HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers


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
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise APIError(400, f"file:// URLs must name a local file, not host {parsed.netloc!r}")
        raw = unquote(parsed.path)
    elif "://" in url:
        raise APIError(400, f"only data: URLs and files inside the media folder are accepted, not {url.split(':')[0]}"
                            ":// URLs (the server fetches nothing from the network)")
    else:
        raw = url
    root = os.path.realpath(media_dir)
    try:
        full = os.path.realpath(os.path.join(root, raw))  # an absolute `raw` replaces root, and is checked the same
    except (ValueError, OSError):
        raise APIError(400, f"{url!r} is not a valid path") from None
    if os.path.commonpath([root, full]) != root:
        raise APIError(403, f"{url}: outside the media folder", code="outside_media_dir")
    return full


def load_media(kind: str, url: str, *, media_dir: str | None, max_upload: int, num_frames: int,
               ) -> tuple[np.ndarray, bool]:
    """Frames ([T, H, W, 3] uint8) of the visual a request names, and whether it is an image."""
    if url.startswith("data:"):
        mime, data = decode_data_url(url, max_upload)
        fd, path = tempfile.mkstemp(prefix="videopanda-upload-", suffix=_MIME_SUFFIX.get(mime, ".bin"))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            del data
            return _decode(path, kind == "image", f"the uploaded {kind}", num_frames), kind == "image"
        finally:
            os.unlink(path)
    path = resolve_media_path(url, media_dir)
    image = kind == "image" or is_image_path(path)
    return _decode(path, image, url, num_frames), image


def _decode(path: str, image: bool, label: str, num_frames: int) -> np.ndarray:
    try:
        if image:
            return load_image(path, max_pixels=MAX_FRAME_PIXELS)
        return load_video(path, num_frames, max_pixels=MAX_FRAME_PIXELS)
    except VideoDecodeError as err:  # the message names our temp file; the reason alone is what the client needs
        raise APIError(400, f"{label}: {err.reason}", code="bad_media") from None


# -- the worker that owns the model ------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Job:
    """One admitted request, from admission to its last token."""

    stream: bool
    max_tokens: int
    temperature: float
    top_p: float
    ignore_eos: bool
    prompt: str = ""
    pixels: torch.Tensor | None = None  # [T, 4, S, S]
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

    `waiting` counts admitted jobs that are not generating yet (decoding, tokenising or queued); `admit` refuses a
    job when `waiting >= max_queue`. `lock` serialises the tokenizer, which request threads share with the worker.
    """

    def __init__(self, model: Any, processor: VideoPandaProcessor, *, max_queue: int, max_batch: int,
                 decoding: str = "auto") -> None:
        self.model, self.processor = model, processor
        self.max_queue, self.max_batch = max_queue, max_batch
        self.decoding = decoding  # inference.decoding_options: "compiled" with --compile
        self.lock = threading.Lock()
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

    def abandon(self) -> None:
        """An admitted job that failed before reaching the queue gives its place back."""
        with self._cond:
            self._waiting -= 1

    def enqueue(self, job: _Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    def status(self) -> dict[str, int]:
        with self._cond:
            return {"waiting": self._waiting, "running": self._running, **self.stats}

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
        with self.lock:
            inputs = proc(videos=[j.pixels for j in jobs], text=[j.prompt for j in jobs])
        width = inputs["input_ids"].shape[1]
        inputs = inputs.to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
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
            job.pixels = None  # 6 MB a video at 224 px; the job object may outlive its request a little
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
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="videopanda", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 503: "server_busy"}.get(err.status, err.kind)
        return _error_response(err.status, err.message, kind, err.code, err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _error_response(500, f"internal error: {type(err).__name__}: {err}", "server_error")

    def check_key(request: Request) -> None:
        if args.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), args.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def model_card() -> dict[str, Any]:
        return {"id": args.model, "object": "model", "created": created, "owned_by": "videopanda"}

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
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {args.model!r}",
                           code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_key(request)
        req = _parse_request(await _read_body(request, body_limit))
        if req.model is not None and req.model != args.model:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {args.model!r}",
                           code="model_not_found")
        conv = parse_conversation(req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens or args.max_tokens
        if max_tokens > args.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}, more than this server allows ({args.max_tokens}; "
                                "--max-tokens)")
        job = _Job(stream=req.stream, max_tokens=max_tokens, temperature=req.temperature or 0.0,
                   top_p=req.top_p or 1.0, ignore_eos=req.ignore_eos)
        try:
            worker.admit()
        except QueueFull:
            raise APIError(503, f"the server is busy ({args.max_queue} requests waiting; --max-queue): retry later",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        try:
            await run_in_threadpool(_prepare, job, conv, worker, num_frames, context,
                                    media_dir=args.media_dir, max_upload=max_upload)
        except BaseException:
            worker.abandon()
            raise
        if job.stream:
            job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        worker.enqueue(job)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if job.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _JobResponse(_sse(job, rid, now, args.model, include_usage), job)
        result = await _wait(request, job)
        if result is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": now, "model": args.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(result)})

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes: by its Content-Length, and while it arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "the Content-Length header is not a number")
        if int(declared) > limit:
            raise APIError(413, f"the request body ({int(declared) / MIB:.1f} MiB) is larger than this server "
                                f"accepts ({limit / MIB:.1f} MiB; --max-upload-mb)", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is larger than this server accepts ({limit / MIB:.1f} MiB; "
                                "--max-upload-mb)", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_request(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON ({err})") from None
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as err:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        raise APIError(422, f"the request does not match the chat completions schema: {where}") from None
    unsupported = [name for name, bad in (("n > 1", req.n != 1), ("stop", bool(req.stop)), ("tools", bool(req.tools)),
                                          ("logprobs", bool(req.logprobs))) if bad]
    if unsupported:
        raise APIError(400, f"not supported by this server: {', '.join(unsupported)}")
    return req


def _prepare(job: _Job, conv: Conversation, worker: _Worker, num_frames: int, context: int | None, *,
             media_dir: str | None, max_upload: int) -> None:
    """Decode the visual, build the prompt and count its tokens (in a request thread, not the worker)."""
    frames, image = load_media(conv.kind, conv.url, media_dir=media_dir, max_upload=max_upload, num_frames=num_frames)
    proc = worker.processor
    job.pixels = proc.preprocess(frames, image=image)
    del frames
    with worker.lock:
        job.prompt = proc.build_prompt(conv.question, conv.history)
        job.prompt_tokens = len(proc.tokenize(job.prompt, [proc.count_tokens(job.pixels)]))
    if context is not None and job.prompt_tokens + job.max_tokens > context:
        raise APIError(400, f"the prompt takes {job.prompt_tokens} tokens (video included) and the answer up to "
                            f"{job.max_tokens}, more than the model's context of {context} tokens: shorten the "
                            "conversation or max_tokens", code="context_length_exceeded")


async def _wait(request: Request, job: _Job) -> _Result | None:
    """The job's result; None (and the job cancelled) if the client disconnects first."""
    future = asyncio.wrap_future(job.result)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=_DISCONNECT_POLL_S)
            if done:
                return future.result()
            if await request.is_disconnected():
                job.cancelled.set()
                return None
    finally:
        job.cancelled.set()  # no-op once finished; stops generation if this handler is cancelled


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
    """A server-sent-events response that cancels its job however it ends (done, client gone, error)."""

    def __init__(self, content: AsyncIterator[str], job: _Job) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancelled.set()


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
    where = f"http://{args.host}:{args.port}/v1"
    print(f"serving {args.model} at {where} (API key: {'required' if args.api_key else 'none'}; local files: "
          f"{args.media_dir or 'none, uploads only'})", file=sys.stderr, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: --host {args.host} opens the server to the network without an API key (--api-key)",
              file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
