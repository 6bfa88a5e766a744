"""Hand-written Triton kernels for the fused STAB's inference path.

Only what no library does well. The dpe (a depthwise 3x3x3 convolution over channels-last [N, T, H, W, C] features)
was the largest single cost of the compiled 7B STAB: inductor turns its 27 shifted multiply-adds into one kernel that
fetches every input element 27 times, and cuDNN's depthwise conv3d is slower still (docs/speed.md). Here each program
computes one output row (all W positions of one (n, t, h), a block of channels) from the 9 neighbouring input rows,
so the 27 taps mostly come from the GPU's caches rather than from memory: 0.6 ms at 8 videos of the 7B STAB against
inductor's 1.75 ms and cuDNN's 7.6 ms (H100; docs/speed.md, which also says what is left: it is bound by L2 reads).

`dpe3d` is a `torch.library.triton_op`: it runs eagerly, and torch.compile / CUDA graphs see it as one kernel.
Without Triton (CPU-only installs) `available()` is False and the STAB keeps its other forms. On CPU the kernel runs
under Triton's interpreter (`TRITON_INTERPRET=1`, set before Triton is imported), which is how the tests check it.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

# One fixed configuration (no autotuning: a first call inside a CUDA-graph capture must not benchmark). Chosen by
# bench/speed_probe.py on an H100 (bench/results/); it only affects speed.
BLOCK_C = 64
NUM_WARPS = 4


def available(x: torch.Tensor) -> bool:
    """Whether `dpe3d` can run on this tensor's device."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _dpe_kernel(x_ptr, w_ptr, b_ptr, out_ptr, T, H, W, C,
                    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """out[n, t, h, w, c] = b[c] + sum_{a,b,d} wt[c, 9a+3b+d] * x[n, t+a-1, h+b-1, w+d-1, c], zero padded."""
        row = tl.program_id(0)  # one (n, t, h) row of W positions
        h = row % H
        t = (row // H) % T
        offs_w = tl.arange(0, BLOCK_W)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        acc = tl.zeros((BLOCK_W, BLOCK_C), ACC)
        acc += tl.load(b_ptr + offs_c, mask=cmask, other=0.0).to(ACC)[None, :]
        for a in tl.static_range(3):
            for b in tl.static_range(3):
                tt = t + a - 1
                hh = h + b - 1
                inside = (tt >= 0) & (tt < T) & (hh >= 0) & (hh < H)
                src = x_ptr + (row + (a - 1) * H + (b - 1)).to(tl.int64) * W * C  # row (n, tt, hh)
                for d in tl.static_range(3):
                    ww = offs_w + d - 1
                    m = inside & (ww >= 0) & (ww < W)
                    v = tl.load(src + ww[:, None] * C + offs_c[None, :], mask=m[:, None] & cmask[None, :], other=0.0)
                    wt = tl.load(w_ptr + offs_c * 27 + (a * 9 + b * 3 + d), mask=cmask, other=0.0)
                    acc += v.to(ACC) * wt.to(ACC)[None, :]
        dst = out_ptr + row.to(tl.int64) * W * C + offs_w[:, None] * C + offs_c[None, :]
        tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=(offs_w < W)[:, None] & cmask[None, :])

    @torch.library.triton_op("videopanda::dpe3d", mutates_args=())
    def dpe3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Depthwise 3x3x3 conv, zero padding 1, channels-last. x: [N, T, H, W, C]; weight: [C, 1, 3, 3, 3] (or
        [C, 27]); bias: [C]. Accumulates in float32 (float64 for float64 input), returns x's dtype."""
        x = x.contiguous()
        N, T, H, W, C = x.shape
        out = torch.empty_like(x)
        grid = (N * T * H, triton.cdiv(C, BLOCK_C))
        torch.library.wrap_triton(_dpe_kernel)[grid](
            x, weight.reshape(C, 27).contiguous(), bias.contiguous(), out, T, H, W, C,
            BLOCK_W=triton.next_power_of_2(W), BLOCK_C=BLOCK_C, num_warps=NUM_WARPS,
            ACC=tl.float64 if x.dtype == torch.float64 else tl.float32)
        return out

else:

    def dpe3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("videopanda's Triton kernels need the `triton` package (installed with CUDA builds of "
                           "torch)")
