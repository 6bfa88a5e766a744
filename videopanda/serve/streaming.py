"""Answers streamed as server-sent events, in OpenAI's chunk format, and the usage block of every answer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

from .worker import _Job, _Result, _Worker

logger = logging.getLogger(__name__)


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

