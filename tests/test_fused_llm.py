"""Fused q/k/v and gate/up projections (fast/llm.py): same outputs, same memory, same state_dict."""

import contextlib
import copy
import functools
import inspect
import warnings

import pytest
import torch
from transformers import LlamaForCausalLM

from videopanda import VideoPandaForCausalLM
from videopanda.configuration import variant_config
from videopanda.engine import Engine
from videopanda.fast import CompiledOps, fast_check, fuse_projections
from videopanda.fast import llm as fused_llm


def _tiny(bias: bool = False) -> LlamaForCausalLM:
    """The tiny variant's LLM alone (4 query heads over 2 key/value heads: the fused q/k/v split and GQA are exercised);
    `bias` adds the q/k/v and MLP biases that the fused matrices must carry too."""
    torch.manual_seed(0)
    config = variant_config("videopanda-tiny", text_config={"attention_bias": bias, "mlp_bias": bias}).text_config
    assert config.num_attention_heads != config.num_key_value_heads
    return LlamaForCausalLM(config).eval()


def _video_engine(processor, fuse_llm: bool) -> Engine:
    """An engine over its own tiny video model (seed 0; fusing changes the model, so not the shared one)."""
    torch.manual_seed(0)
    config = variant_config("videopanda-tiny", video_token_index=processor.video_token_index)
    return Engine(VideoPandaForCausalLM(config).eval(), processor, fuse_llm=fuse_llm)


def _generate(model, ids, cache, **kwargs):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0,
                              cache_implementation=cache, output_logits=True, return_dict_in_generate=True, **kwargs)


def test_fused_model_gives_the_same_logits_cache_and_greedy_tokens():
    """Through `generate` with a dynamic and a static cache, on the installed transformers: the same logits at every
    step and the same greedy tokens as the library's forwards."""
    for bias in (False, True):
        model = _tiny(bias)
        ids = torch.randint(0, 97, (2, 11))
        with torch.no_grad():
            before = model(ids).logits
        want = {c: _generate(model, ids, c) for c in (None, "static")}
        keys = set(model.state_dict())
        params = sum(p.numel() for p in model.parameters())
        assert fuse_projections(model) == 4  # 2 attention + 2 MLP blocks
        assert model.fused_llm_check.ok
        with torch.no_grad():
            after = model(ids).logits
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
        for c, w in want.items():
            got = _generate(model, ids, c)
            assert torch.equal(got.sequences, w.sequences)
            for a, b in zip(got.logits, w.logits, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert set(model.state_dict()) == keys and sum(p.numel() for p in model.parameters()) == params


def test_separate_weights_are_views_of_the_fused_matrix():
    model = _tiny()
    fuse_projections(model)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    fused = attn._fused_qkv_weight
    assert attn.q_proj.weight.data_ptr() == fused.data_ptr()
    assert attn.k_proj.weight.data_ptr() == fused[attn.q_proj.out_features:].data_ptr()
    assert mlp.up_proj.weight.data_ptr() == mlp._fused_gate_up_weight[mlp.gate_proj.out_features:].data_ptr()
    assert fuse_projections(model) == 0  # idempotent


def test_quantized_or_foreign_layers_are_left_alone():
    class Foreign(torch.nn.Linear):  # stands for a quantized layer: not a plain nn.Linear, so that block is skipped
        pass

    model = _tiny()
    attn = model.model.layers[1].self_attn
    foreign = Foreign(attn.k_proj.in_features, attn.k_proj.out_features, bias=False)
    foreign.load_state_dict(attn.k_proj.state_dict())
    attn.k_proj = foreign
    assert fuse_projections(model) == 3
    assert not hasattr(attn, "_fused_qkv_weight") and "forward" not in attn.__dict__


def test_the_engine_fuses_the_video_models_llm_on_request_with_the_same_answer(tiny_processor):
    """What `Engine.load` does on a GPU, forced on CPU: the whole video model answers the same."""
    from videopanda import bench

    processor = tiny_processor
    fused = _video_engine(processor, fuse_llm=True).model
    plain = _video_engine(processor, fuse_llm=False).model
    assert hasattr(fused.language_model.model.layers[0].self_attn, "_fused_qkv_weight")
    assert not hasattr(plain.language_model.model.layers[0].self_attn, "_fused_qkv_weight")
    inputs = processor(videos=bench.synthetic_videos(1, 4, 56), text=processor.build_prompt("w5 w6"))
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).logits, plain(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_compiled_pointwise_gives_the_same_logits_for_any_length_and_inside_a_compiled_step():
    """compile_pointwise (RMSNorm, rotary, SiLU * up compiled with dynamic shapes) keeps the function; a second prompt
    length reuses the graph; the compiled greedy decode step (fullgraph) traces through it."""
    from videopanda.fast import compile_pointwise

    model = _tiny()
    ids = {n: torch.randint(0, 97, (2, n)) for n in (7, 13, 21)}
    with torch.no_grad():
        before = {n: model(x).logits for n, x in ids.items()}
    fuse_projections(model)
    compiled = CompiledOps()
    assert compile_pointwise(model, compiled) == 2 * 2 + 2 * 2 + 1  # per layer 2 norms, rope, act; the final norm
    assert len(compiled) == 3  # one compiled function each, shared by every block: the caller's cache
    assert compile_pointwise(model, compiled) == 0
    torch._dynamo.reset()
    graphs = []
    with torch.no_grad():
        for n, x in ids.items():
            torch._dynamo.utils.counters.clear()
            torch.testing.assert_close(model(x).logits, before[n], rtol=1e-4, atol=1e-4)
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] == 3 and graphs[1] <= 3 and graphs[2] == 0  # static, then length-dynamic, then reused


