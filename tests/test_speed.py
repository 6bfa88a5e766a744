"""Fast decoding and quantized loading (videopanda.inference): same greedy tokens in every mode, clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from videopanda import VARIANTS, VideoPandaConfig, VideoPandaForCausalLM, inference
from videopanda.inference import QuantizationError, decoding_options, generate

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
TEXT = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300, max_position_embeddings=2048)
VID = 299


@pytest.fixture(scope="module")
def model() -> VideoPandaForCausalLM:
    return tiny_model()


def tiny_model() -> VideoPandaForCausalLM:
    torch.manual_seed(0)
    net = VideoPandaForCausalLM(VideoPandaConfig(text_config=TEXT, video_token_index=VID,
                                                 **VARIANTS["videopanda-tiny"])).eval()
    with torch.no_grad():  # sharper logits than the default init, so that greedy paths differ between inputs
        for name, p in net.named_parameters():
            if p.ndim >= 2 and not name.startswith("video_tower"):
                p.normal_(0, 0.3)
    return net


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
def test_static_cache_gives_the_default_greedy_tokens_across_calls(model):
    for seed, size in [(0, 1), (1, 1), (2, 3), (3, 1)]:  # the kept cache is reused, regrown, rebuilt for a new batch
        inputs = batch(seed, size)
        want = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0)
        with decoding_options(model, "static", inputs["input_ids"].shape[1] + 10, batch_size=size) as kwargs:
            assert model.cache_keyword in kwargs and kwargs["disable_compile"] is True
            got = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0, **kwargs)
        assert torch.equal(got, want), (seed, size)
    assert model._videopanda_static_cache[0] == 1  # the last call's batch size


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["static", "compiled"])
def test_lean_greedy_loop_gives_the_default_greedy_tokens(model, mode):
    """Single requests take `greedy_generate` (eager step, or compiled: on CPU a plain torch.compile, no graphs)."""
    model.generation_config.eos_token_id = 94  # a token these inputs produce, so that stopping is exercised
    try:
        for seed, min_new in [(0, 0), (1, 0), (2, 10), (3, 10)]:
            inputs = batch(seed, 1)
            del inputs["attention_mask"]
            want = model.generate(**inputs, max_new_tokens=10, min_new_tokens=min_new, do_sample=False)
            got = generate(model, inputs, max_new_tokens=10, min_new_tokens=min_new, decoding=mode)
            assert torch.equal(got, want), (seed, min_new, got[0, -10:], want[0, -10:])
    finally:
        model.generation_config.eos_token_id = None


@torch.inference_mode()
def test_compiled_mode_encodes_through_the_graphed_encoder():
    """With the fused STAB, "compiled" single requests encode the video through a `GraphedEncoder` kept on the model
    (CUDA graphs on a GPU; the plain encode here) and give the default greedy tokens."""
    fused = tiny_model().eval()
    for seed in (0, 1):
        inputs = batch(seed, 1)
        del inputs["attention_mask"]
        want = fused.generate(**inputs, max_new_tokens=8, do_sample=False)
        got = generate(fused, inputs, max_new_tokens=8, decoding="compiled")
        assert torch.equal(got, want), seed
    assert fused._videopanda_graphed_encoder.stab.stab is fused.video_tower


def test_a_concurrent_call_gets_a_fresh_cache(model):
    with decoding_options(model, "static", 300) as outer, decoding_options(model, "static", 300) as inner:
        assert model.cache_keyword in outer and inner.get("cache_implementation") == "static"


def test_decoding_modes():
    cpu = torch.device("cpu")
    assert inference.resolve_decoding("auto", cpu) == "dynamic"
    assert inference.resolve_decoding("auto", torch.device("cuda")) == inference.DEFAULT_DECODING["cuda"]
    with pytest.raises(ValueError, match="decoding must be one of"):
        inference.resolve_decoding("fast", cpu)


def test_compiled_mode_asks_transformers_for_cuda_graphs(model):
    with decoding_options(model, "compiled", 200) as kwargs:
        config = kwargs["compile_config"]
        assert config.mode == "reduce-overhead" and config.fullgraph and config._compile_all_devices  # on CPU: asked
        assert "disable_compile" not in kwargs


def test_quantization_config_keeps_the_visual_side_and_head_in_16_bits():
    q4 = inference.quantization_config("4bit", torch.bfloat16)
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4" and q4.bnb_4bit_use_double_quant
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16
    assert q4.llm_int8_skip_modules == ["video_tower", "video_projector", "language_model.lm_head"]
    q8 = inference.quantization_config("8bit")
    assert q8.load_in_8bit and not q8.load_in_4bit and q8.llm_int8_skip_modules == q4.llm_int8_skip_modules
    with pytest.raises(QuantizationError, match="'8bit' or '4bit'"):
        inference.quantization_config("2bit")


def test_quantization_errors_are_one_clear_line(monkeypatch):
    with pytest.raises(QuantizationError, match="8bit or 4bit"):
        inference.check_quantization("3bit", torch.device("cpu"))
    with pytest.raises(QuantizationError, match="default model's LLM is small"):
        inference.load("videopanda-default", device="cpu", quantization="4bit")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(QuantizationError, match=r"needs bitsandbytes: pip install 'videopanda\[quant\]'"):
        inference.check_quantization("4bit", torch.device("cpu"))


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_4bit_loading_quantizes_the_llm_only(model, tmp_path):
    import bitsandbytes as bnb

    model.save_pretrained(tmp_path)
    inference.check_quantization("4bit", torch.device("cpu"))
    q = VideoPandaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map={"": "cpu"},
                                              quantization_config=inference.quantization_config("4bit"))
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
