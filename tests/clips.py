"""Generate small, real video clips for the tests, with PyAV and no network.

Every frame of the default ``"moving"`` pattern carries its own index, so a test can tell exactly *which* frames a
decoder returned:

- the top half is a 2 x 5 grid of cells, one bit of the frame index each (bright = 1, dark = 0, bit 0 top-left),
  big enough that lossy codecs (h264, vp8, mpeg4, gif's palette) cannot flip a bit;
- the bottom half shows a red bar that moves to the right, so the clip also has real motion for inter-frame codecs.

``read_index`` decodes the grid back to the index. The ``"solid"`` pattern fills each frame with one grey level
(no index), for clips whose size leaves no room for the grid.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

_GRID_ROWS, _GRID_COLS = 2, 5
MAX_INDEX = 2 ** (_GRID_ROWS * _GRID_COLS) - 1
_DARK, _BRIGHT, _BACKGROUND = 32, 224, 96

# Preferred encoders per container suffix, best first. The first one this PyAV build has is used, so the helper
# keeps working on builds without the GPL encoders (libx264) or libvpx.
_ENCODERS = {
    ".mp4": ("libx264", "mpeg4"),
    ".mkv": ("libx264", "mpeg4"),
    ".mov": ("mpeg4", "libx264"),
    ".avi": ("mpeg4",),
    ".webm": ("libvpx", "libvpx-vp9"),
    ".gif": ("gif",),
}
_AUDIO_ENCODERS = {
    ".mp4": ("aac",),
    ".mov": ("aac",),
    ".mkv": ("aac", "libopus"),
    ".webm": ("libopus",),
    ".avi": ("pcm_s16le",),
    ".m4a": ("aac",),
    ".wav": ("pcm_s16le",),
}
_AUDIO_RATE = 48000  # libopus accepts only a few rates; 48 kHz works for every encoder above.


def available_encoder(candidates: tuple[str, ...]) -> str | None:
    """The first encoder in ``candidates`` that this PyAV build has, or None."""
    for name in candidates:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
            except av.FFmpegError:
                continue
            return name
    return None


def frame_pattern(index: int, width: int, height: int, pattern: str = "moving") -> np.ndarray:
    """The RGB frame [H, W, 3] uint8 that ``make_clip`` writes for frame ``index``."""
    if pattern == "solid":
        return np.full((height, width, 3), 16 + (index * 24) % 224, dtype=np.uint8)
    if pattern != "moving":
        raise ValueError(f"pattern must be 'moving' or 'solid', got {pattern!r}")
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"the 'moving' pattern encodes frame indices 0..{MAX_INDEX}, got {index}")
    frame = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    for bit, (rows, cols) in enumerate(_cells(width, height)):
        frame[rows, cols] = _BRIGHT if (index >> bit) & 1 else _DARK
    bar = max(2, width // 16)
    left = (index * bar) % max(1, width - bar)
    frame[height // 2 :, left : left + bar] = (230, 60, 40)
    return frame


def read_index(frame: np.ndarray) -> int:
    """Decode the frame index from a (possibly lossy) ``"moving"`` frame [H, W, 3].

    Only the centre of each cell is read, so ringing at cell edges and chroma subsampling do not matter.
    """
    height, width = frame.shape[:2]
    index = 0
    for bit, (rows, cols) in enumerate(_cells(width, height)):
        cell = frame[rows, cols].astype(np.float32)
        h, w = cell.shape[:2]
        centre = cell[h // 4 : h - h // 4 or None, w // 4 : w - w // 4 or None]
        if centre.mean() > (_DARK + _BRIGHT) / 2:
            index |= 1 << bit
    return index


def make_clip(
    path: str | os.PathLike,
    *,
    frames: int = 16,
    size: tuple[int, int] = (64, 48),
    fps: float | Fraction = 8,
    codec: str | None = None,
    audio: bool = False,
    pattern: str = "moving",
    gop: int | None = 4,
    faststart: bool = False,
    pts: Sequence[int] | None = None,
    rotation: int = 0,
) -> str:
    """Write a clip and return its path.

    Args:
        path: Output file; the suffix picks the container (.mp4 .mkv .mov .avi .webm .gif).
        frames: Number of video frames.
        size: (width, height). Keep both even: most encoders use yuv420p.
        fps: Frame rate; fractions such as 30000/1001 and rates below 1 are allowed.
        codec: Video encoder; None picks the first available one for the suffix.
        audio: Also write a mono sine audio stream as long as the video.
        pattern: "moving" (frame index readable with ``read_index``) or "solid".
        gop: Keyframe interval. Small by default so that clips have several keyframes and seeking is exercised.
        faststart: Put the mp4/mov index (moov) at the front, as streaming-friendly files do.
        pts: Presentation timestamps in units of 1/fps, strictly increasing (gaps make a variable frame rate);
            default ``range(frames)``.
        rotation: Display rotation in degrees counter-clockwise, stored as container metadata as phones do.

    Returns:
        ``str(path)``.
    """
    path = str(path)
    suffix = os.path.splitext(path)[1].lower()
    codec = codec or available_encoder(_ENCODERS.get(suffix, ()))
    if codec is None:
        raise RuntimeError(f"no video encoder for {suffix!r} in this PyAV build")
    width, height = size
    rate = Fraction(fps).limit_denominator(1001)
    pts = list(range(frames)) if pts is None else list(pts)
    if len(pts) != frames or any(b <= a for a, b in zip(pts, pts[1:])):
        raise ValueError(f"pts must hold {frames} strictly increasing values, got {pts}")
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(path, mode="w", options=options) as container:
        video = _add_video_stream(container, codec, rate, width, height, gop)
        if rotation:
            video.set_display_rotation(rotation)
        sound = _add_audio_stream(container, suffix) if audio else None
        samples_written = 0
        for index in range(frames):
            image = av.VideoFrame.from_ndarray(frame_pattern(index, width, height, pattern), format="rgb24")
            image.pts = pts[index]
            container.mux(video.encode(image))
            if sound is not None:
                samples_due = int(round((pts[index] + 1) / rate * _AUDIO_RATE))
                samples_written = _write_audio(container, sound, samples_written, samples_due)
        container.mux(video.encode())
        if sound is not None:
            container.mux(sound.encode())
    return path


def make_audio_only(path: str | os.PathLike, *, seconds: float = 0.5) -> str:
    """Write an audio-only file (.m4a with AAC, .wav with PCM) and return its path."""
    path = str(path)
    suffix = os.path.splitext(path)[1].lower()
    with av.open(path, mode="w") as container:
        sound = _add_audio_stream(container, suffix)
        _write_audio(container, sound, 0, int(seconds * _AUDIO_RATE))
        container.mux(sound.encode())
    return path


def _cells(width: int, height: int) -> list[tuple[slice, slice]]:
    """Row and column slices of the index cells, bit 0 first, in the top half of the frame."""
    cell_h, cell_w = max(1, height // 2 // _GRID_ROWS), max(1, width // _GRID_COLS)
    return [
        (slice(r * cell_h, (r + 1) * cell_h), slice(c * cell_w, (c + 1) * cell_w))
        for r in range(_GRID_ROWS)
        for c in range(_GRID_COLS)
    ]


def _add_video_stream(container, codec: str, rate: Fraction, width: int, height: int, gop: int | None):
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    if codec == "gif":
        stream.pix_fmt = "rgb8"
    elif codec in ("png", "ffv1", "libx264rgb"):
        stream.pix_fmt = "rgb24" if codec != "ffv1" else "yuv444p"
    elif codec == "mjpeg":
        stream.pix_fmt = "yuvj420p"
    else:
        stream.pix_fmt = "yuv420p"
    if codec in ("libx264", "libvpx", "libvpx-vp9", "mpeg4"):
        # High quality keeps the index grid exact; the frames are tiny, so the files stay small anyway.
        stream.bit_rate = 4_000_000
    if codec == "libx264":
        stream.options = {"preset": "veryfast", "crf": "18"}
    if gop is not None and codec != "gif":
        stream.codec_context.gop_size = gop
    return stream


def _add_audio_stream(container, suffix: str):
    codec = available_encoder(_AUDIO_ENCODERS.get(suffix, ()))
    if codec is None:
        raise RuntimeError(f"no audio encoder for {suffix!r} in this PyAV build")
    stream = container.add_stream(codec, rate=_AUDIO_RATE)
    stream.layout = "mono"
    return stream


def _write_audio(container, stream, start: int, stop: int) -> int:
    """Encode a 440 Hz sine for samples [start, stop) in encoder-sized chunks; return the new sample position."""
    chunk = stream.codec_context.frame_size or 1024
    fmt = stream.codec_context.format.name
    while start + chunk <= stop:
        t = (np.arange(start, start + chunk) / _AUDIO_RATE).astype(np.float32)
        wave = 0.2 * np.sin(2 * np.pi * 440 * t, dtype=np.float32)
        if fmt.startswith("s16"):
            wave = (wave * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave[None, :], format=fmt, layout="mono")
        frame.sample_rate, frame.pts = _AUDIO_RATE, start
        container.mux(stream.encode(frame))
        start += chunk
    return start


# ---------------------------------------------------------------------------------------------------------------
# Hostile inputs: files that name other files, and files that claim more than they hold
# ---------------------------------------------------------------------------------------------------------------


def make_concat_playlist(path: str | os.PathLike, *targets: str) -> str:
    """Write an FFmpeg concat playlist ("ffconcat") naming ``targets`` (relative paths resolve next to it)."""
    path = str(path)
    lines = ["ffconcat version 1.0"] + [f"file '{target}'" for target in targets]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def make_hls_playlist(path: str | os.PathLike, *segments: str, seconds: float = 1.0) -> str:
    """Write an HLS media playlist (.m3u8) whose segments are ``segments``."""
    path = str(path)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{math.ceil(seconds)}", "#EXT-X-MEDIA-SEQUENCE:0"]
    for segment in segments:
        lines += [f"#EXTINF:{seconds:.3f},", segment]
    with open(path, "w") as f:
        f.write("\n".join(lines + ["#EXT-X-ENDLIST"]) + "\n")
    return path


def make_mjpeg_claiming_size(path: str | os.PathLike, claimed: tuple[int, int], *, frames: int = 2) -> str:
    """Write a small MJPEG .avi of 64x48 frames whose headers claim ``claimed`` (width, height) instead.

    The AVI main header, the stream's BITMAPINFOHEADER and every JPEG's start-of-frame marker are rewritten, so both
    the container and the bitstream declare the large size while the file stays a few kilobytes: decoding it would
    allocate frames of the claimed size.
    """
    path = str(path)
    if not path.lower().endswith(".avi"):
        raise ValueError(f"the claimed-size clip is an .avi, got {path!r}")
    make_clip(path, frames=frames, codec="mjpeg", pattern="solid")
    width, height = claimed
    data = bytearray(open(path, "rb").read())
    avih = data.index(b"avih") + 8
    struct.pack_into("<II", data, avih + 32, width, height)  # dwWidth, dwHeight
    strf = data.index(b"strf") + 8
    struct.pack_into("<ii", data, strf + 4, width, height)  # biWidth, biHeight
    marker = data.find(b"\xff\xc0")  # SOF0: length (2 bytes), precision (1), height (2), width (2), big-endian
    patched = 0
    while marker != -1:
        struct.pack_into(">HH", data, marker + 5, height, width)
        patched += 1
        marker = data.find(b"\xff\xc0", marker + 2)
    if patched < frames:
        raise RuntimeError(f"found {patched} JPEG start-of-frame markers for {frames} frames")
    with open(path, "wb") as f:
        f.write(data)
    return path
