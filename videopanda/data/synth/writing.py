"""Files: clips as mp4 at a quality that keeps the object colours through yuv420p, and JSON written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_video"]


def _pick_codec() -> str:
    """libx264 where the PyAV build has it (smaller, better colour), else the always-built-in mpeg4."""
    import av  # lazily: rendering scenes needs no PyAV (e.g. the in-memory training stream)

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: int) -> None:
    """Writes frames as an mp4 at high quality so the object colours survive yuv420p encoding.

    The file appears atomically (written next to `path`, then renamed), so an interrupted run never leaves a
    truncated video that a resumed run would mistake for a finished one.

    Args:
        frames: [T, H, W, 3] uint8 RGB; H and W must be even (yuv420p).
        path: Destination .mp4 path; its parent must exist.
        fps: Frame rate.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frames height and width must be even for yuv420p, got {frames.shape[1:3]}")
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    import av

    codec = _pick_codec()
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1  # parallelism comes from generate's workers
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.bit_rate = 8 * frames.shape[1] * frames.shape[2] * fps  # ~1 bit/pixel: near-lossless for mpeg4
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _video_ok(path: Path, num_frames: int, size: int) -> bool:
    """True if `path` is a readable video with the expected frame size and count (for resuming)."""
    import av

    if not path.is_file():
        return False
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return (stream.width, stream.height, stream.frames) == (size, size, num_frames)
    except (av.FFmpegError, IndexError):  # unreadable or no video stream: render it again
        return False


def _write_json(path: Path, obj: Any) -> None:
    """Atomic, deterministic JSON write (fixed key order from the data, no timestamps)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
