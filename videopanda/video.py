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

Opening files safely (the server decodes what clients upload, so every file is treated as hostile):

- The file is opened by Python and handed to FFmpeg as a nameless byte stream: FFmpeg sees no path, so nothing in the
  file can be resolved relative to it, and only a regular file is opened (no FIFO, device or directory).
- Only the demuxers in ``ALLOWED_DEMUXERS`` may read it (FFmpeg's ``format_whitelist``, checked after probing and
  before the demuxer reads its header, then again by name). They are self-contained media containers and single
  images: playlists and other files that name further files or URLs (concat lists, HLS/m3u8, DASH, SDP, tee,
  ``image2`` file patterns, ffmetadata, subtitles and other text formats) are refused with "format not allowed".
- FFmpeg may open no file or URL of its own (``protocol_whitelist`` matches no protocol) and QuickTime data
  references to other files stay off (``enable_drefs=0``). Images (``load_image``) are read by Pillow, limited to
  ``ALLOWED_IMAGE_FORMATS``.
- The frame size is checked before decoding, from the stream header, and FFmpeg's own ``max_pixels`` makes every
  decoder (the ones that probe the streams while the file is opened, too) refuse to allocate a larger frame.
- Decoding one video is limited to ``max_decoded_frames`` decoded frames and ``time_budget_s`` seconds (opening,
  indexing, seeking and both passes of the fallback together); past either, ``VideoDecodeError`` is raised.

