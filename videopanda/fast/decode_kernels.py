"""A Triton matrix-vector kernel for the LLM's batch-1 decode step, which reads every weight once per token.

Why: at batch 1 a 7B decode step is bound by reading 13.5 GB of weights. On an H100 (bench/decode_probe.py,
bench/results/h100_decode_gemv.json), over the 32 layers of a 7B model, cuBLAS read them at 2.6 TB/s (2.1 TB/s for
the 4096x4096 output projection) and `gemv` at 2.9 TB/s (3.0 for gate|up): a program owns a few output rows and walks
along K with wide, pipelined loads. The compiled 64-token answer took 425 ms with it and 453 ms with cuBLAS
(`FastOptions.gemv = "torch"`) on one host. Same arithmetic as cuBLAS (float32 accumulation, bfloat16/float16 in and
out); only the summation order differs.

There is no attention kernel here: a split-KV kernel for the step was 20% faster than SDPA alone, but no faster
than cuDNN inside the real compiled step (docs/speed.md, "Tried and not kept").

`linear`'s `impl` (`FastOptions.gemv`) picks the form: "auto" uses the kernel on CUDA tensors inside compiled code (the
compiled decode step, replayed as a CUDA graph) when Triton is installed; eager decoding is bound by the host's kernel
launches, where a Triton launch from Python costs more than cuBLAS's and the faster read cannot show. "triton" uses it
everywhere (the tests run it eagerly under Triton's interpreter), "torch" never. `fast/llm.py` calls `linear` from
the fused LLaMA blocks and the LM head, with the impl chosen when they were fused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels import triton

if triton is not None:
    import triton.language as tl

IMPLS = ("auto", "triton", "torch")


def _use(x: torch.Tensor, impl: str) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"the gemv form must be one of {IMPLS}, got {impl!r}")
    return triton is not None and (impl == "triton" or (impl == "auto" and x.is_cuda and torch.compiler.is_compiling()))


def _gemv_config(n: int, k: int) -> tuple[int, int, int, int] | None:
    """(rows per program, K per step, warps, pipeline stages), the best of bench/decode_probe.py for the 7B shapes:
    long K steps for the tall q|k|v and gate|up matrices, shorter ones and more rows for the rest."""
    if n >= 8192 and k % 1024 == 0 and n % 2 == 0:
        return 2, 1024, 4, 3
    for block_k in (256, 128, 64):
        if k % block_k == 0 and n % 4 == 0:
            return 4, block_k, 2, 4
    return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, impl: str = "auto"
           ) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through `gemv` when x holds one row (a batch-1 decode step), the shapes fit and
    `impl` ("auto", "triton" or "torch": `FastOptions.gemv`) allows it."""
    if x.numel() == x.shape[-1] and weight.dtype == x.dtype and weight.is_contiguous() and _use(x, impl) and \
            x.dtype in (torch.bfloat16, torch.float16) and _gemv_config(*weight.shape) is not None:
        return gemv(x.reshape(-1), weight, bias).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


if triton is not None:

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     STAGES: tl.constexpr, HAS_BIAS: tl.constexpr):
        """y[n] = sum_k w[n, k] x[k] (+ b[n]) for BLOCK_N rows n; K a multiple of BLOCK_K and N of BLOCK_N."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_K)
        w_rows = w_ptr + rows.to(tl.int64)[:, None] * K
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            w = tl.load(w_rows + (k0 + cols)[None, :])
            acc += w.to(tl.float32) * tl.load(x_ptr + k0 + cols).to(tl.float32)[None, :]
        y = tl.sum(acc, 1)
        if HAS_BIAS:
            y += tl.load(b_ptr + rows).to(tl.float32)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty))

    @torch.library.triton_op("videopanda::gemv", mutates_args=())
    def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """weight [N, K] (contiguous) @ x [K] (+ bias) -> [N], in x's dtype; the shapes must fit `_gemv_config`."""
        N, K = weight.shape
        block_n, block_k, warps, stages = _gemv_config(N, K)
        out = torch.empty(N, dtype=x.dtype, device=x.device)
        torch.library.wrap_triton(_gemv_kernel)[(N // block_n,)](
            x.contiguous(), weight, bias if bias is not None else out, out, K=K, BLOCK_N=block_n, BLOCK_K=block_k,
            STAGES=stages, HAS_BIAS=bias is not None, num_warps=warps)
        return out

else:  # CPU-only installs: `_use` is False, so this is never reached

    def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError("Triton is not installed")