def test_compiled_decoding_with_compiled_pointwise_answers_the_same(tiny_processor):
    """What `--compile` does on a GPU (fused projections + compiled pointwise ops + the compiled decode step),
    forced on CPU with the tiny video model: the same greedy tokens as plain dynamic decoding."""
    from videopanda import bench
    from videopanda.fast import compile_pointwise

    torch._dynamo.reset()  # a fresh trace of the decode step (a new engine compiles its own), through the pointwise ops
    processor = tiny_processor
    engine = _video_engine(processor, fuse_llm=True)
    inputs = dict(processor(videos=bench.synthetic_videos(1, 4, 56), text=processor.build_prompt("w5 w6")))
    want = engine.generate(inputs, max_new_tokens=5, min_new_tokens=5, decoding="dynamic", pad_token_id=0)
    assert compile_pointwise(engine.model.language_model) > 0
    got = engine.generate(inputs, max_new_tokens=5, min_new_tokens=5, decoding="compiled", pad_token_id=0)
    assert torch.equal(got, want)


def test_bench_refuses_to_quantize_a_fused_llm(tiny_processor):
    """The fused 16-bit q/k/v and gate/up matrices would keep their memory and serve the forward of a model quantized
    afterwards, so the bench's memory rows build their model unfused, and quantizing a fused one is an error."""
    import pytest

    from videopanda import bench

    engine = _video_engine(tiny_processor, fuse_llm=True)
    with pytest.raises(ValueError, match="fused"):
        bench.quantize_llm_in_place(engine.model, "8bit")


