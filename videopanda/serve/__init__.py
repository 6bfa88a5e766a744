"""Serving: `videopanda serve` (an OpenAI-compatible chat completions API for videos) and `videopanda demo` (a
Gradio web page). See docs/serving.md.

This module holds only the two settings dataclasses, so that `videopanda --help` works without the optional
dependencies (fastapi, uvicorn, gradio: `pip install videopanda[serve]`); `api.py` and `demo.py` import them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..flags import check_generation

__all__ = ["DemoArgs", "ServeArgs"]

def _check_common(port: int, frames: int | None, max_tokens: int, dtype: str) -> None:
    """The model name is checked when the server or page starts (`weights.resolve_model`: the bundled model, a
    folder or a hub id), before anything loads."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {port}")
    check_generation(frames=frames, max_new_tokens=max_tokens, dtype=dtype, max_tokens_flag="--max-tokens")


@dataclass
class ServeArgs:
    """Settings of `videopanda serve`; each attribute docstring is its --help text."""

    model: str = "videopanda-default"
    """'videopanda-default' (bundled, CPU-friendly), a folder saved by videopanda, an official checkpoint folder, or a
    hub id of either (jh-yi/Video-Panda-7B); also the model id that /v1/models lists and requests must name"""
    subfolder: str | None = None
    """folder inside the model folder or hub repo (jh-yi/Video-Panda-7B: videopanda_fitu unless videopanda_prtr1)"""
    revision: str | None = None
    """hub branch, tag or commit of a hub id"""
    host: str = "127.0.0.1"
    """address to bind; 127.0.0.1 keeps the server private to this machine, 0.0.0.0 opens it to the network"""
    port: int = 8000
    """TCP port (0 picks a free one)"""
    api_key: str | None = None
    """require 'Authorization: Bearer KEY' on /v1 routes (default: $VIDEOPANDA_API_KEY if set, else no key)"""
    media_dir: str | None = None
    """folder whose files requests may name by path or file:// URL; without it only data: URL uploads are accepted"""
    max_upload_mb: float = 64.0
    """largest video or image a request may upload, in MiB (decoded size; the request body may be 4/3 of it plus
    1 MiB)"""
    max_queue: int = 16
    """requests that may wait for the model besides the batch being generated, counted from the moment their body
    starts to arrive (so at most this many bodies are held in memory); more are answered 503"""
    max_batch: int = 4
    """non-streaming requests with compatible settings generated together in one batch"""
    max_tokens: int = 512
    """largest max_tokens a request may ask for, and the value used when it asks for none"""
    max_connections: int = 256
    """open connections at most; past it a new connection closes the oldest one still waiting for a request head,
    or is answered 503 when every connection is busy with a request (the process's open-files limit is raised to
    fit)"""
    header_timeout: float = 10.0
    """seconds a connection may take to send a complete request head, from when it opens or its previous answer
    ends; then it is closed (idle keep-alive connections are closed after min(5, this) seconds)"""
    body_timeout: float = 60.0
    """seconds a request body may take to arrive in full (408 past it; a 64 MiB upload in 60 s needs about 12
    Mbit/s: raise it for slow links, or put a buffering reverse proxy in front); also how long a client may leave a
    streamed answer unread before it is dropped"""
    frames: int | None = None
    """frames sampled per video (default: the model's, 8)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1 ..."""
    dtype: str = "auto"
    """auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16"""
    compile: bool = False
    """static KV cache + compiled (CUDA-graph) decoding and compiled element-wise ops (GPU): each new batch size and
    prompt-length bucket compiles once before its first answer (about a minute for a 7B); later answers are several
    times faster (docs/speed.md)"""

    def __post_init__(self) -> None:
        _check_common(self.port, self.frames, self.max_tokens, self.dtype)
        if not self.max_upload_mb > 0:
            raise ValueError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if self.max_queue < 1 or self.max_batch < 1:
            raise ValueError(f"--max-queue and --max-batch must be >= 1, got {self.max_queue} and {self.max_batch}")
        if self.max_connections < 1:
            raise ValueError(f"--max-connections must be >= 1, got {self.max_connections}")
        for flag, value in (("--header-timeout", self.header_timeout), ("--body-timeout", self.body_timeout)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{flag} must be a number of seconds > 0, got {value}")
        if self.media_dir is not None and not os.path.isdir(self.media_dir):
            raise ValueError(f"--media-dir {self.media_dir}: no such folder")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key must not be empty")


@dataclass
class DemoArgs:
    """Settings of `videopanda demo`; each attribute docstring is its --help text."""

    model: str = "videopanda-default"
    """'videopanda-default' (bundled, CPU-friendly), a folder saved by videopanda, an official checkpoint folder, or a
    hub id of either (jh-yi/Video-Panda-7B)"""
    subfolder: str | None = None
    """folder inside the model folder or hub repo (jh-yi/Video-Panda-7B: videopanda_fitu unless videopanda_prtr1)"""
    revision: str | None = None
    """hub branch, tag or commit of a hub id"""
    host: str = "127.0.0.1"
    """address to bind; 0.0.0.0 opens the page to the network"""
    port: int = 7860
    """TCP port"""
    max_upload_mb: float = 64.0
    """largest video the page accepts, in MiB"""
    max_tokens: int = 128
    """longest answer in tokens"""
    frames: int | None = None
    """frames sampled per video (default: the model's, 8)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1 ..."""
    dtype: str = "auto"
    """auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16"""

    def __post_init__(self) -> None:
        _check_common(self.port, self.frames, self.max_tokens, self.dtype)
        if not self.max_upload_mb > 0:
            raise ValueError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
