"""The visual encode (STAB + projector) captured as CUDA graphs and replayed.

Why: for one 7B video the compiled STAB + projector is a few dozen short kernels, so its time is mostly launches. A
CUDA graph replays them in one launch (0.55 ms on an H100, against 1.7-3.1 ms compiled). torch.compile's
own graphs (mode "reduce-overhead") do the same but add guard checks and input bookkeeping on the host for every call,
which showed as 0.2-0.3 ms more per call on the H100 hosts measured. Here a call costs one small fill and one replay.

A graph is fixed to its input shape, dtype and the frames' crop boxes (static shapes inside the STAB), so the boxes
must come from the host (`FusedSTAB.crop_boxes_for` on the processor's output); each new combination is captured once.

The graph does not copy the caller's pixels (103 MB at 8 videos of the 7B STAB, 0.08 ms): its first kernel, the
patch unfold, reads them at an address held in a one-element device tensor (`kernels.patch_unfold_at`), which a call
sets with one small fill. Where the FusedSTAB's unfold is not the Triton kernel, a call copies the pixels into the
graph's input instead.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import kernels
from .stab import FusedSTAB


@dataclass
class _Captured:
    graph: Any
    input: torch.Tensor  # the pixels' address (one int64), or a static copy of the pixels
    output: torch.Tensor
    by_address: bool


class GraphedEncoder:
    """`encoder(pixel_values, crop_boxes)` -> projected visual tokens [N, D] in LLM order, as
    `VideoPandaForCausalLM.encode_video_flat` returns them, replayed from a CUDA graph on a GPU.

    Args:
        stab: the fused STAB (`FusedSTAB`).
        projector: the projector (`model.video_projector`).
        compile: run inductor on the encode before capturing (fewer, fused kernels in the graph).
        max_graphs: graphs kept (least recently used dropped); each holds its shape's activations.
        by_address: let the graphs read the caller's pixels where they are (where the STAB's unfold is the Triton
            kernel); False copies them into each graph's own input (0.08 ms more at 8 videos of the 7B STAB).

    The returned tensor is the graph's output buffer: the next call with the same shape and boxes overwrites it, so
    clone it to keep it. Off CUDA the encode simply runs (no graphs).
    """

    def __init__(self, stab: FusedSTAB, projector: nn.Module, *, compile: bool = True, max_graphs: int = 4,
                 by_address: bool = True) -> None:
        if not isinstance(stab, FusedSTAB):
            raise ValueError(f"GraphedEncoder needs a FusedSTAB (videopanda.fast.FusedSTAB(stab)), got "
                             f"{type(stab).__name__}")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.stab, self.projector, self.max_graphs, self.by_address = stab, projector, max_graphs, by_address
        self.fn = torch.compile(self._encode, dynamic=False) if compile else self._encode
        self.graphs: OrderedDict[tuple, _Captured] = OrderedDict()

    def _encode(self, pixel_values: torch.Tensor, boxes: list[tuple[int, ...]],
                address: torch.Tensor | None = None) -> torch.Tensor:
        return self._project(self.stab(pixel_values, crop_boxes=boxes, pixel_address=address).tokens)

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        """The projector; for many tokens (several videos) on a GPU with TMA, its first layer and exact GELU as one
        GEMM (`gemm_kernels.linear_gelu`; the FusedSTAB's `FastOptions.gemm` switches it too). Off CUDA, i.e. under
        Triton's interpreter with FastOptions.gemm="triton" (the tests), at any token count."""
        p = self.projector
        if isinstance(p, nn.Sequential) and len(p) == 3 and isinstance(p[0], nn.Linear) and \
                isinstance(p[1], nn.GELU) and p[1].approximate == "none" and self.stab.gemm_form(tokens) == "triton":
            from . import gemm_kernels

            if tokens.shape[0] >= gemm_kernels.GELU_MIN_ROWS or not tokens.is_cuda:
                return p[2](gemm_kernels.linear_gelu(tokens, p[0].weight, p[0].bias))
        return p(tokens)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor, crop_boxes: Sequence[Sequence[int]]) -> torch.Tensor:
        if isinstance(crop_boxes, torch.Tensor):
            crop_boxes = crop_boxes.tolist()
        # plain tuples: 2 us for 64 boxes where converting every value with int() took 66 us, a host delay that the
        # idle GPU waits out at each call (the values become ints once, when a new layout is captured)
        boxes = tuple(map(tuple, crop_boxes))
        if pixel_values.device.type != "cuda":
            return self.fn(pixel_values, _ints(boxes))
        key = (tuple(pixel_values.shape), pixel_values.dtype, pixel_values.device, boxes)
        captured = self.graphs.get(key)
        if captured is None:
            captured = self._capture(pixel_values, _ints(boxes))
            self.graphs[key] = captured
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        if captured.by_address:
            # the replay reads the caller's pixels where they are, on this stream, as the copy it replaces did: they
            # may be freed once this returns, since later work on the stream runs after the replay
            pixel_values = pixel_values.contiguous()
            captured.input.fill_(pixel_values.data_ptr())
        else:
            captured.input.copy_(pixel_values)
        captured.graph.replay()
        return captured.output

    def _capture(self, pixel_values: torch.Tensor, boxes: list[tuple[int, ...]]) -> _Captured:
        """Warm up on a side stream (compilation, Triton and cuBLAS set-up happen outside the capture), then
        capture one call that reads the pixels at an address tensor, or else from a static copy."""
        with torch.cuda.device(pixel_values.device):
            by_address = self.by_address and self.stab.options.unfold in ("auto", "triton") and \
                pixel_values.dtype.is_floating_point and kernels.available(pixel_values)
            if by_address:
                static = pixel_values.contiguous()
                address = torch.tensor([static.data_ptr()], dtype=torch.int64, device=static.device)
                stand_in = static.new_zeros(()).expand(static.shape)  # shape and dtype only, never read
                args = (stand_in, boxes, address)
            else:
                static = pixel_values.clone()
                address, args = None, (static, boxes)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.fn(*args)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with _own_cublas_workspace(), torch.cuda.graph(graph):
                output = self.fn(*args)
        return _Captured(graph, static if address is None else address, output, address is not None)


@contextlib.contextmanager
def _own_cublas_workspace() -> Iterator[None]:
    """Clear PyTorch's cached cuBLAS workspaces before and after a capture, as torch's own CUDA graphs
    (cudagraph trees) do: the capture then allocates its workspace in the graph's private pool, and nothing outside
    the graph keeps using it. Without this, the workspace made during one capture stayed cached for the stream after
    its graph was dropped, and the next GraphedEncoder's replay failed with "CUDA error: unspecified launch failure"
    (seen on an H100 with torch 2.11)."""
    torch._C._cuda_clearCublasWorkspaces()
    try:
        yield
    finally:
        torch._C._cuda_clearCublasWorkspaces()


def _ints(boxes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in b) for b in boxes]
