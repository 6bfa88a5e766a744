"""A second design of the dpe kernel, tried on the H100 in session 5 and not adopted (docs/speed.md, "Session 5").

The package's kernel (`videopanda/modeling/kernels.py`) gives each program one output row and loads its 27 taps,
27 tile loads per output row. Here each program owns one frame (n, t), `BLOCK_H` output rows, a tile of W positions
and a block of channels, and walks down its rows: each input row (3 frames x 3 horizontal shifts) is loaded once and
added into the three output rows it touches, kept as three rolling float32 accumulators: 9 loads per output row plus
a halo. It is exact (bench/speed_probe.py checks it against cuDNN's conv3d), but on the H100 its best block sizes took
0.52 ms at 8 videos in isolation and 0.71-0.77 ms inside the compiled STAB, against 0.59 ms for the package's kernel:
fewer loads did not pay for the longer dependent chains per program and the smaller grid.

    from bench.dpe_rowsweep import dpe3d_rowsweep   # needs CUDA (or TRITON_INTERPRET=1)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dpe_rowsweep_kernel(x_ptr, w_ptr, b_ptr, out_ptr, T, W, C, H: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    frame = tl.program_id(0)  # (n, t)
    t = frame % T
    h0 = tl.program_id(1) * BLOCK_H  # output rows h0 .. h0 + BLOCK_H - 1
    c_blocks = tl.cdiv(C, BLOCK_C)
    offs_c = (tl.program_id(2) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_w = (tl.program_id(2) // c_blocks) * BLOCK_W + tl.arange(0, BLOCK_W)
    cmask = offs_c < C
    wmask = offs_w < W
    bias = tl.load(b_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    zero = tl.zeros((BLOCK_W, BLOCK_C), tl.float32)
    acc_up = zero + bias  # output row hi - 1: complete once input row hi is in
    acc_mid = zero + bias  # row hi
    acc_down = zero + bias  # row hi + 1
    frame_size = H * W * C
    for i in range(BLOCK_H + 2):  # input rows h0 - 1 .. h0 + BLOCK_H
        hi = h0 + i - 1
        for a in tl.static_range(3):
            tt = t + a - 1
            inside = (tt >= 0) & (tt < T) & (hi >= 0) & (hi < H)
            row = (frame + a - 1).to(tl.int64) * frame_size + hi * W * C
            for d in tl.static_range(3):
                ww = offs_w + d - 1
                m = (inside & (ww >= 0) & (ww < W))[:, None] & cmask[None, :]
                v = tl.load(x_ptr + row + ww[:, None] * C + offs_c[None, :], mask=m, other=0.0).to(tl.float32)
                tap = w_ptr + offs_c * 27 + a * 9 + d  # this row is tap b = 2 of row hi - 1, 1 of hi, 0 of hi + 1
                acc_up += v * tl.load(tap + 6, mask=cmask, other=0.0).to(tl.float32)[None, :]
                acc_mid += v * tl.load(tap + 3, mask=cmask, other=0.0).to(tl.float32)[None, :]
                acc_down += v * tl.load(tap, mask=cmask, other=0.0).to(tl.float32)[None, :]
        ho = hi - 1
        dst = out_ptr + frame.to(tl.int64) * frame_size + ho * W * C + offs_w[:, None] * C + offs_c[None, :]
        tl.store(dst, acc_up.to(out_ptr.dtype.element_ty), mask=(i >= 2) & (ho < H) & wmask[:, None] & cmask[None, :])
        acc_up = acc_mid
        acc_mid = acc_down
        acc_down = zero + bias


def dpe3d_rowsweep(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, block_h: int = 8, block_w: int = 32,
                   block_c: int = 32, num_warps: int = 2) -> torch.Tensor:
    """Same contract as `videopanda.modeling.kernels.dpe3d` (float32 accumulation); the defaults are the best block
    sizes of the H100 sweep."""
    x = x.contiguous()
    N, T, H, W, C = x.shape
    out = torch.empty_like(x)
    block_w, block_h = min(triton.next_power_of_2(W), block_w), min(H, block_h)
    grid = (N * T, triton.cdiv(H, block_h), triton.cdiv(C, block_c) * triton.cdiv(W, block_w))
    _dpe_rowsweep_kernel[grid](x, weight.reshape(C, 27).contiguous(), bias.contiguous(), out, T, W, C, H=H,
                               BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=num_warps)
    return out
