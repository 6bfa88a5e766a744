"""Triton kernels for the LLM's one-token decode step, where every step reads all weights and the whole KV cache.

Why: at batch 1 a 7B decode step is bound by memory. On an H100 (bench/decode_probe.py, bench/results/), over the
32 layers of a 7B model:
- `gemv`, the matrix-vector products of a one-row input: cuBLAS read the weights at 2.6 TB/s (2.1 TB/s for the
  4096x4096 output projection), this kernel at 2.9 TB/s (3.0 for gate|up). A program owns a few output rows and
  walks along K with wide, pipelined loads.
- `decode_attention`, one query per sequence over the cache, with the boolean mask transformers builds for the step:
  SDPA (cuDNN) read the cache at 1.4 TB/s. Here the keys are split into blocks handled in parallel (flash-decoding),
  each block's masked-out slots are never read (the static cache's unused tail, left padding), and a second small
  kernel combines the blocks' softmax statistics.
Same arithmetic as the library calls (float32 accumulation, bfloat16/float16 in and out); only the summation order
differs.

`IMPL` picks the form: None (default) uses the kernels on CUDA tensors when Triton is installed, "triton" also
elsewhere (the tests run them under Triton's interpreter), "torch" never. `modeling/fused_llm.py` calls `linear` and
`decode_attention` from the fused LLaMA blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels import triton

if triton is not None:
    import triton.language as tl

IMPL: str | None = None


def _use(x: torch.Tensor) -> bool:
    if IMPL not in (None, "triton", "torch"):
        raise ValueError(f"decode_kernels.IMPL must be None, 'triton' or 'torch', got {IMPL!r}")
    return triton is not None and (IMPL == "triton" or (IMPL is None and x.is_cuda))


def _gemv_config(n: int, k: int) -> tuple[int, int, int, int] | None:
    """(rows per program, K per step, warps, pipeline stages), the best of bench/decode_probe.py for the 7B shapes:
    long K steps for the tall q|k|v and gate|up matrices, shorter ones and more rows for the rest."""
    if n >= 8192 and k % 1024 == 0 and n % 2 == 0:
        return 2, 1024, 4, 3
    for block_k in (256, 128, 64):
        if k % block_k == 0 and n % 4 == 0:
            return 4, block_k, 2, 4
    return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through `gemv` when x holds one row (a batch-1 decode step) and the shapes fit."""
    if x.numel() == x.shape[-1] and weight.dtype == x.dtype and weight.is_contiguous() and _use(x) and \
            x.dtype in (torch.bfloat16, torch.float16) and _gemv_config(*weight.shape) is not None:
        return gemv(x.reshape(-1), weight, bias).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor | None:
    """Attention of one query per sequence, as transformers' attention functions return it ([B, 1, H, D]), or None
    where the kernel does not apply (the caller keeps the library's attention).

    q: [B, H, 1, D]; k, v: [B, H_kv, S, D] (grouped heads allowed); mask: None (every key) or a boolean [B or 1, 1, 1,
    S] mask, True where the query may attend (transformers' SDPA mask for a decode step).
    """
    B, H, L, D = q.shape
    S = k.shape[2]
    if L != 1 or not _use(q) or q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or \
            v.dtype != q.dtype or D & (D - 1) or D > 256 or H % k.shape[1] or k.shape != v.shape or \
            k.stride(-1) != 1 or v.stride(-1) != 1 or q.stride(-1) != 1:
        return None
    if mask is None:
        mask = torch.ones(1, S, dtype=torch.bool, device=q.device)
    elif mask.dtype == torch.bool and mask.ndim == 4 and mask.shape[1:3] == (1, 1) and mask.shape[-1] == S and \
            mask.shape[0] in (1, B):
        mask = mask[:, 0, 0]
    else:
        return None
    return attend_one(q, k, v, mask.expand(B, S), scale)


