"""A third design of the dpe kernel, tried on the H100 in session 7 (docs/speed.md, "Session 7").

The package's kernel (`videopanda/modeling/kernels.py`) gives each program `BLOCK_H` rows of one frame and loads
the 27 shifted blocks of the three frames around it, so every input frame is fetched from L2 three times (once per
output frame that reads it). Here a program owns `BLOCK_H` rows and a block of channels of a whole chunk of T frames
and walks through its frames: each input frame's 9 shifted blocks (3 row offsets x 3 column shifts) are loaded once
and added into the three output frames they touch, kept as three rolling float32 accumulators. 9 block loads per
output frame instead of 27, at the price of a grid T times smaller and a chain of T steps per program.

    from bench.dpe_framesweep import dpe3d_framesweep   # needs CUDA (or TRITON_INTERPRET=1)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dpe_framesweep_kernel(x_ptr, w_ptr, b_ptr, out_ptr, H, W, C, T: tl.constexpr, BLOCK_H: tl.constexpr,
                           BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """w_ptr: tap-major [27, C] weights (tap 9a + 3b + d: frame offset a, row offset b, column offset d)."""
    blocks_h = tl.cdiv(H, BLOCK_H)
    chunk = tl.program_id(0) // blocks_h
    offs_h = (tl.program_id(0) % blocks_h) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_w = tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    bias = tl.load(b_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)[None, None, :]
    zero = tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), tl.float32)
    frame_size = H * W * C
    base = chunk.to(tl.int64) * T * frame_size
    out_offs = (offs_h[:, None, None] * W + offs_w[None, :, None]) * C + offs_c[None, None, :]
    out_mask = (offs_h < H)[:, None, None] & (offs_w < W)[None, :, None] & cmask[None, None, :]
    acc_prev = zero + bias  # output frame f - 1: complete once input frame f is in
    acc_cur = zero + bias  # output frame f
    acc_next = zero + bias  # output frame f + 1
    for f in tl.static_range(T):
        src = x_ptr + base + f * frame_size
        for b in tl.static_range(3):
            hh = offs_h + b - 1
            hmask = (hh >= 0) & (hh < H)
            for d in tl.static_range(3):
                ww = offs_w + d - 1
                m = hmask[:, None, None] & ((ww >= 0) & (ww < W))[None, :, None] & cmask[None, None, :]
                v = tl.load(src + (hh[:, None, None] * W + ww[None, :, None]) * C + offs_c[None, None, :], mask=m,
                            other=0.0).to(tl.float32)
                tap = w_ptr + (b * 3 + d) * C + offs_c  # this frame is tap a = 2 of f - 1, 1 of f, 0 of f + 1
                if f > 0:
                    acc_prev += v * tl.load(tap + 18 * C, mask=cmask, other=0.0).to(tl.float32)[None, None, :]
                acc_cur += v * tl.load(tap + 9 * C, mask=cmask, other=0.0).to(tl.float32)[None, None, :]
                if f + 1 < T:
                    acc_next += v * tl.load(tap, mask=cmask, other=0.0).to(tl.float32)[None, None, :]
        if f > 0:
            tl.store(out_ptr + base + (f - 1) * frame_size + out_offs, acc_prev.to(out_ptr.dtype.element_ty),
                     mask=out_mask)
        acc_prev = acc_cur
        acc_cur = acc_next
        acc_next = zero + bias
    tl.store(out_ptr + base + (T - 1) * frame_size + out_offs, acc_prev.to(out_ptr.dtype.element_ty), mask=out_mask)


# block sizes of the op below (the probe's sweep sets them)
BLOCK_H, BLOCK_C, NUM_WARPS = 2, 64, 4


@torch.library.triton_op("videopanda_bench::dpe3d_framesweep", mutates_args=())
def dpe3d_framesweep(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Same contract as `videopanda.modeling.kernels.dpe3d` (float32 accumulation, x's dtype out); a triton_op, so
    the probe can put it in the compiled STAB in place of the package's kernel."""
    x = x.contiguous()
    N, T, H, W, C = x.shape
    out = torch.empty_like(x)
    taps = weight.reshape(C, 27).t().contiguous()  # [27, C]
    grid = (N * triton.cdiv(H, BLOCK_H), triton.cdiv(C, BLOCK_C))
    torch.library.wrap_triton(_dpe_framesweep_kernel)[grid](
        x, taps, bias.contiguous(), out, H, W, C, T=T, BLOCK_H=BLOCK_H, BLOCK_W=triton.next_power_of_2(W),
        BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return out
