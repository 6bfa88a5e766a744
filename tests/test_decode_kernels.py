"""The decode-step kernels (modeling/decode_kernels.py) compute what F.linear and SDPA compute, and the fused LLaMA
blocks use them exactly where they apply (a one-row input; one query with a boolean mask). Without a GPU they run
under Triton's interpreter (tests/conftest.py)."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from videopanda.modeling import decode_kernels

pytestmark = pytest.mark.skipif(decode_kernels.triton is None, reason="Triton is not installed")


@pytest.fixture
def kernels_on(monkeypatch):
    monkeypatch.setattr(decode_kernels, "IMPL", "triton")


def _within_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    """got (bfloat16) is want (float32 truth) rounded: within a half unit in the last place, plus float32 slack."""
    err = (got.float() - want).abs()
    assert (err <= want.abs() * 2.0 ** -8 + 1e-4).all(), err.max()


@pytest.mark.parametrize(("n", "k", "bias"), [(64, 256, False), (8200, 1024, True), (36, 192, False)])
def test_gemv_is_linear_on_one_row(n, k, bias, kernels_on, gpu_rounding):
    """One row through the kernel: the float32 product rounded once to bfloat16 (the 2x1024 and 4xK configs)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g).bfloat16()
    x = torch.randn(1, 1, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    with mock.patch.object(decode_kernels, "gemv", wraps=decode_kernels.gemv) as spy:
        got = decode_kernels.linear(x, w, b)
    assert spy.call_count == 1 and got.shape == (1, 1, n) and got.dtype == torch.bfloat16
    _within_rounding(got, F.linear(x.float(), w.float(), None if b is None else b.float()))


def test_linear_keeps_the_library_where_the_kernel_does_not_apply(kernels_on):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g).bfloat16()
    cases = [torch.randn(2, 256, generator=g).bfloat16(),  # two rows (a batch or a prompt)
             torch.randn(1, 256, generator=g)]  # float32 input
    with mock.patch.object(decode_kernels, "gemv", wraps=decode_kernels.gemv) as spy:
        for x in cases:
            torch.testing.assert_close(decode_kernels.linear(x, w.to(x.dtype)), F.linear(x, w.to(x.dtype)))
        odd = torch.randn(30, 100, generator=g).bfloat16()  # K not a multiple of 64
        x = torch.randn(1, 100, generator=g).bfloat16()
        torch.testing.assert_close(decode_kernels.linear(x, odd), F.linear(x, odd))
        assert spy.call_count == 0
    decode_kernels.IMPL = "torch"
    with mock.patch.object(decode_kernels, "gemv") as spy:
        decode_kernels.linear(cases[0][:1], w)
        assert spy.call_count == 0
    decode_kernels.IMPL = "gpu"
    with pytest.raises(ValueError, match="IMPL"):
        decode_kernels.linear(cases[0][:1], w)


def _cache(B: int, H: int, Hkv: int, S: int, D: int):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, 1, H, D, generator=g).bfloat16().transpose(1, 2)  # the fused block's [B, H, 1, D] view
    k = torch.randn(B, Hkv, S, D, generator=g).bfloat16()
    v = torch.randn(B, Hkv, S, D, generator=g).bfloat16()
    return q, k, v


def _sdpa(q, k, v, mask, scale):
    rep = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(rep, 1) for t in (k, v))
    return F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask, scale=scale).transpose(1, 2)


@pytest.mark.parametrize("form", ["dot", "fma"])
def test_decode_attention_is_sdpa_with_the_mask(form, kernels_on, gpu_rounding, monkeypatch):
    """Grouped heads, a cache longer than one key block and not a multiple of it, left padding, an unused tail (a
    static cache) and a row whose valid keys all lie in one block."""
    monkeypatch.setattr(decode_kernels, "ATTN_FORM", form)
    B, H, Hkv, S, D = 3, 4, 2, 300, 32
    q, k, v = _cache(B, H, Hkv, S, D)
    pos = torch.arange(S)
    mask = torch.stack([pos < 290, (pos >= 7) & (pos < 251), (pos >= 140) & (pos < 150)]).view(B, 1, 1, S)
    scale = 1 / math.sqrt(D)
    got = decode_kernels.decode_attention(q, k, v, mask, scale)
    assert got.shape == (B, 1, H, D) and got.dtype == torch.bfloat16
    # "fma": the float32 result rounded once; "dot": also the weights p rounded to bfloat16 before p v (as flash
    # attention does), which stays within the error of a bfloat16 flash kernel: 2^-9 of the largest value
    check = _within_rounding if form == "fma" else \
        (lambda got, want: torch.testing.assert_close(got.float(), want, rtol=2.0 ** -8, atol=2.0 ** -9 * 4.5))
    check(got, _sdpa(q, k, v, mask, scale))
    # no mask (a dynamic cache's decode step): every key; a mask shared by the batch
    check(decode_kernels.decode_attention(q, k, v, None, scale), _sdpa(q, k, v, None, scale))
    shared = mask[:1]
    check(decode_kernels.decode_attention(q, k, v, shared, scale), _sdpa(q, k, v, shared, scale))


def test_decode_attention_declines_what_it_does_not_do(kernels_on):
    q, k, v = _cache(1, 4, 4, 40, 32)
    scale = 0.2
    assert decode_kernels.decode_attention(q.expand(1, 4, 2, 32), k, v, None, scale) is None  # two queries
    assert decode_kernels.decode_attention(q, k, v, torch.zeros(1, 1, 1, 40), scale) is None  # additive mask
    assert decode_kernels.decode_attention(q.float(), k.float(), v.float(), None, scale) is None
    q48, k48, v48 = _cache(1, 4, 4, 40, 48)  # head size not a power of two
    assert decode_kernels.decode_attention(q48, k48, v48, None, scale) is None
    decode_kernels.IMPL = None  # default: CUDA tensors only
    assert decode_kernels.decode_attention(q, k, v, None, scale) is None


def test_fused_llama_decodes_through_the_kernels_with_the_same_logits(kernels_on, gpu_rounding):
    """A bfloat16 LLaMA (grouped heads) with fused projections: greedy decoding with a static cache (boolean masks,
    one-row steps) goes through both kernels and gives the logits of the library's path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from videopanda.modeling.fused_llm import fuse_projections

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval().bfloat16()
    fuse_projections(model)
    ids = torch.randint(0, 128, (1, 9))

    def run():
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0,
                                  cache_implementation="static", output_logits=True, return_dict_in_generate=True)

    with mock.patch.object(decode_kernels, "gemv", wraps=decode_kernels.gemv) as gemv, \
            mock.patch.object(decode_kernels, "attend_one", wraps=decode_kernels.attend_one) as attend:
        got = run()
    # 3 decode steps x (2 layers x 4 products + the LM head), and the prefill's LM head on its last position;
    # 3 x 2 attentions (the prefill keeps SDPA)
    assert gemv.call_count == 3 * 9 + 1 and attend.call_count == 3 * 2
    decode_kernels.IMPL = "torch"
    want = run()
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)
    assert torch.equal(got.sequences, want.sequences)