def test_left_padded_prefill_takes_the_ragged_causal_path_with_the_same_results():
    """Batched generation pads on the left; the fused attention then runs causal attention row by row without the
    padding mask (`_ragged_causal_attention`). Real positions get the same logits, and generation (dynamic and
    static cache, GQA) the same tokens, as the library's masked attention."""
    from unittest import mock


    torch.manual_seed(0)
    model = _tiny()  # 4 query heads, 2 key/value heads
    ids = torch.randint(3, 97, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding of 5, 0 and 2
    mask[2, :2] = 0
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
        tokens = {c: model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                                    cache_implementation=c) for c in (None, "static")}
    fuse_projections(model)
    with torch.no_grad(), mock.patch.object(fused_llm, "_ragged_causal_attention",
                                            wraps=fused_llm._ragged_causal_attention) as ragged:
        got = model(ids, attention_mask=mask).logits
        assert ragged.call_count == 2  # once per layer
        for c, t in tokens.items():
            assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                              pad_token_id=0, cache_implementation=c), t)
            assert ragged.call_count == 4 if c is None else 6  # the prefill only, not the decode steps
        with torch.inference_mode():  # how eval and the server run it (inference tensors: no version counter)
            torch.testing.assert_close(model(ids, attention_mask=mask).logits[mask.bool()], want[mask.bool()],
                                       rtol=1e-5, atol=1e-5)
        assert ragged.call_count == 8
        model(ids)  # no padding: the library's path (transformers passes no mask at all)
        model(ids, attention_mask=mask[:, :1].expand_as(mask).clone())  # a mask that is not left padding
        assert ragged.call_count == 8
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


# -- the load-time check (fast.llm.verify_fused, fast/fast_check.py) --------------------------------------------
@contextlib.contextmanager
def _no_warnings():
    """No warning but the deprecation notes of other libraries."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []


def test_the_check_passes_silently_on_the_installed_transformers():
    """Fusing and compiling the pointwise ops of a healthy model warns about nothing, and the recorded check shows
    float32 agreement (the same dot products, summed in another order at most)."""
    from videopanda.fast import compile_pointwise

    model = _tiny(bias=True)
    with _no_warnings():
        assert fuse_projections(model) == 4
        assert model.fused_llm_check.ok and model.fused_llm_check.diff < 1e-5
        assert compile_pointwise(model) == 9
        assert model.fused_llm_check.ok and model.fused_llm_check.diff < 1e-5
    assert hasattr(model.model.layers[0].self_attn, "_rope")  # the fast paths stayed on


def _dropping_cache_updates(kinds: set[str]):
    """A fused attention forward that never hands a KV cache of the given kinds on, as the fused copy did when
    transformers renamed `past_key_values` to `cache`."""
    original = fused_llm._attention_forward

    def forward(self, hidden_states, *args, **kwargs):
        for name in fast_check.CACHE_ARGUMENTS:
            if type(kwargs.get(name)).__name__ in kinds:
                kwargs.pop(name)
        return original(self, hidden_states, *args, **kwargs)

    return forward


def _ragged_attending_padding():
    original = fused_llm._ragged_causal_attention

    def ragged(q, k, v, pads, scaling):
        return original(q, k, v, [0] * len(pads), scaling)

    return ragged


def _assert_plain(model, plain, keys) -> None:
    """`model` is back to the library's forwards with standalone weights, and answers exactly as `plain`."""
    for module in model.modules():
        assert "forward" not in module.__dict__
        assert not any(name.startswith(("_fused", "_rope", "_act_mul", "_compiled")) for name in module.__dict__)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.untyped_storage().data_ptr() != attn.k_proj.weight.untyped_storage().data_ptr()
    assert attn.q_proj.weight.requires_grad and set(model.state_dict()) == keys
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
    for c in (None, "static"):
        got, want = _generate(model, ids, c), _generate(plain, ids, c)
        assert torch.equal(got.sequences, want.sequences)
        assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits, strict=True))


