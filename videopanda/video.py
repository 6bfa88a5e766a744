"""Decode videos and images into RGB frames, and choose which frames to keep.

This is the first step of the data flow: file -> frames [T, H, W, 3] uint8. Resizing, padding and normalisation
happen later (``videopanda.transforms``), and so does padding a short video to the model's frame count.

Frame sampling follows the reference (jh-yi/Video-Panda 995a737, ``model/dataloader.py::_get_rawvideo_dec``):
candidates at about 1 fps, then 8 of them picked evenly; see ``sample_indices``.

Decoding uses PyAV instead of the reference's decord, in two steps:

1. Index: demux the video packets once (no decoding) to learn the exact frame count and each frame's timestamp.
   This is what decord does when it opens a file, and it works where the container's own frame count is 0 or
   wrong (webm, mkv, gif) and for variable frame rates.
2. Seek: for each sampled frame, seek to the keyframe before it and decode forward to it; frames in the same
   group of pictures are reached by decoding on, without a new seek.

If the index cannot be built or a seek does not land where the index says (broken timestamps, truncated files),
we fall back to decoding the whole stream twice: once to count the decodable frames, once to keep the sampled ones.
That is slow but needs nothing from the container except packets.

Deliberate deviations from the reference:
- ``round(fps) == 0`` (fps < 0.5) made the reference's candidate range step by 0; we use a stride of at least 1.
- Rotation metadata (phone videos) is applied, so frames come out the way players show them; decord ignores it.
- Bad files raise ``VideoDecodeError`` with one clear message instead of a decoder traceback.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import av
    from av.video.stream import VideoStream
except ImportError:  # decoding needs PyAV; frame sampling and image loading do not
    av = None

__all__ = [
    "IMAGE_SUFFIXES",
    "SAMPLINGS",
    "ImageDecodeError",
    "VideoDecodeError",
    "is_image_path",
    "load_image",
    "load_video",
    "sample_indices",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SAMPLINGS = ("reference", "uniform")
DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_MAX_ASPECT = 16.0
_FALLBACK_FPS = 1.0  # Used only when the stream has no frame rate: stride 1, so "reference" becomes uniform.


class VideoDecodeError(ValueError):
    """A video (or image) file could not be turned into frames.

    The message is always ``f"{path}: {reason}"`` so that a dataset with thousands of files says which one failed.

    Attributes:
        path: The file, as given.
        reason: What is wrong with it, in words.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Keep the two-argument constructor picklable: DataLoader workers send errors back to the main process.
        return type(self), (self.path, self.reason)


class ImageDecodeError(VideoDecodeError):
    """An image file could not be decoded; a ``VideoDecodeError`` so one ``except`` covers both."""


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a still image, by its suffix (.gif counts as a video: TGIF clips are GIFs)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_SUFFIXES


def load_visual(path: str | os.PathLike, num_frames: int = 8) -> np.ndarray:
    """Frames of a video file ([t, H, W, 3]) or of an image file ([1, H, W, 3]), chosen by the file's suffix."""
    return load_image(path) if is_image_path(path) else load_video(path, num_frames)


