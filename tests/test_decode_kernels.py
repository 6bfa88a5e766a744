"""The decode-step matrix-vector kernel (fast/decode_kernels.py) computes what F.linear computes, and the fused
LLaMA blocks use it exactly where it applies (a one-row input). Without a GPU it runs under Triton's interpreter
(tests/conftest.py)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from videopanda.fast import FastOptions, decode_kernels

pytestmark = pytest.mark.skipif(decode_kernels.triton is None, reason="Triton is not installed")


def _within_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    """got (bfloat16) is want (float32 truth) rounded: within a half unit in the last place, plus float32 slack."""
    err = (got.float() - want).abs()
    assert (err <= want.abs() * 2.0 ** -8 + 1e-4).all(), err.max()


@pytest.mark.parametrize(("n", "k", "bias"), [(64, 256, False), (8200, 1024, True), (36, 192, False)])
def test_gemv_is_linear_on_one_row(n, k, bias, gpu_rounding):
    """One row through the kernel: the float32 product rounded once to bfloat16 (the 2x1024 and 4xK configs)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g).bfloat16()
    x = torch.randn(1, 1, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    with mock.patch.object(decode_kernels, "gemv", wraps=decode_kernels.gemv) as spy:
        got = decode_kernels.linear(x, w, b, "triton")
    assert spy.call_count == 1 and got.shape == (1, 1, n) and got.dtype == torch.bfloat16
    _within_rounding(got, F.linear(x.float(), w.float(), None if b is None else b.float()))


def test_linear_keeps_the_library_where_the_kernel_does_not_apply():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g).bfloat16()
    cases = [torch.randn(2, 256, generator=g).bfloat16(),  # two rows (a batch or a prompt)
             torch.randn(1, 256, generator=g)]  # float32 input
    with mock.patch.object(decode_kernels, "gemv", wraps=decode_kernels.gemv) as spy:
        for x in cases:
            torch.testing.assert_close(decode_kernels.linear(x, w.to(x.dtype), None, "triton"),
                                       F.linear(x, w.to(x.dtype)))
        odd = torch.randn(30, 100, generator=g).bfloat16()  # K not a multiple of 64
        x = torch.randn(1, 100, generator=g).bfloat16()
        torch.testing.assert_close(decode_kernels.linear(x, odd, None, "triton"), F.linear(x, odd))
        assert spy.call_count == 0
    for impl in ("torch", "auto"):  # auto: CUDA tensors in compiled code only
        with mock.patch.object(decode_kernels, "gemv") as spy:
            decode_kernels.linear(cases[0][:1], w, None, impl)
            assert spy.call_count == 0
    with pytest.raises(ValueError, match="gemv form"):
        decode_kernels.linear(cases[0][:1], w, None, "gpu")


def test_fused_llama_decodes_through_the_kernels_with_the_same_logits(gpu_rounding):
    """A bfloat16 LLaMA (grouped heads) with fused projections: greedy decoding with a static cache (one-row steps)
    goes through the kernel and gives the logits and tokens of the library's path."""
    from transformers import LlamaForCausalLM

    from videopanda.configuration import variant_config
    from videopanda.fast import fuse_projections, unfuse

    torch.manual_seed(0)
    # The tiny variant's LLM (4 query heads over 2 key/value heads) with a 128-word vocabulary: bfloat16 logits over
    # SmolLM2's 49152 words tie too often for greedy tokens to be compared, and the LM head runs through the kernel in
    # Triton's interpreter at every step.
    config = variant_config("videopanda-tiny", text_config={"vocab_size": 128}).text_config
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval().bfloat16()
    assert model.config._attn_implementation == "sdpa"
    assert fuse_projections(model, FastOptions(gemv="triton")) == 4
    assert model.fused_llm_check.ok  # the load-time check ran the probe through the kernel too, and agreed
    ids = torch.randint(0, 128, (1, 9))

    def run():
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0,
                                  cache_implementation="static", output_logits=True, return_dict_in_generate=True)

    with mock.patch.object(decode_kernels, "gemv", wraps=decode_kernels.gemv) as gemv:
        got = run()
    # 3 decode steps x (2 layers x 4 products + the LM head), and the prefill's LM head on its last position
    assert gemv.call_count == 3 * 9 + 1
    unfuse(model)  # the library's path
    want = run()
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)
    assert torch.equal(got.sequences, want.sequences)
