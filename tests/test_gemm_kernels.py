"""The fused GEMM + epilogue kernel (videopanda/fast/gemm_kernels.py, timed by bench/gemm_probe.py) computes what
torch computes, masks included, and leaves the padded buffer's border exactly zero. Without a GPU it runs under
Triton's interpreter (set before Triton is imported, as tests/conftest.py does), on float32 inputs: the interpreter's
bfloat16 tl.dot is not faithful on CPU."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")


gk = importlib.import_module("videopanda.fast.gemm_kernels")
ROOT = Path(__file__).resolve().parents[1]
DEV = "cuda" if torch.cuda.is_available() else "cpu"
# Small tiles so that the tiny shapes span several tiles, a short last group, and tails in M, N and K.
VARIANTS = ["ptr", "tma", "ptr-persist", "tma-persist"]
if gk.TensorDescriptor is None:
    VARIANTS = [v for v in VARIANTS if not v.startswith("tma")]


# the interpreter's scalar indexing, patched for NumPy >= 2.4 (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("scalar_index")


def _inputs(m: int, k: int, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    return tuple(t.to(DEV) for t in (x, w, b))


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 accumulation of K <= 48 products of O(1) numbers against float64."""
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() < 1e-4


# (37, 48, 40): tails in M, N and K (BK=32); (64, 32, 64): every tile full; (37, 40, 24): K=40 for the pointer loads
# only, as the interpreter wants TMA strides of 16 *elements* (the GPU wants 16 bytes).
SHAPES = [(v, 37, 48, 40) for v in VARIANTS] + [(v, 64, 32, 64) for v in VARIANTS] + \
    [(v, 37, 40, 24) for v in VARIANTS if v.startswith("ptr")]


@pytest.mark.parametrize(("variant", "m", "k", "n"), SHAPES)
def test_gelu_epilogue(variant, m, k, n):
    x, w, b = _inputs(m, k, n)
    cfg = gk.Config.parse("16x32x32w4s2g2", variant)
    got = gk.fused_linear(x, w, b, cfg, "gelu", programs=3)
    want = F.gelu(F.linear(x.double(), w.double(), b.double()))
    assert got.shape == (m, n)
    _close(got, want)


@pytest.mark.parametrize("variant", VARIANTS)
def test_residual_pad_epilogue(variant):
    """F=2 frames of a 4x4 grid, K=48 and N=48 (tails in K and N): interior = product + bias + residual, border
    exactly 0 even where the buffer held NaN."""
    frames, grid, k, n = 2, 4, 48, 48
    m = frames * grid * grid
    x, w, b = _inputs(m, k, n, seed=1)
    r = torch.randn(m, n, generator=torch.Generator().manual_seed(2)).to(DEV)
    cfg = gk.Config.parse("16x32x32w4s2g2", variant)
    out = torch.full((frames, grid + 2, grid + 2, n), float("nan"), device=DEV)
    got = gk.fused_linear(x, w, b, cfg, "residual_pad", residual=r, grid=grid, out=out, programs=3)
    assert got is out
    want = F.pad((r.double() + F.linear(x.double(), w.double(), b.double())).view(frames, grid, grid, n),
                 (0, 0, 1, 1, 1, 1))
    _close(got, want)
    border = torch.ones(grid + 2, grid + 2, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert (got[:, border] == 0).all()  # == 0 is False for NaN: every border cell was written


def test_residual_pad_keep_border_writes_the_interior_only():
    """zero_border=False (a reused buffer): the border is left as it was, the interior is still right."""
    frames, grid, k, n = 3, 4, 24, 32
    m = frames * grid * grid
    x, w, b = _inputs(m, k, n, seed=3)
    r = torch.randn(m, n, generator=torch.Generator().manual_seed(4)).to(DEV)
    out = torch.full((frames, grid + 2, grid + 2, n), 7.0, device=DEV)
    gk.fused_linear(x, w, b, gk.Config.parse("32x32x8w4s2"), "residual_pad", residual=r, grid=grid, out=out,
                       zero_border=False)
    want = (r.double() + F.linear(x.double(), w.double(), b.double())).view(frames, grid, grid, n)
    _close(out[:, 1:-1, 1:-1], want)
    assert (out[:, 0] == 7).all() and (out[:, :, -1] == 7).all()


def test_border_rows_cover_the_border_once():
    """The border-row enumeration of the kernel, replayed in torch: each border cell once, no interior cell."""
    frames, grid = 3, 5
    b = torch.arange(gk.border_rows(frames, grid))
    w = grid + 2
    f, j = b // (4 * grid + 4), b % (4 * grid + 4)
    side = (j - 2 * w).clamp(min=0)
    py = torch.where(j < w, 0, torch.where(j < 2 * w, grid + 1, side // 2 + 1))
    px = torch.where(j < w, j, torch.where(j < 2 * w, j - w, (side % 2) * (grid + 1)))
    hit = torch.zeros(frames, w, w, dtype=torch.long)
    hit.index_put_((f, py, px), torch.ones_like(b), accumulate=True)
    border = torch.ones(w, w, dtype=torch.long)
    border[1:-1, 1:-1] = 0
    assert torch.equal(hit, border.expand(frames, w, w))


def test_config_parse_and_unknown_names():
    cfg = gk.Config.parse("128x256x64w8s3", "tma-persist")
    assert (cfg.bm, cfg.bn, cfg.bk, cfg.warps, cfg.stages, cfg.group_m, cfg.tma, cfg.persistent) == \
        (128, 256, 64, 8, 3, 8, True, True)
    assert cfg.name == "128x256x64w8s3g8:tma-persist"
    assert gk.Config.parse("256x128x64w8s4g16").group_m == 16
    with pytest.raises(ValueError, match="variant"):
        gk.Config.parse("128x128x64w8s4", "wgmma")
    with pytest.raises(ValueError, match="epilogue"):
        gk.fused_linear(*_inputs(4, 8, 8), gk.Config(), "relu")


def test_probe_command_line(tmp_path):
    """`python bench/gemm_probe.py`, run as users run it: its help offers the package's epilogues, its flags parse, and
    without a GPU (TRITON_INTERPRET set, on any machine) it refuses in one line and writes nothing."""
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def probe(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "bench/gemm_probe.py", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    out = tmp_path / "x.json"
    ran = probe("--help")
    assert ran.returncode == 0 and "--no-graph" in ran.stdout and "--configs" in ran.stdout
    assert f"(default: {','.join(gk.EPILOGUES)})" in " ".join(ran.stdout.split())
    ran = probe("--out", str(out), "--configs", "64x64x32w4s2", "--no-graph")
    assert ran.returncode == 1 and ran.stderr.strip().splitlines()[-1] == \
        "gemm_probe times CUDA kernels: run it on a GPU, without TRITON_INTERPRET"
    assert not out.exists()
