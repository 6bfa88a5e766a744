"""Hand-written Triton kernels for the fused STAB's inference path.

Only what no library does well (docs/speed.md has the measurements):
- `dpe3d`, the dpe: a depthwise 3x3x3 convolution over channels-last [N, T, H, W, C] features. Inductor turns its 27
  shifted multiply-adds into one kernel that fetches every input element 27 times, and cuDNN's depthwise conv3d is
  slower still. Here a program owns a few rows of positions of one frame and a block of channels and loads each of
  the 27 shifted input blocks once; the blocks overlap, so most rows come from the SM's L1. 0.41-0.43 ms at 8 videos
  of the 7B STAB (0.58-0.63 ms with one row per program; inductor 1.75 ms, cuDNN 7.6 ms; H100).
- `lsd_attend`, LSD's attention inside each 2x2 window: scores, softmax and weighted sum in one pass over the keys
  and values (online softmax), where inductor made a score reduction and a weighted sum of them.

Both are `torch.library.triton_op`s: they run eagerly, and torch.compile / CUDA graphs see each as one kernel.
Without Triton (CPU-only installs) `available()` is False and the STAB keeps its other forms. On CPU the kernels run
under Triton's interpreter (`TRITON_INTERPRET=1`, set before Triton is imported), which is how the tests check them.
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
BLOCK_H, BLOCK_C = 2, 64  # rows of positions and channels per program
NUM_WARPS = 4
# LSD's window attention (`lsd_attend`): windows per program (one head each), warps
LSD_BLOCK_N = 32
LSD_NUM_WARPS = 4


def available(x: torch.Tensor) -> bool:
    """Whether the kernels can run on this tensor's device."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _dpe_kernel(x_ptr, w_ptr, b_ptr, out_ptr, T, H, W, C, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                    BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """out[n, t, h, w, c] = b[c] + sum_{a,b,d} wt[c, 9a+3b+d] * x[n, t+a-1, h+b-1, w+d-1, c], zero padded.

        A program owns BLOCK_H rows of W positions of one frame and a block of channels, and loads each of the 27
        shifted input blocks once: the shifted blocks overlap, so most of their rows come from the SM's L1."""
        blocks_h = tl.cdiv(H, BLOCK_H)
        frame = tl.program_id(0) // blocks_h  # (n, t)
        t = frame % T
        offs_h = (tl.program_id(0) % blocks_h) * BLOCK_H + tl.arange(0, BLOCK_H)
        offs_w = tl.arange(0, BLOCK_W)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        acc = tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), ACC)
        acc += tl.load(b_ptr + offs_c, mask=cmask, other=0.0).to(ACC)[None, None, :]
        for a in tl.static_range(3):
            tt = t + a - 1
            src = x_ptr + (frame + a - 1).to(tl.int64) * H * W * C
            for b in tl.static_range(3):
                hh = offs_h + b - 1
                hmask = (tt >= 0) & (tt < T) & (hh >= 0) & (hh < H)
                for d in tl.static_range(3):
                    ww = offs_w + d - 1
                    m = hmask[:, None, None] & ((ww >= 0) & (ww < W))[None, :, None] & cmask[None, None, :]
                    offs = (hh[:, None, None] * W + ww[None, :, None]) * C + offs_c[None, None, :]
                    v = tl.load(src + offs, mask=m, other=0.0)
                    wt = tl.load(w_ptr + offs_c * 27 + (a * 9 + b * 3 + d), mask=cmask, other=0.0)
                    acc += v.to(ACC) * wt.to(ACC)[None, None, :]
        offs = (frame.to(tl.int64) * H * W + offs_h[:, None, None] * W + offs_w[None, :, None]) * C + \
            offs_c[None, None, :]
        m = (offs_h < H)[:, None, None] & (offs_w < W)[None, :, None] & cmask[None, None, :]
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _lsd_attend_kernel(q_ptr, kv_ptr, out_ptr, NW, HW, Wn, s_n, s_i, s_a, s_j, s_b, C, HD, scale,
                           S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
        """One head of BLOCK_N windows: scores scale * q . k_p over the S x S positions p, softmax, sum_p a_p v_p. The
        softmax is the online (running max) form, so each k_p and v_p tile is loaded once. q, out: [NW, C];
        kv row of position (a, b) of window (n, i, j) at n * s_n + i * s_i + a * s_a + j * s_j + b * s_b, keys in
        its first C channels and values in the next C."""
        win = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        wmask = win < NW
        col = tl.program_id(1) * HD + tl.arange(0, BLOCK_D)  # this head's channels
        m = wmask[:, None] & (tl.arange(0, BLOCK_D) < HD)[None, :]
        q = tl.load(q_ptr + win.to(tl.int64)[:, None] * C + col[None, :], mask=m, other=0.0).to(ACC)
        base = (win // HW).to(tl.int64) * s_n + ((win % HW) // Wn) * s_i + (win % Wn) * s_j
        run_max = tl.full((BLOCK_N,), float("-inf"), ACC)
        total = tl.zeros((BLOCK_N,), ACC)
        acc = tl.zeros((BLOCK_N, BLOCK_D), ACC)
        for a in tl.static_range(S):
            for b in tl.static_range(S):
                row = (base + a * s_a + b * s_b)[:, None]
                k = tl.load(kv_ptr + row + col[None, :], mask=m, other=0.0).to(ACC)
                score = tl.sum(q * k, 1) * scale
                new_max = tl.maximum(run_max, score)
                keep = tl.exp(run_max - new_max)
                e = tl.exp(score - new_max)
                v = tl.load(kv_ptr + row + C + col[None, :], mask=m, other=0.0).to(ACC)
                acc = acc * keep[:, None] + e[:, None] * v
                total = total * keep + e
                run_max = new_max
        out = acc / total[:, None]
        tl.store(out_ptr + win.to(tl.int64)[:, None] * C + col[None, :], out.to(out_ptr.dtype.element_ty), mask=m)

    @torch.library.triton_op("videopanda::lsd_attend", mutates_args=())
    def lsd_attend(q: torch.Tensor, kv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
        """LSD's attention inside each window (`STAB._fast_lsd`, "triton"): q [n, h, w, C]; kv
        [n, h, s, w, s, 2C] (keys, then values; any strides with a unit channel stride). Returns [n, h, w, C]: per
        head, the softmax over the s*s window positions of scale * q . k, applied to v. Scores and softmax in float32
        (float64 for float64 input)."""
        n, h, s, w, _, C2 = kv.shape
        C = C2 // 2
        if kv.stride(-1) != 1:
            kv = kv.contiguous()
        q = q.contiguous()
        out = torch.empty_like(q)
        NW, HD = n * h * w, C // num_heads
        s_n, s_i, s_a, s_j, s_b = kv.stride()[:5]
        grid = (triton.cdiv(NW, LSD_BLOCK_N), num_heads)
        torch.library.wrap_triton(_lsd_attend_kernel)[grid](
            q, kv, out, NW, h * w, w, s_n, s_i, s_a, s_j, s_b, C, HD, scale, S=s, BLOCK_N=LSD_BLOCK_N,
            BLOCK_D=triton.next_power_of_2(HD), num_warps=LSD_NUM_WARPS,
            ACC=tl.float64 if q.dtype == torch.float64 else tl.float32)
        return out

    @torch.library.triton_op("videopanda::dpe3d", mutates_args=())
    def dpe3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Depthwise 3x3x3 conv, zero padding 1, channels-last. x: [N, T, H, W, C]; weight: [C, 1, 3, 3, 3] (or
        [C, 27]); bias: [C]. Accumulates in float32 (float64 for float64 input), returns x's dtype."""
        x = x.contiguous()
        N, T, H, W, C = x.shape
        out = torch.empty_like(x)
        grid = (N * T * triton.cdiv(H, BLOCK_H), triton.cdiv(C, BLOCK_C))
        torch.library.wrap_triton(_dpe_kernel)[grid](
            x, weight.reshape(C, 27).contiguous(), bias.contiguous(), out, T, H, W, C, BLOCK_H=BLOCK_H,
            BLOCK_W=triton.next_power_of_2(W), BLOCK_C=BLOCK_C, num_warps=NUM_WARPS,
            ACC=tl.float64 if x.dtype == torch.float64 else tl.float32)
        return out

else:

    _NO_TRITON = "videopanda's Triton kernels need the `triton` package (installed with CUDA builds of torch)"

    def lsd_attend(q: torch.Tensor, kv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
        raise RuntimeError(_NO_TRITON)

    def dpe3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(_NO_TRITON)