# One fixed configuration (no autotuning inside a CUDA-graph capture); see bench/results/.
ATTN_BLOCK_N, ATTN_NUM_WARPS = 128, 4
ATTN_FORM = "dot"  # "dot": scores and values on the tensor cores; "fma": element-wise products and sums

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

    @triton.jit
    def _split_attend_kernel(q_ptr, k_ptr, v_ptr, m_ptr, part_ptr, H, GROUP, S, s_qb, s_qh, s_kb, s_kh, s_kn,
                             s_vb, s_vh, s_vn, s_mb, scale, D: tl.constexpr, BLOCK_N: tl.constexpr):
        """Keys [blk * BLOCK_N, (blk + 1) * BLOCK_N) of one (sequence, head): their max score, sum of exponentials
        and exponential-weighted values, into part[b * H + h, blk] = (values [D], max, sum)."""
        bh, blk = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        hk = h // GROUP
        d = tl.arange(0, D)
        n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = (n < S) & (tl.load(m_ptr + b * s_mb + n, mask=n < S, other=0) != 0)
        # keys and values loaded together (the values do not wait for the scores); masked slots are not read
        k = tl.load(k_ptr + b.to(tl.int64) * s_kb + hk * s_kh + n[:, None] * s_kn + d[None, :], mask=ok[:, None],
                    other=0.0)
        v = tl.load(v_ptr + b.to(tl.int64) * s_vb + hk * s_vh + n[:, None] * s_vn + d[None, :], mask=ok[:, None],
                    other=0.0)
        q = tl.load(q_ptr + b * s_qb + h * s_qh + d).to(tl.float32) * scale
        s = tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], 1), float("-inf"))
        m = tl.max(s, 0)
        p = tl.exp(s - tl.where(m == float("-inf"), 0.0, m))  # a block with no key gives p = 0
        out = part_ptr + (bh * tl.num_programs(1) + blk) * (D + 2)
        tl.store(out + d, tl.sum(p[:, None] * v.to(tl.float32), 0))
        tl.store(out + D, m)
        tl.store(out + D + 1, tl.sum(p, 0))

    @triton.jit
    def _split_attend_dot_kernel(q_ptr, k_ptr, v_ptr, m_ptr, part_ptr, H, GROUP, S, s_qb, s_qh, s_kb, s_kh, s_kn,
                                 s_vb, s_vh, s_vn, s_mb, scale, D: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_G: tl.constexpr):
        """`_split_attend_kernel` on the tensor cores, for all query heads of one key/value head at once: the
        GROUP queries are rows of a [BLOCK_G >= 16, D] block (zero rows past GROUP), scores = q k^T and values =
        p v are matrix products (p rounded to the values' dtype first, as flash attention does), and no [BLOCK_N, D]
        float32 products are held in registers."""
        bk, blk = tl.program_id(0), tl.program_id(1)
        hkv = H // GROUP
        b, hk = bk // hkv, bk % hkv
        g = tl.arange(0, BLOCK_G)
        heads = hk * GROUP + g
        d = tl.arange(0, D)
        n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        ok = (n < S) & (tl.load(m_ptr + b * s_mb + n, mask=n < S, other=0) != 0)
        k = tl.load(k_ptr + b.to(tl.int64) * s_kb + hk * s_kh + n[:, None] * s_kn + d[None, :], mask=ok[:, None],
                    other=0.0)
        v = tl.load(v_ptr + b.to(tl.int64) * s_vb + hk * s_vh + n[:, None] * s_vn + d[None, :], mask=ok[:, None],
                    other=0.0)
        q = tl.load(q_ptr + b * s_qb + heads[:, None] * s_qh + d[None, :], mask=(g < GROUP)[:, None], other=0.0)
        s = tl.where(ok[None, :], tl.dot(q, tl.trans(k)) * scale, float("-inf"))  # [BLOCK_G, BLOCK_N]
        m = tl.max(s, 1)
        p = tl.exp(s - tl.where(m == float("-inf"), 0.0, m)[:, None])
        acc = tl.dot(p.to(v.dtype), v)  # [BLOCK_G, D]
        out = part_ptr + ((b * H + heads) * tl.num_programs(1) + blk) * (D + 2)
        tl.store(out[:, None] + d[None, :], acc, mask=(g < GROUP)[:, None])
        tl.store(out + D, m, mask=g < GROUP)
        tl.store(out + D + 1, tl.sum(p, 1), mask=g < GROUP)

    @triton.jit
    def _combine_kernel(part_ptr, o_ptr, NB, D: tl.constexpr, NB_P: tl.constexpr):
        """out[bh] = sum_blk e^(m_blk - M) values_blk / sum_blk e^(m_blk - M) sum_blk, M the largest block max."""
        bh = tl.program_id(0)
        blk = tl.arange(0, NB_P)
        d = tl.arange(0, D)
        row = part_ptr + (bh * NB + blk) * (D + 2)
        m = tl.load(row + D, mask=blk < NB, other=float("-inf"))
        total = tl.load(row + D + 1, mask=blk < NB, other=0.0)
        acc = tl.load(row[:, None] + d[None, :], mask=(blk < NB)[:, None], other=0.0)
        top = tl.max(m, 0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
        out = tl.sum(w[:, None] * acc, 0) / tl.sum(w * total, 0)
        tl.store(o_ptr + bh * D + d, out.to(o_ptr.dtype.element_ty))

    @torch.library.triton_op("videopanda::attend_one", mutates_args=())
    def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                   scale: float) -> torch.Tensor:
        """q [B, H, 1, D], k/v [B, H_kv, S, D] (unit stride along D), boolean mask [B, S] (any strides) ->
        [B, 1, H, D]. A sequence whose mask is all False gets NaN, as SDPA gives."""
        B, H, _, D = q.shape
        S = k.shape[2]
        nb = triton.cdiv(S, ATTN_BLOCK_N)
        part = torch.empty(B * H, nb, D + 2, dtype=torch.float32, device=q.device)
        out = torch.empty(B, 1, H, D, dtype=q.dtype, device=q.device)
        args = (q, k, v, mask, part, H, H // k.shape[1], S, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                k.stride(2), v.stride(0), v.stride(1), v.stride(2), mask.stride(0), scale)
        if ATTN_FORM == "dot":
            torch.library.wrap_triton(_split_attend_dot_kernel)[(B * k.shape[1], nb)](
                *args, D=D, BLOCK_N=ATTN_BLOCK_N, BLOCK_G=max(16, triton.next_power_of_2(H // k.shape[1])),
                num_warps=ATTN_NUM_WARPS)
        else:
            torch.library.wrap_triton(_split_attend_kernel)[(B * H, nb)](
                *args, D=D, BLOCK_N=ATTN_BLOCK_N, num_warps=ATTN_NUM_WARPS)
        torch.library.wrap_triton(_combine_kernel)[(B * H,)](part, out, nb, D=D, NB_P=triton.next_power_of_2(nb),
                                                             num_warps=4)
        return out

else:  # CPU-only installs: `_use` is False, so these are never reached

    def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError("Triton is not installed")

    def attend_one(q, k, v, mask, scale):  # noqa: ANN001, ANN201
        raise RuntimeError("Triton is not installed")