def sample_indices(num_total: int, fps: float, num_frames: int, *, sampling: str = "reference") -> list[int]:
    """Choose which frames of a video to keep.

    ``"reference"`` (the reference's policy, used for its training and eval): candidates one second apart,
    ``0, s, 2s, ...`` with ``s = round(fps)``. With more candidates than ``num_frames``, pick ``num_frames`` of them
    evenly (first and last included). With fewer, take ``num_frames`` positions ``(num_total - 1) // (num_frames - 1)``
    apart from frame 0, so short clips are sampled densely instead of at 1 fps. A video with fewer than
    ``num_frames`` frames gives all of them.

    ``"uniform"``: ``num_frames`` positions spread evenly over the whole video, first and last frame included
    (all frames if there are fewer).

    Args:
        num_total: Number of frames in the video (>= 1).
        fps: Average frame rate (> 0); only ``"reference"`` uses it.
        num_frames: How many frames to keep (>= 1).
        sampling: "reference" or "uniform".

    Returns:
        Sorted, distinct frame indices; ``min(num_frames, num_total)`` of them.
    """
    if num_total < 1:
        raise ValueError(f"num_total must be >= 1, got {num_total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if num_total <= num_frames and sampling == "uniform":
        return list(range(num_total))
    if sampling == "uniform":
        return np.linspace(0, num_total - 1, num_frames).round().astype(int).tolist()
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    # Reference bug fixed: round(fps) == 0 for fps < 0.5 made range() step by 0 and crash.
    stride = max(1, round(fps))
    candidates = range(0, num_total, stride)
    if len(candidates) > num_frames:
        picks = np.linspace(0, len(candidates) - 1, num_frames).astype(int)
        return [candidates[i] for i in picks]
    if len(candidates) == num_frames:
        return list(candidates)
    if num_total < num_frames:
        return list(range(num_total))
    # Here num_frames >= 2: with num_frames == 1 there is always at least the one candidate, frame 0.
    stride = max(1, (num_total - 1) // (num_frames - 1))
    return [i * stride for i in range(num_frames)]


def load_video(
    path: str | os.PathLike,
    num_frames: int = 8,
    *,
    sampling: str = "reference",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> np.ndarray:
    """Decode a video file and return its sampled frames.

    Args:
        path: Any container FFmpeg reads (mp4, mkv, webm, avi, mov, gif, ...).
        num_frames: How many frames to sample (>= 1).
        sampling: "reference" (about 1 fps, as the reference) or "uniform" (evenly over the whole video).
        max_pixels: Largest accepted frame area, checked before decoding so a hostile file cannot exhaust memory.
        max_aspect: Largest accepted ``max(w, h) / min(w, h)``; the model's token grid breaks down past 16:1.

    Returns:
        RGB frames [T, H, W, 3] uint8 in time order, T <= num_frames. T < num_frames only when the video has fewer
        frames; padding to num_frames is the processor's job, as in the reference.

    Raises:
        VideoDecodeError: The file is missing, empty, not a video, has no video stream, has no decodable frame, or
            its frames are too large or too elongated.
        ValueError: ``num_frames`` or ``sampling`` is invalid.
    """
    return _read_video(path, num_frames, sampling, max_pixels, max_aspect, method="auto")


def load_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> np.ndarray:
    """Decode a still image as a one-frame clip.

    EXIF orientation is applied (phone photos), and any mode (palette, greyscale, RGBA) becomes RGB; the alpha
    channel is dropped, as the reference's ``convert("RGB")`` does.

    Returns:
        RGB frames [1, H, W, 3] uint8; the model treats T == 1 as an image.

    Raises:
        ImageDecodeError: The file is missing, empty, not an image, truncated, or too large or too elongated.
    """
    path = _check_file(path, ImageDecodeError)
    try:
        with Image.open(path) as image:
            _check_size(path, image.width, image.height, max_pixels, max_aspect, ImageDecodeError)
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image file or an unsupported image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL reports truncated or corrupt data as OSError, and some broken chunks as SyntaxError or ValueError.
        if isinstance(err, ImageDecodeError):
            raise
        raise ImageDecodeError(path, f"could not decode the image ({err})") from None
    return rgb[None]  # [1, H, W, 3]


# ---------------------------------------------------------------------------------------------------------------
# Checks shared by videos and images
# ---------------------------------------------------------------------------------------------------------------


def _check_file(path: str | os.PathLike, error: type[VideoDecodeError]) -> str:
    """Turn the common "wrong path" mistakes into one-line errors before any decoder sees the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise error(path, "no such file")
    if os.path.isdir(path):
        raise error(path, "is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise error(path, "file is empty (0 bytes)")
    return path


def _check_size(
    path: str,
    width: int,
    height: int,
    max_pixels: int,
    max_aspect: float,
    error: type[VideoDecodeError] = VideoDecodeError,
) -> None:
    """Refuse frames that would exhaust memory or that the anypixel resize cannot represent."""
    if width < 1 or height < 1:
        raise error(path, f"frame size {width}x{height} is empty")
    if width * height > max_pixels or max(width, height) / min(width, height) > max_aspect:
        raise error(
            path,
            f"frame size {width}x{height} is outside the supported range "
            f"(at most {max_pixels} pixels and an aspect ratio of {max_aspect:g}:1)",
        )


# ---------------------------------------------------------------------------------------------------------------
# Video decoding
# ---------------------------------------------------------------------------------------------------------------


class _SeekFailed(Exception):
    """The seek path disagrees with the demuxed index; the caller falls back to decoding everything."""


@dataclass(frozen=True)
class _Index:
    """Where each frame of the stream is, in presentation order (stream time_base units)."""

    pts: list[int]  # one per frame, sorted
    keyframe_pts: list[int]  # sorted; each is a valid place to start decoding


def _read_video(
    path: str | os.PathLike,
    num_frames: int,
    sampling: str,
    max_pixels: int,
    max_aspect: float,
    method: str = "auto",
) -> np.ndarray:
    """``load_video`` with a choice of decoding path: "auto" (seek, else decode all), "seek" or "all".

    "seek" raises instead of falling back, so that tests can prove which path produced the frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if method not in ("auto", "seek", "all"):
        raise ValueError(f"method must be 'auto', 'seek' or 'all', got {method!r}")
    path = _check_file(path, VideoDecodeError)
    if method != "all":
        with _open(path) as container:
            stream = _video_stream(container, path, max_pixels, max_aspect)
            try:
                return _read_by_seeking(container, stream, path, num_frames, sampling, max_pixels, max_aspect)
            except _SeekFailed as err:
                if method == "seek":
                    raise VideoDecodeError(path, f"seek-based decoding failed ({err})") from None
    return _read_all(path, num_frames, sampling, max_pixels, max_aspect)


def _open(path: str) -> av.container.InputContainer:
    if av is None:
        raise VideoDecodeError(path, "decoding videos needs PyAV: pip install av")
    try:
        return av.open(path, mode="r")
    except av.FFmpegError as err:
        reason = f"not a video file or could not be opened; is it damaged or truncated? (FFmpeg: {_ffmpeg_reason(err)})"
        raise VideoDecodeError(path, reason) from None


def _ffmpeg_reason(err: av.FFmpegError) -> str:
    """FFmpeg's own words (e.g. "Invalid data found when processing input"), without errno and path."""
    return getattr(err, "strerror", None) or str(err)


def _video_stream(
    container: av.container.InputContainer,
    path: str,
    max_pixels: int,
    max_aspect: float,
    *,
    thread_type: str = "AUTO",
) -> VideoStream:
    """The first video stream, with its declared size checked and multithreaded decoding set up.

    ``thread_type="AUTO"`` lets FFmpeg decode several frames at once. Frame threading reports a corrupt packet
    only when the decoder is flushed, losing the good frames still in flight, so the decode-everything fallback
    (which exists for damaged files) asks for "SLICE" threading instead.
    """
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoDecodeError(path, f"no video stream (the file has: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoDecodeError(path, "the video stream cannot be decoded (unknown codec, or no decoder in this FFmpeg)")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width and height:  # 0 means "unknown until decoded"; the first decoded frame is checked instead.
        _check_size(path, width, height, max_pixels, max_aspect)
    stream.thread_type = thread_type
    return stream


def _frame_rate(stream: VideoStream) -> float:
    """Average frames per second, as decord's ``get_avg_fps`` reports it; 1.0 when the stream has none."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else _FALLBACK_FPS


def _build_index(container: av.container.InputContainer, stream: VideoStream) -> _Index:
    """Demux (not decode) every video packet to learn the frame count and timestamps.

    Raises:
        _SeekFailed: The packets do not describe one frame each with a unique timestamp.
    """
    pts, keyframe_pts = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:  # flush packet; frames cut by an edit list
                continue
            if packet.pts is None:
                raise _SeekFailed("a packet has no timestamp")
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframe_pts.append(packet.pts)
    except av.FFmpegError as err:
        raise _SeekFailed(f"demuxing failed: {_ffmpeg_reason(err)}") from None
    pts.sort()
    keyframe_pts.sort()
    if not pts or not keyframe_pts:
        raise _SeekFailed("no packets" if not pts else "no keyframe")
    if len(set(pts)) != len(pts):
        raise _SeekFailed("duplicate timestamps")
    return _Index(pts=pts, keyframe_pts=keyframe_pts)


def _read_by_seeking(
    container: av.container.InputContainer,
    stream: VideoStream,
    path: str,
    num_frames: int,
    sampling: str,
    max_pixels: int,
    max_aspect: float,
) -> np.ndarray:
    """Decode only the groups of pictures that hold sampled frames (see the module docstring)."""
    index = _build_index(container, stream)
    targets = sample_indices(len(index.pts), _frame_rate(stream), num_frames, sampling=sampling)
    frames: list[np.ndarray] = []
    decoded: Iterator[av.VideoFrame] = iter(())
    position: int | None = None  # pts of the last decoded frame; targets are sorted, so always < target
    for target in (index.pts[i] for i in targets):
        keyframe = index.keyframe_pts[max(0, bisect.bisect_right(index.keyframe_pts, target) - 1)]
        if position is None or keyframe > position:
            # Seek only when a keyframe lies between where we are and the target; otherwise decoding on is cheaper.
            decoded = _seek(container, stream, target)
        frame = _decode_until(decoded, target)
        position = frame.pts
        frames.append(_to_rgb(frame, frames, path, max_pixels, max_aspect))
    return np.stack(frames)


def _seek(container: av.container.InputContainer, stream: VideoStream, target: int) -> Iterator[av.VideoFrame]:
    """Seek to the keyframe at or before ``target`` and return a fresh frame iterator from there."""
    try:
        container.seek(target, backward=True, any_frame=False, stream=stream)
    except av.FFmpegError as err:
        raise _SeekFailed(f"seek to pts {target} failed: {_ffmpeg_reason(err)}") from None
    return _decodable_frames(container, stream, strict=True)


def _decode_until(decoded: Iterator[av.VideoFrame], target: int) -> av.VideoFrame:
    """Decode forward to the frame whose pts is ``target``; anything else means the index was wrong."""
    for frame in decoded:
        if frame.pts is None:
            raise _SeekFailed("a decoded frame has no timestamp")
        if frame.pts == target:
            return frame
        if frame.pts > target:
            raise _SeekFailed(f"expected a frame at pts {target}, decoding reached pts {frame.pts}")
    raise _SeekFailed(f"the stream ended before pts {target}")


def _decodable_frames(
    container: av.container.InputContainer, stream: VideoStream, *, strict: bool
) -> Iterator[av.VideoFrame]:
    """Decoded frames of ``stream`` in presentation order.

    With ``strict`` a decoding error raises ``_SeekFailed``. Without it an undecodable packet is skipped and a
    demuxing error ends the stream: a truncated or damaged file still yields every frame that can be decoded.
    """
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.FFmpegError as err:
                if strict:
                    raise _SeekFailed(f"decoding failed: {_ffmpeg_reason(err)}") from None
    except av.FFmpegError as err:
        if strict:
            raise _SeekFailed(f"demuxing failed: {_ffmpeg_reason(err)}") from None


def _read_all(path: str, num_frames: int, sampling: str, max_pixels: int, max_aspect: float) -> np.ndarray:
    """Decode the whole stream twice: count the decodable frames, then keep the sampled ones.

    Two passes keep memory at ``num_frames`` frames whatever the video's length.
    """
    with _open(path) as container:
        stream = _video_stream(container, path, max_pixels, max_aspect, thread_type="SLICE")
        fps = _frame_rate(stream)
        num_total = sum(1 for _ in _decodable_frames(container, stream, strict=False))
    if num_total == 0:
        raise VideoDecodeError(path, "no frame could be decoded (the file may be truncated or corrupt)")
    wanted = sample_indices(num_total, fps, num_frames, sampling=sampling)
    frames: list[np.ndarray] = []
    with _open(path) as container:
        stream = _video_stream(container, path, max_pixels, max_aspect, thread_type="SLICE")
        for i, frame in enumerate(_decodable_frames(container, stream, strict=False)):
            if i == wanted[len(frames)]:
                frames.append(_to_rgb(frame, frames, path, max_pixels, max_aspect))
                if len(frames) == len(wanted):
                    break
    if len(frames) != len(wanted):  # The second pass decoded fewer frames than the first: not deterministic.
        raise VideoDecodeError(path, f"decoding is not repeatable ({num_total} frames, then fewer)")
    return np.stack(frames)


def _to_rgb(
    frame: av.VideoFrame, previous: list[np.ndarray], path: str, max_pixels: int, max_aspect: float
) -> np.ndarray:
    """RGB array [H, W, 3] uint8 of ``frame``, the same size as the frames already kept.

    The first frame's size is checked (the stream header may not have declared it); later frames are scaled to it,
    so a mid-stream resolution change cannot break ``np.stack``.
    """
    if not previous:
        _check_size(path, frame.width, frame.height, max_pixels, max_aspect)
        rgb = frame.to_ndarray(format="rgb24")  # [H, W, 3]
    else:
        height, width = previous[0].shape[:2]
        if frame.rotation % 180:
            width, height = height, width
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height)  # [H, W, 3]
    quarter_turns = round(frame.rotation / 90) % 4  # counter-clockwise, as np.rot90 on an image
    return np.rot90(rgb, quarter_turns) if quarter_turns else rgb