Deliberate deviations from the reference:
- ``round(fps) == 0`` (fps < 0.5) made the reference's candidate range step by 0; we use a stride of at least 1.
- Rotation metadata (phone videos) is applied, so frames come out the way players show them; decord ignores it.
- Bad files raise ``VideoDecodeError`` with one clear message instead of a decoder traceback.
"""

from __future__ import annotations

import array
import contextlib
import math
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import av
    from av.video.stream import VideoStream
except ImportError:  # decoding needs PyAV; frame sampling and image loading do not
    av = None

__all__ = [
    "ALLOWED_DEMUXERS",
    "ALLOWED_IMAGE_FORMATS",
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_DECODED_FRAMES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_TIME_BUDGET_S",
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
# Sampling 8 frames decodes at most 8 groups of pictures (x264's default keyframe interval is 250 frames), so 10,000
# leaves room for long intervals and for the decode-everything fallback on clips of a few minutes.
DEFAULT_MAX_DECODED_FRAMES = 10_000
DEFAULT_TIME_BUDGET_S = 60.0

# FFmpeg demuxers that may read a file. FFmpeg matches any one name of a demuxer that has several ("mov" for
# "mov,mp4,m4a,3gp,3g2,mj2", "matroska" for "matroska,webm"). Each reads the one stream it is given and nothing else.
ALLOWED_DEMUXERS = frozenset(
    {
        "mov",  # .mp4 .mov .m4v .m4a .3gp (data references to other files are switched off)
        "matroska",  # .mkv .webm
        "avi",
        "gif",
        "mpegts",  # .ts .m2ts
        "flv",
        "ogg",  # .ogv
        "wav",  # audio only; allowed so that such a file is refused as "no video stream", which says what is wrong
        # A single picture, read from the stream itself (never image2, whose file name patterns open other files).
        "png_pipe",
        "jpeg_pipe",
        "webp_pipe",
        "bmp_pipe",
    }
)
ALLOWED_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # Pillow's names; JPEG covers MPO (phone photos)
_ALLOWED_DESCRIPTION = (
    "only one self-contained media file is read: mp4/mov, mkv/webm, avi, gif, mpeg-ts, flv or ogg video, "
    "or a png/jpeg/webp/bmp picture"
)
_CONTAINER_OPTIONS = {
    "format_whitelist": ",".join(sorted(ALLOWED_DEMUXERS)),
    "protocol_whitelist": "none",  # matches no protocol: FFmpeg opens no file or URL by itself
    "enable_drefs": "0",  # QuickTime external data references (off by default; kept off whatever the default)
}
# First bytes of formats that name other files, to say what a refused file is; the refusal itself is FFmpeg's.
_REFUSED_SIGNATURES = (
    (b"ffconcat", "an FFmpeg concat playlist"),
    (b"#EXTM3U", "an M3U/HLS playlist"),
    (b"<MPD", "a DASH manifest"),
    (b"<?xml", "an XML document (a DASH manifest?)"),
    (b";FFMETADATA", "an FFmpeg metadata file"),
    (b"v=0", "an SDP session description"),
    (b"WEBVTT", "a WebVTT subtitle file"),
    (b"[Script Info]", "an ASS/SSA subtitle file"),
)
_IO_BUFFER_SIZE = 1 << 16
_MAX_INDEXED_PACKETS = 10_000_000  # 46 hours at 60 fps; keeps the index of a hostile file at most 160 MB
_FFMPEG_INT_MAX = 2**31 - 1  # the largest value FFmpeg's max_pixels option takes
_clock = time.monotonic  # the time budget's clock (tests replace it)
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
    max_decoded_frames: int = DEFAULT_MAX_DECODED_FRAMES,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
) -> np.ndarray:
    """Decode a video file and return its sampled frames.

    Args:
        path: A local file in one of the ``ALLOWED_DEMUXERS`` formats (mp4, mov, mkv, webm, avi, gif, ...).
        num_frames: How many frames to sample (>= 1).
        sampling: "reference" (about 1 fps, as the reference) or "uniform" (evenly over the whole video).
        max_pixels: Largest accepted frame area, checked before decoding so a hostile file cannot exhaust memory.
        max_aspect: Largest accepted ``max(w, h) / min(w, h)``; the model's token grid breaks down past 16:1.
        max_decoded_frames: Most frames the decoder may produce for this video (>= 1). Seeking decodes only the
            groups of pictures that hold sampled frames; a video with few keyframes, or one that needs the
            decode-everything fallback, costs more.
        time_budget_s: Most wall-clock seconds for this video (> 0), from opening the file to the last frame.

    Returns:
        RGB frames [T, H, W, 3] uint8 in time order, T <= num_frames. T < num_frames only when the video has fewer
        frames; padding to num_frames is the processor's job, as in the reference.

    Raises:
        VideoDecodeError: The file is missing, empty, not a regular file, not in an allowed format, not a video,
            has no video stream, has no decodable frame, its frames are too large or too elongated, or decoding it
            would exceed ``max_decoded_frames`` or ``time_budget_s``.
        ValueError: ``num_frames``, ``sampling``, ``max_decoded_frames`` or ``time_budget_s`` is invalid.
    """
    return _read_video(
        path,
        num_frames,
        sampling,
        max_pixels,
        max_aspect,
        method="auto",
        max_decoded_frames=max_decoded_frames,
        time_budget_s=time_budget_s,
    )


def load_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> np.ndarray:
    """Decode a still image (one of ``ALLOWED_IMAGE_FORMATS``, whatever its suffix) as a one-frame clip.

    EXIF orientation is applied (phone photos), and any mode (palette, greyscale, RGBA) becomes RGB; the alpha
    channel is dropped, as the reference's ``convert("RGB")`` does. The size is checked from the header, before the
    pixels are decoded.

    Returns:
        RGB frames [1, H, W, 3] uint8; the model treats T == 1 as an image.

    Raises:
        ImageDecodeError: The file is missing, empty, not a regular file, not an image of an allowed format,
            truncated, or too large or too elongated.
    """
    path = _check_file(path, ImageDecodeError)
    try:
        with _open_regular_file(path, ImageDecodeError) as raw, Image.open(raw, formats=ALLOWED_IMAGE_FORMATS) as image:
            _check_size(path, image.width, image.height, max_pixels, max_aspect, ImageDecodeError)
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except UnidentifiedImageError:
        reason = f"not an image file, or not an allowed image format ({', '.join(ALLOWED_IMAGE_FORMATS)})"
        raise ImageDecodeError(path, reason) from None
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
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(path, "no such file") from None
    except OSError as err:
        raise error(path, f"cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(path, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise error(path, "is not a regular file (a pipe, socket or device)")
    if info.st_size == 0:
        raise error(path, "file is empty (0 bytes)")
    return path


def _open_regular_file(path: str, error: type[VideoDecodeError]) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file even if it was swapped since ``_check_file``.

    ``O_NONBLOCK`` keeps a FIFO put in its place from blocking the open; it changes nothing for a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise error(path, f"cannot be read ({err.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(path, "is not a regular file (a pipe, socket or device)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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

    pts: np.ndarray  # int64, one per frame, sorted
    keyframe_pts: np.ndarray  # int64, sorted; each is a valid place to start decoding


class _Budget:
    """What decoding one video may still cost: frames out of the decoder, and wall-clock time."""

    def __init__(self, path: str, max_frames: int, seconds: float) -> None:
        self.path, self.max_frames, self.seconds = path, max_frames, seconds
        self.frames = 0
        self.deadline = _clock() + seconds

    def expired(self) -> bool:
        return _clock() > self.deadline

    def remaining(self) -> float:
        return max(0.0, self.deadline - _clock())

    def check_time(self) -> None:
        if self.expired():
            raise VideoDecodeError(self.path, f"decoding took longer than the time budget ({self.seconds:g} s)")

    def count_frame(self) -> None:
        self.frames += 1
        if self.frames > self.max_frames:
            raise VideoDecodeError(
                self.path,
                f"sampling needs more than the budget of {self.max_frames} decoded frames "
                "(the video is too long or has too few keyframes)",
            )
        self.check_time()


class _BudgetedFile:
    """The open file as FFmpeg reads it: no name, so FFmpeg knows no path; end of file once the time is up."""

    def __init__(self, raw: BinaryIO, budget: _Budget) -> None:
        self._raw, self._budget = raw, budget

    def read(self, size: int) -> bytes:
        return b"" if self._budget.expired() else self._raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _read_video(
    path: str | os.PathLike,
    num_frames: int,
    sampling: str,
    max_pixels: int,
    max_aspect: float,
    method: str = "auto",
    *,
    max_decoded_frames: int = DEFAULT_MAX_DECODED_FRAMES,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
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
    if not (isinstance(max_decoded_frames, int) and max_decoded_frames >= 1):
        raise ValueError(f"max_decoded_frames must be an integer >= 1, got {max_decoded_frames!r}")
    if not time_budget_s > 0:  # also refuses NaN; math.inf means no time limit
        raise ValueError(f"time_budget_s must be > 0, got {time_budget_s!r}")
    path = _check_file(path, VideoDecodeError)
    budget = _Budget(path, max_decoded_frames, time_budget_s)
    if method != "all":
        with _open(path, budget, max_pixels, max_aspect) as container:
            stream = _video_stream(container, path, max_pixels, max_aspect)
            try:
                return _read_by_seeking(container, stream, path, num_frames, sampling, max_pixels, max_aspect, budget)
            except _SeekFailed as err:
                if method == "seek":
                    raise VideoDecodeError(path, f"seek-based decoding failed ({err})") from None
    return _read_all(path, num_frames, sampling, max_pixels, max_aspect, budget)


@contextlib.contextmanager
def _open(path: str, budget: _Budget, max_pixels: int, max_aspect: float) -> Iterator[av.container.InputContainer]:
    """The file as an FFmpeg input, opened as the module docstring describes; closed on exit."""
    if av is None:
        raise VideoDecodeError(path, "decoding videos needs PyAV: pip install av")
    with _open_regular_file(path, VideoDecodeError) as raw:
        try:
            container = av.open(
                _BudgetedFile(raw, budget),
                mode="r",
                container_options=_CONTAINER_OPTIONS,
                # Decoder options for the probing that happens while the file is opened (find_stream_info).
                options={"max_pixels": str(_decoder_pixel_limit(max_pixels, max_aspect))},
                buffer_size=_IO_BUFFER_SIZE,
                timeout=(budget.remaining(), None),
                metadata_errors="replace",
            )
        except av.FFmpegError as err:
            budget.check_time()
            refused = _refused_format(raw)
            if refused is None and isinstance(err, av.ArgumentError):  # FFmpeg's answer to a format off the whitelist
                refused = "not a media container (a playlist, subtitles, text?)"
            if refused is not None:
                raise VideoDecodeError(path, f"format not allowed: {refused}; {_ALLOWED_DESCRIPTION}") from None
            reason = _ffmpeg_reason(err)
            reason = f"not a video file or could not be opened; is it damaged or truncated? (FFmpeg: {reason})"
            raise VideoDecodeError(path, reason) from None
        with container:
            names = container.format.name
            if not ALLOWED_DEMUXERS.intersection(names.split(",")):  # FFmpeg's whitelist already ensures it
                raise VideoDecodeError(path, f"format not allowed: FFmpeg's {names}; {_ALLOWED_DESCRIPTION}")
            budget.check_time()
            yield container


def _refused_format(raw: BinaryIO) -> str | None:
    """What a file that FFmpeg would not open is, if its first bytes are those of a format that names other files.

    Only words the error: FFmpeg refuses such files whether or not they are recognised here (HLS, for one, is not
    even probed in a file without an .m3u8 name).
    """
    raw.seek(0)
    head = raw.read(256).lstrip(b"\xef\xbb\xbf \t\r\n")
    return next((name for magic, name in _REFUSED_SIGNATURES if head.startswith(magic)), None)


def _decoder_pixel_limit(max_pixels: int, max_aspect: float) -> int:
    """FFmpeg's ``max_pixels`` for the decoders: ours plus the rows and columns decoders add for alignment.

    Decoders check their padded (coded, stride-aligned) size, up to 128 more than the frame on each side, so
    FFmpeg's limit is loosened by that margin for the longest side a frame within both limits can have; the exact
    limit is ours, checked on the stream header before decoding and on the first decoded frame.
    """
    if max_pixels >= _FFMPEG_INT_MAX:
        return _FFMPEG_INT_MAX
    longest = max_pixels  # a 1-pixel-high frame, without an aspect limit
    if math.isfinite(max_aspect):
        longest = min(longest, math.isqrt(int(max_pixels * max(1.0, max_aspect))) + 1)
    return min(_FFMPEG_INT_MAX, max_pixels + 256 * longest + 128 * 128)


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
    """The first video stream, with its declared size checked and its decoder limited and multithreaded.

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
    if width and height:  # 0 means "unknown until decoded"; the decoder's max_pixels and the first frame's check hold
        _check_size(path, width, height, max_pixels, max_aspect)
    stream.codec_context.options = {
        **(stream.codec_context.options or {}),
        "max_pixels": str(_decoder_pixel_limit(max_pixels, max_aspect)),
    }
    stream.thread_type = thread_type
    return stream


