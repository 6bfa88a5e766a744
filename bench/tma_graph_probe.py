"""Can a host-TMA Triton GEMM live inside the compiled STAB's CUDA graph, and what does it save there?

bench/gemm_probe.py timed its fused GEMMs alone (session 10): the projector's first layer with the exact GELU in the
epilogue took 0.312 ms against 0.346 ms for cuBLAS + inductor's GELU pass, but only with host-side TMA descriptors
(`triton.tools.tensor_descriptor.TensorDescriptor`). This probe wraps that kernel as a `torch.library.triton_op`
(descriptors made inside the op), and times, each as a hand-captured CUDA graph:
- the projector alone at the 8-video token count (17472 rows): cuBLAS + GELU pass against the fused first layer;
- the whole STAB + projector at 1 and 8 videos, both ways, and with the LSTE's second conv, residual add and the
  dpe's zero border as one TMA GEMM (the residual_pad epilogue), alone and with the fused GELU.
A failure (tracing, compiling or capturing the op) is recorded in the JSON with its message.

    python bench/tma_graph_probe.py --out tma_graph.json     # on the GPU machine (bench/device_probe.sh's set-up)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed_probe as sp  # noqa: E402

from videopanda import bench as B  # noqa: E402
from videopanda.modeling import gemm_kernels as gp  # noqa: E402
from videopanda.modeling.stab import STAB  # noqa: E402

RESULT: dict = {"rows": []}
CFG = gp.Config.parse("128x256x64w8s3", "tma-persist")


def launch_linear_gelu(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, wrap: bool) -> torch.Tensor:
    """gelu(x @ w.T + bias), exact erf, in one persistent TMA GEMM (bench/gemm_probe.py's kernel). wrap: launch
    through `wrap_triton` (inside a triton_op) or directly (traced by dynamo as a user-defined Triton kernel)."""
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    x_desc = gp.TensorDescriptor.from_tensor(x, [CFG.bm, CFG.bk])
    w_desc = gp.TensorDescriptor.from_tensor(w, [CFG.bn, CFG.bk])
    n_work = ((M + CFG.bm - 1) // CFG.bm) * ((N + CFG.bn - 1) // CFG.bn)
    launch = min(n_work, torch.cuda.get_device_properties(x.device).multi_processor_count)
    kernel = torch.library.wrap_triton(gp.fused_linear_kernel) if wrap else gp.fused_linear_kernel
    kernel[(launch,)](
        x, w, x_desc, w_desc, bias, x, out, M, N, K, x.stride(0), w.stride(0), 0, out.stride(0), 0, n_work,
        BM=CFG.bm, BN=CFG.bn, BK=CFG.bk, GROUP_M=CFG.group_m, EVEN_K=K % CFG.bk == 0, USE_TMA=True, PERSISTENT=True,
        PREC="tf32", EPILOGUE="gelu", G=1, num_warps=CFG.warps, num_stages=CFG.stages)
    return out


@torch.library.triton_op("vpprobe::linear_gelu", mutates_args=())
def linear_gelu_op(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return launch_linear_gelu(x, w, bias, wrap=True)


def linear_gelu_direct(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return launch_linear_gelu(x, w, bias, wrap=False)


def graphed(fn, example: torch.Tensor):
    """fn compiled (static shapes) and captured as a CUDA graph on a static copy of `example`: (replay, output)."""
    return sp.capture(torch.compile(fn, dynamic=False), example)


def row(name: str, fn, example: torch.Tensor, want: torch.Tensor | None, **extra) -> torch.Tensor | None:
    entry = {"impl": name, **extra}
    t0 = time.perf_counter()
    try:
        replay, out = graphed(fn, example)
        entry["first_s"] = round(time.perf_counter() - t0, 1)
        entry["ms"] = sp.cuda_ms(replay)
        if want is not None:
            entry["max_diff"] = (out.float() - want.float()).abs().max().item()
        entry["table"] = sp.kernel_table(replay, rows=8)
    except Exception as err:  # the answer to "can it run in the graph" may be no
        entry["error"] = f"{type(err).__name__}: {err}"[:600]
        entry["traceback"] = traceback.format_exc()[-2000:]
        out = None
    RESULT["rows"].append(entry)
    print({k: v for k, v in entry.items() if k not in ("table", "traceback")}, flush=True)
    return out


PAD_CFG = gp.Config.parse("128x256x64w8s3", "tma")


def residual_pad_direct(z: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor,
                        grid: int) -> torch.Tensor:
    """residual + z @ w.T + bias, written into a [frames, grid + 2, grid + 2, N] buffer with a zero border (the
    dpe's input) by one TMA GEMM launched directly (bench/gemm_probe.py's kernel, residual_pad epilogue)."""
    M, K = z.shape
    N = w.shape[0]
    frames = M // (grid * grid)
    out = torch.empty(frames, grid + 2, grid + 2, N, device=z.device, dtype=z.dtype)
    n_border = gp.border_rows(frames, grid)
    n_work = ((M + PAD_CFG.bm - 1) // PAD_CFG.bm) * ((N + PAD_CFG.bn - 1) // PAD_CFG.bn) + \
        ((n_border + PAD_CFG.bm - 1) // PAD_CFG.bm) * ((N + PAD_CFG.bn - 1) // PAD_CFG.bn)
    z_desc = gp.TensorDescriptor.from_tensor(z, [PAD_CFG.bm, PAD_CFG.bk])
    w_desc = gp.TensorDescriptor.from_tensor(w, [PAD_CFG.bn, PAD_CFG.bk])
    gp.fused_linear_kernel[(n_work,)](
        z, w, z_desc, w_desc, bias, residual, out, M, N, K, z.stride(0), w.stride(0), residual.stride(0),
        out.stride(-2), n_border, n_work, BM=PAD_CFG.bm, BN=PAD_CFG.bn, BK=PAD_CFG.bk, GROUP_M=PAD_CFG.group_m,
        EVEN_K=K % PAD_CFG.bk == 0, USE_TMA=True, PERSISTENT=False, PREC="tf32", EPILOGUE="residual_pad", G=grid,
        num_warps=PAD_CFG.warps, num_stages=PAD_CFG.stages)
    return out


def fused_lste(self, x: torch.Tensor, y: torch.Tensor):
    """STAB._fast_lste with the second 1x1x1 conv, the residual add and the dpe's zero border in one GEMM."""
    from videopanda.modeling import kernels
    from videopanda.modeling.stab import _shifted_sum

    taps, b1 = self._fold_lste_taps, self._fold_lste_b1
    z = _shifted_sum(y, taps, dim=1) + _shifted_sum(b1.expand(1, x.shape[1], 1, 1, -1), taps, dim=1)
    n, t, G, _, C = x.shape
    xp = residual_pad_direct(z.reshape(-1, z.shape[-1]), self._fold_lste_w2, self._fold_lste_b2,
                             x.reshape(-1, C), G).view(n, t, G + 2, G + 2, C)
    return kernels.dpe3d_residual(xp, self._fold_dpe_w, self.dpe.bias, x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    stab, projector = B._visual_encoder("videopanda-7b", 4096, device, dtype)
    stab.fuse()
    first, act, second = projector[0], projector[1], projector[2]
    assert isinstance(act, torch.nn.GELU) and act.approximate == "none"

    forms = {"op": linear_gelu_op, "direct": linear_gelu_direct}
    with torch.inference_mode():
        tokens = torch.randn(17472, first.in_features, device=device, dtype=dtype)
        want = row("projector cublas+gelu", projector, tokens, None, rows_in=17472)
        for name, fused in forms.items():
            row(f"projector fused-gelu tma {name}", lambda t, f=fused: second(f(t, first.weight, first.bias)),
                tokens, want, rows_in=17472)
        for b in (1, 8):
            px = B.pixel_values(B.synthetic_videos(b, 8, 448, seed=b), "videopanda-7b").to(device, dtype)
            want = row("stab+projector cublas+gelu", lambda p: projector(stab(p, crop_boxes="full").tokens), px,
                       None, batch=b)
            for name, fused in forms.items():
                row(f"stab+projector fused-gelu tma {name}",
                    lambda p, f=fused: second(f(stab(p, crop_boxes="full").tokens, first.weight, first.bias)), px,
                    want, batch=b)
            package_lste = STAB._fast_lste
            STAB._fast_lste = fused_lste
            try:
                row("stab+projector fused-residual-pad tma", lambda p: projector(stab(p, crop_boxes="full").tokens),
                    px, want, batch=b)
                row("stab+projector fused-residual-pad + fused-gelu tma",
                    lambda p: second(linear_gelu_direct(stab(p, crop_boxes="full").tokens, first.weight, first.bias)),
                    px, want, batch=b)
            finally:
                STAB._fast_lste = package_lste
            row("stab+projector cublas+gelu (again)", lambda p: projector(stab(p, crop_boxes="full").tokens), px,
                want, batch=b)
            torch._dynamo.reset()
    RESULT.update(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=gp.triton.__version__,
                  command="python bench/tma_graph_probe.py --out " + args.out)
    Path(args.out).write_text(json.dumps(RESULT, indent=1))


if __name__ == "__main__":
    main()
