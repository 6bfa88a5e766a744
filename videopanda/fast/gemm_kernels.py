"""GEMMs with fused epilogues (Triton, Hopper TMA loads) for the compiled STAB's largest element-wise passes.

Two products of the fused STAB + projector are each followed by a pass that reads and writes their whole output:
- the projector's first layer, then its exact (erf) GELU (`linear_gelu`);
- the LSTE's second 1x1x1 conv, then the residual add and the zero border that the dpe kernel reads
  (`linear_residual_pad`).
Here one kernel does both: the epilogue applies the step to the float32 tile and rounds once. cuBLAS's main loop is
faster (600-690 TFLOP/s against 370-470 for these kernels), so the fused form wins only by the pass it saves: about
0.06 ms of 3.1 ms at 8 videos of the 7B STAB inside its CUDA graph (docs/speed.md; bench/gemm_probe.py times them
alone, bench/speed_probe.py inside the graph). They run where `tma_available` says: a GPU with TMA
(compute capability 9.0+), or Triton's interpreter for the CPU tests. They are launched directly, not as a
`triton_op`: torch.compile traces a direct launch with its host-side TMA descriptors, and failed on descriptors made
inside a `triton_op`.

Imported only where used (it needs Triton).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

EPILOGUES = ("gelu", "residual_pad")


# ---------------------------------------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------------------------------------
@triton.jit
def _tile_of(tile, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped order: consecutive tiles walk down GROUP_M row blocks before moving one column block right, so a wave
    of programs shares a few x row blocks and w column blocks in L2 instead of streaming all of w per row block."""
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(N, BN)
    group = tile // (GROUP_M * n_n)
    first = group * GROUP_M
    height = tl.minimum(n_m - first, GROUP_M)  # the last group may be shorter
    inner = tile - group * GROUP_M * n_n
    return first + inner % height, inner // height


@triton.jit
def _main_loop(x, w, x_desc, w_desc, M, N, K, stride_xm, stride_wn, m0, n0,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr,
               USE_TMA: tl.constexpr, PREC: tl.constexpr):
    """acc[BM, BN] = x[m0:m0+BM, :] @ w[n0:n0+BN, :].T in float32. Rows/columns past M/N and the K tail read as 0
    (masks on the pointer path, the descriptor's zero padding on the TMA path)."""
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    if USE_TMA:
        for k0 in tl.range(0, K, BK):
            a = x_desc.load([m0, k0])
            b = w_desc.load([n0, k0])
            acc = tl.dot(a, b.T, acc, input_precision=PREC)
    else:
        rm = m0 + tl.arange(0, BM)
        rn = n0 + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        a_ptrs = x + rm.to(tl.int64)[:, None] * stride_xm + rk[None, :]
        b_ptrs = w + rn.to(tl.int64)[None, :] * stride_wn + rk[:, None]  # w read as its transpose [BK, BN]
        a_rows = (rm < M)[:, None]
        b_cols = (rn < N)[None, :]
        for k0 in tl.range(0, K, BK):
            if EVEN_K:
                a = tl.load(a_ptrs, mask=a_rows, other=0.0)
                b = tl.load(b_ptrs, mask=b_cols, other=0.0)
            else:
                a = tl.load(a_ptrs, mask=a_rows & (rk[None, :] < K - k0), other=0.0)
                b = tl.load(b_ptrs, mask=b_cols & (rk[:, None] < K - k0), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PREC)
            a_ptrs += BK
            b_ptrs += BK
    return acc


