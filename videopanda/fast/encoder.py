"""`FastEncoder`: the model's visual encode (`encode_video_flat`) through the FusedSTAB and the model's projector.

The model itself stays plain and trainable; this object holds the inference form next to it, sharing every weight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..modeling.videopanda import encode_by_frame_count
from .options import FastOptions
from .stab import CropBoxes, FusedSTAB


class FastEncoder:
    """`encoder(pixel_values, crop_boxes=None)` -> (tokens [N_total, D], tokens per video), as
    `VideoPandaForCausalLM.encode_video_flat` returns them, through a `FusedSTAB` of `model.video_tower` and
    `model.video_projector` (both shared with the model, not copied).

    Args:
        model: a loaded `VideoPandaForCausalLM` (weights, dtype and device final: the STAB's folds are made from them).
        options: the form of each fast kernel.
    Attributes: `stab` (the FusedSTAB), `projector` (the model's). After the model's weights change, call
    `self.stab.refold()`.
    """

    def __init__(self, model: nn.Module, options: FastOptions = FastOptions()) -> None:
        self.stab = FusedSTAB(model.video_tower, options)
        self.projector = model.video_projector
        self._fn: Callable[[torch.Tensor, CropBoxes | None], tuple[torch.Tensor, list]] = self._encode

    @property
    def options(self) -> FastOptions:
        return self.stab.options

    def compile(self, mode: str | None = None) -> FastEncoder:
        """Compile the tensor encode (FusedSTAB + projector; static shapes: each input shape and set of crop boxes
        compiles once). With crop boxes given from the host and mode "reduce-overhead", a call replays CUDA graphs.
        Returns self."""
        self._fn = torch.compile(self._encode, mode=mode, dynamic=False)
        return self

    def _encode(self, pixel_values: torch.Tensor, crop_boxes: CropBoxes | None
                ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(projected tokens [N, D], the frames' LSD grids (h, w) as host ints)."""
        out = self.stab(pixel_values, crop_boxes=crop_boxes)
        return self.projector(out.tokens), out.grid

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor | list[torch.Tensor],
                 crop_boxes: CropBoxes | None = None) -> tuple[torch.Tensor, list[int]]:
        """pixel_values: [B, T, 4, S, S], [B, 4, S, S] images, or a list of [T_b, 4, S, S] (one FusedSTAB batch per
        distinct T). crop_boxes (tensor input only): the frames' boxes read on the host beforehand
        (`self.stab.crop_boxes_for(pixel_values)` on the processor's output) or "full", so the call needs no host
        sync. Returns ([N_total, D] in LLM order, tokens per video)."""
        if isinstance(pixel_values, torch.Tensor):
            return self._encode_tensor(pixel_values, crop_boxes)
        if crop_boxes is not None:
            raise ValueError("crop_boxes is for a [B, T, 4, S, S] tensor of pixel values, not a list of videos")
        return encode_by_frame_count(pixel_values, lambda batch: self._encode_tensor(batch, None))

    def _encode_tensor(self, pixel_values: torch.Tensor, crop_boxes: CropBoxes | None
                       ) -> tuple[torch.Tensor, list[int]]:
        if pixel_values.ndim == 4:  # [B, 4, S, S] images
            pixel_values = pixel_values[:, None]
        if pixel_values.ndim != 5 or pixel_values.shape[2] != 4:
            raise ValueError(f"pixel_values must be [B, T, 4, S, S] (RGB + valid-pixel mask), "
                             f"got {tuple(pixel_values.shape)}")
        weight = self.projector[0].weight  # processors give float32; a bf16 model computes in bf16
        T = pixel_values.shape[1]
        tokens, grid = self._fn(pixel_values.to(device=weight.device, dtype=weight.dtype), crop_boxes)
        per_frame = [1 + h * (w + 1) for h, w in grid]
        return tokens, [sum(per_frame[i:i + T]) for i in range(0, len(per_frame), T)]
