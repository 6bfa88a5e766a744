"""The one thread that owns the model, and the bounded queue in front of it.

Queued non-streaming jobs with the same settings share one left-padded `Engine.generate`; a streaming job runs alone
with a streamer that feeds its response. A job whose client has gone leaves the queue, or stops at its next token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..engine import Engine
from ..processing import VideoPandaProcessor

__all__ = ["QueueFull"]

logger = logging.getLogger(__name__)


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

    def __init__(self, engine: Engine, processor: VideoPandaProcessor, *, max_queue: int, max_batch: int,
                 decoding: str = "auto") -> None:
        self.engine, self.processor = engine, processor
        self.max_queue, self.max_batch = max_queue, max_batch
        self.decoding = decoding  # Engine.generate's mode: "compiled" with --compile
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._waiting = 0
        self._running = 0
        self._closed = False
        self.stats = {"requests": 0, "batches": 0, "completion_tokens": 0, "rejected": 0, "cancelled": 0}
        eos = engine.model.generation_config.eos_token_id
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
        proc = self.processor
        rows = [j.input_ids if j.input_ids is not None else proc.tokenize(j.prompt, [proc.count_tokens(j.pixels)])
                for j in jobs]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), proc.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding, as generation needs
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row):] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "pixel_values": torch.stack([j.pixels for j in jobs])}  # the engine moves them to its device
        first = jobs[0]
        max_new = max(j.max_tokens for j in jobs)
        streamer = _JobStreamer(proc.tokenizer, first) if first.stream else None
        out = self.engine.generate(inputs, max_new_tokens=max_new, decoding=self.decoding,
                                   temperature=first.temperature, top_p=first.top_p,
                                   min_new_tokens=max_new if first.ignore_eos else 0,  # as vLLM's ignore_eos
                                   streamer=streamer, pad_token_id=proc.tokenizer.pad_token_id,
                                   stopping_criteria=StoppingCriteriaList([_CancelCheck(jobs)]))
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

