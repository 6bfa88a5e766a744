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

Modules: `schema` (the request and its parsing), `budget` (text limits), `media` (uploads and files), `worker` (the
model's thread and queue), `streaming` (server-sent events), `connections` (socket guards), `logs`; this module holds
the app, the flow of a request through it, and `run_server`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..engine import Engine
from ..processing import VIDEO_TOKEN, VideoPandaProcessor
from ..weights import ModelSource
from . import ServeArgs
from .budget import TextBudget
from .connections import _raise_open_files_limit, guarded_h11_protocol
from .errors import APIError, _ClientGone, _error_response, _short, _short_plain
from .logs import _setup_logging
from .media import MIB, Cancelled, UploadFolders, load_media
from .schema import Conversation, _parse_request, parse_conversation
from .streaming import _JobResponse, _sse, _usage
from .worker import QueueFull, _Job, _Result, _Worker

__all__ = ["create_app", "run_server"]

logger = logging.getLogger(__name__)

_BODY_SLACK = MIB  # the JSON around the base64 upload: text, history, settings
_DISCONNECT_POLL_S = 0.25


def create_app(engine: Engine, args: ServeArgs) -> FastAPI:
    """The FastAPI app around a loaded model; its worker thread starts now and stops with the app's lifespan."""
    processor = engine.processor
    worker = _Worker(engine, processor, max_queue=args.max_queue, max_batch=args.max_batch,
                     decoding="compiled" if args.compile else "auto")
    max_upload = int(args.max_upload_mb * MIB)
    body_limit = (max_upload + 2) // 3 * 4 + _BODY_SLACK
    num_frames = args.frames or processor.config.num_frames
    context = getattr(engine.model.config.text_config, "max_position_embeddings", None)
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


def run_server(args: ServeArgs, source: ModelSource | None = None) -> None:
    """Load the model, then serve until interrupted (the port opens only once the model is ready)."""
    import uvicorn
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, subfolder=args.subfolder,
                         revision=args.revision, source=source)
    if args.frames is not None:
        engine.processor.config.num_frames = args.frames
    app = create_app(engine, args)
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
