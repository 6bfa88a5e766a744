"""The video or image a request names: a base64 `data:` URL upload, or a file inside `--media-dir`.

Each upload is written into a private temp folder that is always removed, and decoding is bounded (frame size,
decoded frames, time), so one request cannot fill the disk or hold a decode thread for long.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from urllib.parse import unquote, urlparse

import numpy as np

from ..video import VideoDecodeError, is_image_path, load_image, load_video
from .errors import APIError, _short

__all__ = ["Cancelled", "UploadFolders", "decode_data_url", "load_media", "resolve_media_path"]

MIB = 1 << 20
MAX_FRAME_PIXELS = 3840 * 2160  # 4K; larger frames are refused before decoding (8 of them are 200 MB of RGB)
# One request's decode may not take more than this (a clip of many frames behind one keyframe): 2,000 frames are a
# minute of 30 fps video after the nearest keyframe, far more than sampling a real clip needs.
MAX_DECODED_FRAMES, DECODE_BUDGET_S = 2000, 15.0
MAX_PATH_CHARS = 4096  # a path or file:// URL longer than Linux's PATH_MAX names no file
_MIME_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
                "video/x-msvideo": ".avi", "image/gif": ".gif", "image/png": ".png", "image/jpeg": ".jpg",
                "image/webp": ".webp", "image/bmp": ".bmp"}


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

