"""Fused q/k/v and gate/up projections (modeling/fused_llm.py): same outputs, same memory, same state_dict."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from videopanda.modeling.fused_llm import fuse_projections


def _tiny(bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=bias, mlp_bias=bias)
    return LlamaForCausalLM(config).eval()


def test_fused_model_gives_the_same_logits_cache_and_greedy_tokens():
    for bias in (False, True):
        model = _tiny(bias)
        ids = torch.randint(0, 97, (2, 11))
        with torch.no_grad():
            before = model(ids).logits
            tokens_before = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        keys = set(model.state_dict())
        params = sum(p.numel() for p in model.parameters())
        assert fuse_projections(model) == 4  # 2 attention + 2 MLP blocks
        with torch.no_grad():
            after = model(ids).logits
            tokens_after = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
        assert torch.equal(tokens_after, tokens_before)
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
    model = _tiny()
    model.model.layers[1].self_attn.k_proj = torch.nn.Identity()  # not a plain Linear: that block is skipped
    assert fuse_projections(model) == 3


def test_optimize_for_inference_fuses_the_video_models_llm_on_request_with_the_same_answer():
    """What `inference.load` does on a GPU, forced on CPU: the whole video model answers the same."""
    from videopanda import bench

    fused, processor, _ = bench.build_model("tiny", torch.device("cpu"), torch.float32, fuse_llm=True)
    plain, _, _ = bench.build_model("tiny", torch.device("cpu"), torch.float32, fuse_llm=False)
    assert hasattr(fused.language_model.model.layers[0].self_attn, "_fused_qkv_weight")
    assert not hasattr(plain.language_model.model.layers[0].self_attn, "_fused_qkv_weight")
    inputs = processor(videos=bench.synthetic_videos(1, 4, 56), text=processor.build_prompt("w5 w6"))
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs).logits, plain(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_compiled_pointwise_gives_the_same_logits_for_any_length_and_inside_a_compiled_step():
    """compile_pointwise (RMSNorm, rotary, SiLU * up compiled with dynamic shapes) keeps the function; a second prompt
    length reuses the graph; the compiled greedy decode step (fullgraph) traces through it."""
    from videopanda.modeling.fused_llm import compile_pointwise

    model = _tiny()
    ids = {n: torch.randint(0, 97, (2, n)) for n in (7, 13, 21)}
    with torch.no_grad():
        before = {n: model(x).logits for n, x in ids.items()}
    fuse_projections(model)
    assert compile_pointwise(model) == 2 * 2 + 2 * 2 + 1  # per layer 2 norms, rope, act; the final norm
    assert compile_pointwise(model) == 0
    torch._dynamo.reset()
    graphs = []
    with torch.no_grad():
        for n, x in ids.items():
            torch._dynamo.utils.counters.clear()
            torch.testing.assert_close(model(x).logits, before[n], rtol=1e-4, atol=1e-4)
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] == 3 and graphs[1] <= 3 and graphs[2] == 0  # static, then length-dynamic, then reused


def test_compiled_decoding_with_compiled_pointwise_answers_the_same():
    """What `--compile` does on a GPU (fused projections + compiled pointwise ops + the compiled decode step),
    forced on CPU with the tiny video model: the same greedy tokens as plain dynamic decoding."""
    from videopanda import bench, inference
    from videopanda.inference import generate
    from videopanda.modeling.fused_llm import compile_pointwise

    inference._COMPILED_STEP.clear()  # a fresh trace of the decode step, through the compiled pointwise functions
    torch._dynamo.reset()
    model, processor, _ = bench.build_model("tiny", torch.device("cpu"), torch.float32, fuse_llm=True)
    inputs = dict(processor(videos=bench.synthetic_videos(1, 4, 56), text=processor.build_prompt("w5 w6")))
    want = generate(model, inputs, max_new_tokens=5, min_new_tokens=5, decoding="dynamic", pad_token_id=0)
    assert compile_pointwise(model.language_model) > 0
    got = generate(model, inputs, max_new_tokens=5, min_new_tokens=5, decoding="compiled", pad_token_id=0)
    assert torch.equal(got, want)


def test_bench_refuses_to_quantize_a_fused_llm():
    """The fused 16-bit q/k/v and gate/up matrices would keep their memory and serve the forward of a model quantized
    afterwards, so the bench's memory rows build their model unfused, and quantizing a fused one is an error."""
    import pytest

    from videopanda import bench

    model, _, _ = bench.build_model("tiny", torch.device("cpu"), torch.float32, fuse_llm=True)
    with pytest.raises(ValueError, match="fused"):
        bench.quantize_llm_in_place(model, "8bit")


def test_left_padded_prefill_takes_the_ragged_causal_path_with_the_same_results():
    """Batched generation pads on the left; the fused attention then runs causal attention row by row without the
    padding mask (`_ragged_causal_attention`). Real positions get the same logits, and generation (dynamic and
    static cache, GQA) the same tokens, as the library's masked attention."""
    from unittest import mock

    from videopanda.modeling import fused_llm

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
