"""Fast decoding and quantized loading (`Engine`, `runtime`): the graphed encode, decoding modes, quantization and
its clear errors. The Engine's greedy-token parity in every mode is tests/test_engine.py."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from sharp_model import VID, sharp_tiny_model

from videopanda import VideoPandaForCausalLM, runtime
from videopanda.engine import Engine
from videopanda.runtime import QuantizationError

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def model() -> VideoPandaForCausalLM:
    return sharp_tiny_model()


def batch(seed: int, size: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts of different lengths around 168 placeholders, one tiny 8-frame video each."""
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(size, 8, 4, 112, 112, generator=g)
    px[:, :, 3] = 1
    rows = [[5 + i, *[VID] * 168, *range(8, 10 + i + seed)] for i in range(size)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return dict(input_ids=ids, attention_mask=mask, pixel_values=px)


@torch.inference_mode()
def test_compiled_mode_encodes_through_the_engines_graphed_encoder(model):
    """"compiled" single requests encode the video through the engine's `GraphedEncoder` over its fused STAB (CUDA
    graphs on a GPU; the fused encode here) and give the plain model's greedy tokens."""
    engine = Engine(model, None, decoding="compiled")
    for seed in (0, 1):
        inputs = batch(seed, 1)
        del inputs["attention_mask"]
        want = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        got = engine.generate(inputs, max_new_tokens=8)
        assert torch.equal(got, want), seed
    assert engine._graphed is not None and engine._graphed.stab is engine.encoder.stab
    assert engine._graphed.projector is model.video_projector


def test_decoding_modes():
    cpu = torch.device("cpu")
    assert runtime.resolve_decoding("auto", cpu) == "dynamic"
    assert runtime.resolve_decoding("auto", torch.device("cuda")) == runtime.DEFAULT_DECODING["cuda"]
    assert runtime.resolve_decoding("compiled", cpu) == "compiled"
    with pytest.raises(ValueError, match="decoding must be one of"):
        runtime.resolve_decoding("fast", cpu)


def test_quantization_config_keeps_the_visual_side_and_head_in_16_bits():
    q4 = runtime.quantization_config("4bit", torch.bfloat16)
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4" and q4.bnb_4bit_use_double_quant
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16
    assert q4.llm_int8_skip_modules == ["video_tower", "video_projector", "language_model.lm_head"]
    q8 = runtime.quantization_config("8bit")
    assert q8.load_in_8bit and not q8.load_in_4bit and q8.llm_int8_skip_modules == q4.llm_int8_skip_modules
    with pytest.raises(QuantizationError, match="'8bit' or '4bit'"):
        runtime.quantization_config("2bit")


def test_quantization_errors_are_one_clear_line(monkeypatch):
    with pytest.raises(QuantizationError, match="8bit or 4bit"):
        runtime.check_quantization("3bit", torch.device("cpu"))
    with pytest.raises(QuantizationError, match="default model's LLM is small"):
        Engine.load("videopanda-default", device="cpu", quantization="4bit")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(QuantizationError, match=r"needs bitsandbytes: pip install 'videopanda\[quant\]'"):
        runtime.check_quantization("4bit", torch.device("cpu"))


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_4bit_loading_quantizes_the_llm_only(model, tmp_path):
    import bitsandbytes as bnb

    model.save_pretrained(tmp_path)
    runtime.check_quantization("4bit", torch.device("cpu"))
    q = VideoPandaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map={"": "cpu"},
                                              quantization_config=runtime.quantization_config("4bit"))
    kinds = {name: type(m) for name, m in q.named_modules()}
    assert kinds["language_model.model.layers.0.mlp.up_proj"] is bnb.nn.Linear4bit
    assert kinds["language_model.lm_head"] is torch.nn.Linear and kinds["video_projector.0"] is torch.nn.Linear
    assert not any(n.startswith("video_tower") and t is bnb.nn.Linear4bit for n, t in kinds.items())
    assert q.video_projector[0].weight.dtype == torch.bfloat16
    assert q.get_memory_footprint() < model.get_memory_footprint() / 2
    inputs = batch(0, 1)
    out = q.generate(**{**inputs, "pixel_values": inputs["pixel_values"].bfloat16()}, max_new_tokens=4,
                     do_sample=False, pad_token_id=0)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_cli_flags(capsys):
    from videopanda import cli

    with pytest.raises(SystemExit):
        cli.main(["ask", "clip.mp4", "q", "--load-in", "3bit"])
    assert "invalid choice: '3bit'" in capsys.readouterr().err
    text = cli.build_parser()._subparsers._group_actions[0].choices["ask"].format_help()
    assert "--compile" in text and "--load-in {8bit,4bit}" in text