def _frame_rate(stream: VideoStream) -> float:
    """Average frames per second, as decord's ``get_avg_fps`` reports it; 1.0 when the stream has none."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else _FALLBACK_FPS


def _build_index(container: av.container.InputContainer, stream: VideoStream, budget: _Budget) -> _Index:
    """Demux (not decode) every video packet to learn the frame count and timestamps.

    Raises:
        _SeekFailed: The packets do not describe one frame each with a unique timestamp.
        VideoDecodeError: The time budget ran out, or the stream has more than ``_MAX_INDEXED_PACKETS`` packets.
    """
    pts, keyframe_pts = array.array("q"), array.array("q")
    try:
        for packet in container.demux(stream):
            budget.check_time()
            if packet.size == 0 or packet.is_discard:  # flush packet; frames cut by an edit list
                continue
            if packet.pts is None:
                raise _SeekFailed("a packet has no timestamp")
            if len(pts) == _MAX_INDEXED_PACKETS:
                raise VideoDecodeError(budget.path, f"more than {_MAX_INDEXED_PACKETS} video frames")
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframe_pts.append(packet.pts)
    except av.FFmpegError as err:
        budget.check_time()
        raise _SeekFailed(f"demuxing failed: {_ffmpeg_reason(err)}") from None
    budget.check_time()  # reading stops early, as at the end of the file, once the time is up
    if not pts or not keyframe_pts:
        raise _SeekFailed("no packets" if not pts else "no keyframe")
    sorted_pts = np.sort(np.frombuffer(pts, dtype=np.int64))
    if np.any(sorted_pts[1:] == sorted_pts[:-1]):
        raise _SeekFailed("duplicate timestamps")
    return _Index(pts=sorted_pts, keyframe_pts=np.sort(np.frombuffer(keyframe_pts, dtype=np.int64)))


def _read_by_seeking(
    container: av.container.InputContainer,
    stream: VideoStream,
    path: str,
    num_frames: int,
    sampling: str,
    max_pixels: int,
    max_aspect: float,
    budget: _Budget,
) -> np.ndarray:
    """Decode only the groups of pictures that hold sampled frames (see the module docstring)."""
    index = _build_index(container, stream, budget)
    targets = sample_indices(len(index.pts), _frame_rate(stream), num_frames, sampling=sampling)
    frames: list[np.ndarray] = []
    decoded: Iterator[av.VideoFrame] = iter(())
    position: int | None = None  # pts of the last decoded frame; targets are sorted, so always < target
    for target in (int(index.pts[i]) for i in targets):
        keyframe = int(index.keyframe_pts[max(0, np.searchsorted(index.keyframe_pts, target, side="right") - 1)])
        if position is None or keyframe > position:
            # Seek only when a keyframe lies between where we are and the target; otherwise decoding on is cheaper.
            decoded = _seek(container, stream, target, budget)
        frame = _decode_until(decoded, target)
        position = frame.pts
        frames.append(_to_rgb(frame, frames, path, max_pixels, max_aspect))
    return np.stack(frames)


def _seek(
    container: av.container.InputContainer, stream: VideoStream, target: int, budget: _Budget
) -> Iterator[av.VideoFrame]:
    """Seek to the keyframe at or before ``target`` and return a fresh frame iterator from there."""
    try:
        container.seek(target, backward=True, any_frame=False, stream=stream)
    except av.FFmpegError as err:
        budget.check_time()
        raise _SeekFailed(f"seek to pts {target} failed: {_ffmpeg_reason(err)}") from None
    return _decodable_frames(container, stream, budget, strict=True)


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
    container: av.container.InputContainer, stream: VideoStream, budget: _Budget, *, strict: bool
) -> Iterator[av.VideoFrame]:
    """Decoded frames of ``stream`` in presentation order, each counted against ``budget``.

    With ``strict`` a decoding error raises ``_SeekFailed``. Without it an undecodable packet is skipped and a
    demuxing error ends the stream: a truncated or damaged file still yields every frame that can be decoded.
    """
    try:
        for packet in container.demux(stream):
            budget.check_time()
            try:
                frames = packet.decode()
            except av.FFmpegError as err:
                if strict:
                    budget.check_time()
                    raise _SeekFailed(f"decoding failed: {_ffmpeg_reason(err)}") from None
                continue
            for frame in frames:
                budget.count_frame()
                yield frame
    except av.FFmpegError as err:
        budget.check_time()
        if strict:
            raise _SeekFailed(f"demuxing failed: {_ffmpeg_reason(err)}") from None
    budget.check_time()  # reading stops early, as at the end of the file, once the time is up


def _read_all(
    path: str, num_frames: int, sampling: str, max_pixels: int, max_aspect: float, budget: _Budget
) -> np.ndarray:
    """Decode the whole stream twice: count the decodable frames, then keep the sampled ones.

    Two passes keep memory at ``num_frames`` frames whatever the video's length.
    """
    with _open(path, budget, max_pixels, max_aspect) as container:
        stream = _video_stream(container, path, max_pixels, max_aspect, thread_type="SLICE")
        fps = _frame_rate(stream)
        num_total = sum(1 for _ in _decodable_frames(container, stream, budget, strict=False))
    if num_total == 0:
        raise VideoDecodeError(
            path,
            f"no frame could be decoded (the file may be truncated or corrupt, or its frames larger than {max_pixels} "
            "pixels)",
        )
    wanted = sample_indices(num_total, fps, num_frames, sampling=sampling)
    frames: list[np.ndarray] = []
    with _open(path, budget, max_pixels, max_aspect) as container:
        stream = _video_stream(container, path, max_pixels, max_aspect, thread_type="SLICE")
        for i, frame in enumerate(_decodable_frames(container, stream, budget, strict=False)):
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
    quarter_turns = round(frame.rotation / 90) % 4  # counter-clockwise, as np.rot90 on an image
    if not previous:
        _check_size(path, frame.width, frame.height, max_pixels, max_aspect)
        rgb = frame.to_ndarray(format="rgb24")  # [H, W, 3]
    else:
        height, width = previous[0].shape[:2]
        if quarter_turns % 2:
            width, height = height, width
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height)  # [H, W, 3]
    return np.rot90(rgb, quarter_turns) if quarter_turns else rgb
