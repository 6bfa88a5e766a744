"""A fourth design of the dpe kernel, tried on the H100 in session 8 (docs/speed.md, "Session 8").

The package's kernel (`videopanda/modeling/kernels.py`) computes, for each of the 27 taps, a bounds mask and the
addresses of a [BLOCK_H, W, BLOCK_C] block: integer work per element and tap beside the one multiply-add. At about
0.38 ms for 134 MB in and out it runs at a quarter of the memory bandwidth, which suggests the instruction issue, not
the memory, limits it. Here the input comes zero-padded by one row and one column on each side of a frame
([N, T, H+2, W+2, C]; the compiled STAB gets the padding fused into the kernel that writes the LSTE output), and the
frame size and channel count are compile-time constants. Then every tap is the centre block's addresses plus a
constant, with no mask inside a frame; only the frame offset (the chunk's first and last frame) is a per-program
branch.

    from bench.dpe_padded import dpe3d_padded, fast_dpe_padded   # needs CUDA (or TRITON_INTERPRET=1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _dpe_padded_kernel(x_ptr, w_ptr, b_ptr, out_ptr, T, H: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, EVEN: tl.constexpr):
    """out[n, t, h, w, c] = b[c] + sum_{a,b,d} wt[c, 9a+3b+d] * xp[n, t+a-1, h+b, w+d, c]; frames outside the chunk
    count as zero. xp is [N, T, H+2, W+2, C], out [N, T, H, W, C]; EVEN: the blocks tile H, W and C exactly."""
    blocks_h = (H + BLOCK_H - 1) // BLOCK_H
    frame = tl.program_id(0) // blocks_h  # (n, t)
    t = frame % T
    offs_h = (tl.program_id(0) % blocks_h) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_w = tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    PADDED: tl.constexpr = (H + 2) * (W + 2) * C
    # the centre tap's addresses in the padded frame; every other tap adds a constant
    centre = x_ptr + frame.to(tl.int64) * PADDED + \
        ((offs_h[:, None, None] + 1) * (W + 2) + offs_w[None, :, None] + 1) * C + offs_c[None, None, :]
    m = (offs_h < H)[:, None, None] & (offs_w < W)[None, :, None] & (offs_c < C)[None, None, :]
    cmask = offs_c < C
    acc = tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), tl.float32)
    if EVEN:  # no masks at all: loads and stores of whole blocks
        acc += tl.load(b_ptr + offs_c).to(tl.float32)[None, None, :]
    else:
        acc += tl.load(b_ptr + offs_c, mask=cmask, other=0.0).to(tl.float32)[None, None, :]
    for a in tl.static_range(3):
        tt = t + a - 1
        if (tt >= 0) & (tt < T):
            for b in tl.static_range(3):
                for d in tl.static_range(3):
                    src = centre + (a - 1) * PADDED + ((b - 1) * (W + 2) + d - 1) * C
                    if EVEN:
                        v = tl.load(src)
                        wt = tl.load(w_ptr + offs_c * 27 + (a * 9 + b * 3 + d))
                    else:
                        v = tl.load(src, mask=m, other=0.0)
                        wt = tl.load(w_ptr + offs_c * 27 + (a * 9 + b * 3 + d), mask=cmask, other=0.0)
                    acc += v.to(tl.float32) * wt.to(tl.float32)[None, None, :]
    offs = (frame.to(tl.int64) * H * W + offs_h[:, None, None] * W + offs_w[None, :, None]) * C + \
        offs_c[None, None, :]
    if EVEN:
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty))
    else:
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=m)


# block sizes of the op below (the probe's sweep sets them)
BLOCK_H, BLOCK_C, NUM_WARPS = 2, 64, 4


@torch.library.triton_op("videopanda_bench::dpe3d_padded", mutates_args=())
def dpe3d_padded(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The dpe on a spatially zero-padded input: xp [N, T, H+2, W+2, C] -> [N, T, H, W, C]. Same contract as
    `videopanda.modeling.kernels.dpe3d` otherwise (float32 accumulation, xp's dtype out)."""
    xp = xp.contiguous()
    N, T, Hp, Wp, C = xp.shape
    H, W = Hp - 2, Wp - 2
    out = xp.new_empty(N, T, H, W, C)
    block_w = triton.next_power_of_2(W)
    even = H % BLOCK_H == 0 and W == block_w and C % BLOCK_C == 0
    grid = (N * T * triton.cdiv(H, BLOCK_H), triton.cdiv(C, BLOCK_C))
    torch.library.wrap_triton(_dpe_padded_kernel)[grid](
        xp, weight.reshape(C, 27).contiguous(), bias.contiguous(), out, T, H=H, W=W, C=C, BLOCK_H=BLOCK_H,
        BLOCK_W=block_w, BLOCK_C=BLOCK_C, EVEN=even, num_warps=NUM_WARPS)
    return out


def fast_dpe_padded(self, x: torch.Tensor) -> torch.Tensor:
    """A stand-in for `STAB._fast_dpe` (the probe swaps it in): pad, then the kernel above. Under torch.compile the
    padding fuses into the kernel that writes x."""
    return dpe3d_padded(F.pad(x, (0, 0, 1, 1, 1, 1)), self._fold_dpe_w, self.dpe.bias)