@triton.jit
def _epilogue(acc, bias, res, out, M, N, stride_rm, stride_om, m0, n0,
              BM: tl.constexpr, BN: tl.constexpr, EPILOGUE: tl.constexpr, G: tl.constexpr):
    """bias + the element-wise step on the float32 tile, one rounding to the output type, and the store."""
    rm = m0 + tl.arange(0, BM)
    rn = n0 + tl.arange(0, BN)
    ok = (rm < M)[:, None] & (rn < N)[None, :]
    v = acc + tl.load(bias + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == "gelu":
        y = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
        dst = out + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    else:  # residual_pad: row m = (f, y, x) of the G x G grid goes to (f, y + 1, x + 1) of the (G + 2)^2 one
        r = tl.load(res + rm.to(tl.int64)[:, None] * stride_rm + rn[None, :], mask=ok, other=0.0)
        y = v + r.to(tl.float32)
        f = rm // (G * G)
        cell = rm - f * (G * G)
        gy = cell // G
        prow = (f * (G + 2) + gy + 1) * (G + 2) + (cell - gy * G) + 1
        dst = out + prow.to(tl.int64)[:, None] * stride_om + rn[None, :]
    tl.store(dst, y.to(out.dtype.element_ty), mask=ok)


@triton.jit
def _zero_border(out, N, n_border, stride_om, item,
                 BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr):
    """Zero BM x BN of the border rows. Border row b of frame f = b // (4G + 4) is, in order: the top row (G + 2
    cells), the bottom row (G + 2), then the left and right cell of each of the G inner rows."""
    n_n = tl.cdiv(N, BN)
    b = (item // n_n) * BM + tl.arange(0, BM)
    rn = (item % n_n) * BN + tl.arange(0, BN)
    W = G + 2  # a constexpr, as G is
    f = b // (4 * G + 4)
    j = b - f * (4 * G + 4)
    side = j - 2 * W  # only used where j >= 2W
    py = tl.where(j < W, 0, tl.where(j < 2 * W, G + 1, side // 2 + 1))
    px = tl.where(j < W, j, tl.where(j < 2 * W, j - W, (side % 2) * (G + 1)))
    prow = (f * W + py) * W + px
    zero = tl.zeros([BM, BN], dtype=out.dtype.element_ty)
    tl.store(out + prow.to(tl.int64)[:, None] * stride_om + rn[None, :], zero,
             mask=(b < n_border)[:, None] & (rn < N)[None, :])


@triton.jit
def _work(item, x, w, x_desc, w_desc, bias, res, out, M, N, K, stride_xm, stride_wn, stride_rm, stride_om, n_border,
          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
          USE_TMA: tl.constexpr, PREC: tl.constexpr, EPILOGUE: tl.constexpr, G: tl.constexpr):
    """Work items 0 .. tiles-1 are output tiles; the rest (residual_pad with the border on) zero border blocks."""
    n_tiles = tl.cdiv(M, BM) * tl.cdiv(N, BN)
    if item < n_tiles:
        pid_m, pid_n = _tile_of(item, M, N, BM, BN, GROUP_M)
        m0 = pid_m * BM
        n0 = pid_n * BN
        acc = _main_loop(x, w, x_desc, w_desc, M, N, K, stride_xm, stride_wn, m0, n0, BM, BN, BK, EVEN_K, USE_TMA,
                         PREC)
        _epilogue(acc, bias, res, out, M, N, stride_rm, stride_om, m0, n0, BM, BN, EPILOGUE, G)
    else:
        _zero_border(out, N, n_border, stride_om, item - n_tiles, BM, BN, G)


@triton.jit
def fused_linear_kernel(x, w, x_desc, w_desc, bias, res, out, M, N, K, stride_xm, stride_wn, stride_rm, stride_om,
                        n_border, n_work,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                        EVEN_K: tl.constexpr, USE_TMA: tl.constexpr, PERSISTENT: tl.constexpr, PREC: tl.constexpr,
                        EPILOGUE: tl.constexpr, G: tl.constexpr):
    """out = EPILOGUE(x @ w.T + bias): one work item per program, or (PERSISTENT) a grid of about one program per SM
    striding over the items, which saves the launch of ~16 waves of short-lived programs and lets the tail's border
    blocks fill SMs whose last tile ended early."""
    if PERSISTENT:
        for item in tl.range(tl.program_id(0), n_work, tl.num_programs(0)):
            _work(item, x, w, x_desc, w_desc, bias, res, out, M, N, K, stride_xm, stride_wn, stride_rm, stride_om,
                  n_border, BM, BN, BK, GROUP_M, EVEN_K, USE_TMA, PREC, EPILOGUE, G)
    else:
        _work(tl.program_id(0), x, w, x_desc, w_desc, bias, res, out, M, N, K, stride_xm, stride_wn, stride_rm,
              stride_om, n_border, BM, BN, BK, GROUP_M, EVEN_K, USE_TMA, PREC, EPILOGUE, G)


# ---------------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One launch configuration: tile BM x BN x BK, warps, pipeline stages, group height, and the variant."""

    bm: int = 128
    bn: int = 256
    bk: int = 64
    warps: int = 8
    stages: int = 3
    group_m: int = 8
    tma: bool = False
    persistent: bool = False

    @classmethod
    def parse(cls, spec: str, variant: str = "ptr") -> Config:
        """'128x256x64w8s3' (optionally 'g8' for the group height) and a variant 'ptr', 'tma', 'ptr-persist' or
        'tma-persist'."""
        tile, _, rest = spec.partition("w")
        bm, bn, bk = (int(v) for v in tile.split("x"))
        warps, _, rest = rest.partition("s")
        stages, _, group = rest.partition("g")
        kind, _, persist = variant.partition("-")
        if kind not in ("ptr", "tma") or persist not in ("", "persist"):
            raise ValueError(f"unknown variant {variant!r}: ptr, tma, ptr-persist or tma-persist")
        return cls(bm, bn, bk, int(warps), int(stages), int(group or 8), kind == "tma", persist == "persist")

    @property
    def name(self) -> str:
        variant = ("tma" if self.tma else "ptr") + ("-persist" if self.persistent else "")
        return f"{self.bm}x{self.bn}x{self.bk}w{self.warps}s{self.stages}g{self.group_m}:{variant}"


def border_rows(frames: int, grid: int) -> int:
    """Rows of a [frames, grid + 2, grid + 2] buffer that are not interior: the zero border."""
    return frames * (4 * grid + 4)


def fused_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, cfg: Config, epilogue: str = "gelu",
                 residual: torch.Tensor | None = None, grid: int = 0, out: torch.Tensor | None = None,
                 zero_border: bool = True, programs: int | None = None, info: dict | None = None) -> torch.Tensor:
    """epilogue(x @ w.T + bias) in one launch.

    gelu: returns [M, N]. residual_pad: x has M = F * grid**2 rows, residual is [M, N], and the result is
    [F, grid + 2, grid + 2, N] with a zero border (written by the kernel unless zero_border=False, for a reused `out`
    whose border is already zero). `programs` caps the persistent grid (default: the SM count). `info`, if given,
    receives what the compiler made of it (registers, spills, whether the PTX uses Hopper's wgmma / TMA).
    """
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, not {epilogue!r}")
    M, K = x.shape
    N = w.shape[0]
    assert w.shape[1] == K and bias.shape == (N,) and x.stride(1) == 1 and w.stride(1) == 1
    if epilogue == "gelu":
        out = torch.empty(M, N, device=x.device, dtype=x.dtype) if out is None else out
        assert out.shape == (M, N) and out.stride(1) == 1
        res, n_border, stride_rm, g = x, 0, 0, 1  # res unused; g only needs to be a valid constexpr
    else:
        assert grid > 0 and M % (grid * grid) == 0, "residual_pad needs M = frames * grid**2"
        assert residual is not None and residual.shape == (M, N) and residual.stride(1) == 1
        frames = M // (grid * grid)
        if out is None:
            out = torch.empty(frames, grid + 2, grid + 2, N, device=x.device, dtype=x.dtype)
        assert out.shape == (frames, grid + 2, grid + 2, N) and out.is_contiguous()
        res, stride_rm, g = residual, residual.stride(0), grid
        n_border = border_rows(frames, grid) if zero_border else 0
    n_tiles = triton.cdiv(M, cfg.bm) * triton.cdiv(N, cfg.bn)
    n_work = n_tiles + triton.cdiv(n_border, cfg.bm) * triton.cdiv(N, cfg.bn)
    if cfg.tma:
        if TensorDescriptor is None:
            raise RuntimeError("this triton has no host-side TensorDescriptor")
        x_desc = TensorDescriptor.from_tensor(x, [cfg.bm, cfg.bk])
        w_desc = TensorDescriptor.from_tensor(w, [cfg.bn, cfg.bk])
    else:
        x_desc = w_desc = None
    if cfg.persistent:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        launch = min(n_work, programs or sms)
    else:
        launch = n_work
    prec = "ieee" if x.dtype == torch.float32 else "tf32"  # only float32 operands read it; ieee = exact test math
    compiled = fused_linear_kernel[(launch,)](
        x, w, x_desc, w_desc, bias, res, out, M, N, K, x.stride(0), w.stride(0), stride_rm, out.stride(-2),
        n_border, n_work, BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, GROUP_M=cfg.group_m, EVEN_K=K % cfg.bk == 0,
        USE_TMA=cfg.tma, PERSISTENT=cfg.persistent, PREC=prec, EPILOGUE=epilogue, G=g,
        num_warps=cfg.warps, num_stages=cfg.stages)
    if info is not None and hasattr(compiled, "asm"):
        ptx = compiled.asm.get("ptx", "")
        info.update(programs=launch, regs=getattr(compiled, "n_regs", None), spills=getattr(compiled, "n_spills", None),
                    shared_bytes=getattr(compiled.metadata, "shared", None), wgmma="wgmma" in ptx,
                    tma="cp.async.bulk.tensor" in ptx)
    return out


# The configurations the package uses (bench/gemm_probe.py's best on an H100, h100_gemm_epilogues.json): 128 x 256
# tiles, K steps of 64, 8 warps, 3 stages, TMA loads; the GELU GEMM as a persistent grid.
GELU_CONFIG = Config(128, 256, 64, 8, 3, 8, tma=True, persistent=True)
PAD_CONFIG = Config(128, 256, 64, 8, 3, 8, tma=True, persistent=False)
# below this many rows the persistent GELU GEMM lost to cuBLAS + the GELU pass (1 video, 2184 rows: 0.76 vs 0.53 ms)
GELU_MIN_ROWS = 8192


def tma_available(x: torch.Tensor) -> bool:
    """Whether the TMA kernels can run on x: Triton's interpreter (tests), or a CUDA GPU of compute capability 9.0+,
    with host-side tensor descriptors in this Triton."""
    if TensorDescriptor is None:
        return False
    if x.is_cuda:
        return torch.cuda.get_device_capability(x.device)[0] >= 9
    return os.environ.get("TRITON_INTERPRET") == "1"


def linear_gelu(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu(x @ w.T + bias) with the exact (erf) GELU, one launch: x [M, K], w [N, K] -> [M, N]."""
    return fused_linear(x.contiguous(), w.contiguous(), bias, GELU_CONFIG, "gelu")


def linear_residual_pad(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor,
                        grid: int) -> torch.Tensor:
    """residual + x @ w.T + bias, written into a [F, grid + 2, grid + 2, N] buffer with a zero border (what
    `F.pad(., (0, 0, 1, 1, 1, 1))` of the [F, grid, grid, N] sum makes), one launch: x [F * grid**2, K],
    residual [F * grid**2, N]."""
    return fused_linear(x.contiguous(), w.contiguous(), bias, PAD_CONFIG, "residual_pad",
                        residual=residual.contiguous(), grid=grid)