@pytest.mark.parametrize(("target", "replacement", "message"), [
    ("_attention_forward", _dropping_cache_updates({"DynamicCache", "StaticCache"}),
     r"the KV cache holds 0 tokens where transformers \S+'s forwards leave 5 \(DynamicCache, batch 2 left-padded, "
     r"prefill\)"),
    ("_attention_forward", _dropping_cache_updates({"StaticCache"}), r".*\(StaticCache, batch 1"),
    ("_ragged_causal_attention", _ragged_attending_padding(), "their logits differ .*batch 2 left-padded, prefill"),
], ids=["cache-dropped", "static-cache-dropped", "ragged-wrong"])
def test_the_check_catches_a_fused_forward_that_differs_and_restores_the_plain_model(monkeypatch, target,
                                                                                     replacement, message):
    """A fused path that is wrong on the installed transformers (the cache dropped, for every cache or only a
    static one; the left-padded prefill attending to padding) is caught before use: one warning, the fusion undone
    (standalone weights, the library's forwards), and from then on exactly the plain model's logits and tokens."""
    monkeypatch.setattr(fused_llm, target, replacement)
    model = _tiny()
    plain = copy.deepcopy(model)
    keys = set(model.state_dict())
    with pytest.warns(UserWarning, match="fused LLM projections disabled: " + message) as caught:
        assert fuse_projections(model) == 0
    assert len(caught) == 1 and str(caught[0].message).endswith("; using the plain path")
    assert not model.fused_llm_check.ok
    _assert_plain(model, plain, keys)
    with _no_warnings():
        assert fuse_projections(model) == 0  # once per model: not fused, checked or warned about again


def test_the_check_catches_a_library_whose_attention_computes_otherwise(monkeypatch):
    """A transformers release whose LlamaAttention computes something else under the same signature (here: output
    halved) makes the fused copy stale; the check sees the logits differ and the model keeps the library's forward."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaAttention.forward

    @functools.wraps(original)
    def changed(self, *args, **kwargs):
        out, weights = original(self, *args, **kwargs)
        return out * 0.5, weights

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", changed)
    model = _tiny()
    plain = copy.deepcopy(model)
    keys = set(model.state_dict())
    with pytest.warns(UserWarning, match=r"fused LLM projections disabled: their logits differ from transformers "
                                         r"\S+'s forwards \(relative RMS difference"):
        assert fuse_projections(model) == 0
    _assert_plain(model, plain, keys)


def test_the_check_catches_a_library_whose_rms_norm_computes_otherwise(monkeypatch):
    """`compile_pointwise` replaces LlamaRMSNorm.forward by a copy: a library whose norm changed is caught the
    same way, and every fast path (the fused projections too) is undone."""
    from transformers.models.llama import modeling_llama

    from videopanda.fast import compile_pointwise

    original = modeling_llama.LlamaRMSNorm.forward

    def changed(self, hidden_states):
        return original(self, hidden_states) * 1.5

    model = _tiny()
    assert fuse_projections(model) == 4
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", changed)
    plain = copy.deepcopy(model)
    fused_llm.unfuse(plain)
    with pytest.warns(UserWarning, match="compiled LLM pointwise ops and fused projections disabled: their logits "
                                         "differ"):
        assert compile_pointwise(model) == 0
    _assert_plain(model, plain, set(plain.state_dict()))


def test_an_attention_signature_not_mirrored_keeps_the_library_forward(monkeypatch):
    """A transformers whose LlamaAttention.forward takes the cache under an unknown keyword: those blocks are not
    fused (a warning names the signature); the MLPs still are, and the check passes."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaAttention.forward
    keyword = next(n for n in fast_check.CACHE_ARGUMENTS if n in inspect.signature(original).parameters)

    def renamed(self, hidden_states, position_embeddings=None, attention_mask=None, kv_cache=None, **kwargs):
        kv_cache = kwargs.pop(keyword, kv_cache)
        return original(self, hidden_states, position_embeddings, attention_mask, **{keyword: kv_cache}, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", renamed)
    model = _tiny()
    ids = torch.randint(0, 97, (2, 11))
    want = _generate(model, ids, "static")
    with pytest.warns(UserWarning, match=r"LlamaAttention.forward\(.*kv_cache.*\) is not the signature mirrored"):
        assert fuse_projections(model) == 2  # the two MLP blocks
    assert model.fused_llm_check.ok and "forward" not in model.model.layers[0].self_attn.__dict__
    got = _generate(model, ids, "static")
    assert torch.equal(got.sequences, want.sequences)
