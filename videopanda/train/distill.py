"""Distillation in the training recipe (`videopanda train --distill languagebind|hf --teacher FOLDER`).

What it adds to a step (spec 5.4, 5.5): the forward returns the LLM's hidden states, the frozen teacher encodes the
batch's teacher pixel values, and `weight * video_loss` joins the LM loss. `video_loss` is the sum over frames of
(1 - mean cosine) divided by the number of valid frames of the *global* step (all micro-batches, all processes), the
same way the LM loss is divided by the global token count, so its value does not depend on the process count or
gradient accumulation. (The reference averaged per micro-batch, then over processes: the same at equal valid-frame
counts per micro-batch.)

Where things live:
  * the compressor is registered on the model as `video_tower_compressor` while training: it trains at the visual
    learning rate in every stage (the reference's name matched "video_tower"), DDP syncs its gradients, and it is in
    every checkpoint's `state.pt`, so resume is exact. At the end it is saved apart, as `final/compressor.safetensors`,
    never inside the model files; a run starting from a folder with a `compressor.safetensors` (or from an official
    checkpoint with `model.video_tower_compressor.*`) starts from those weights.
  * the teacher is held here, outside the model: never in a checkpoint, never broadcast or wrapped by DDP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..modeling.compressor import VideoCompressor, patch_targets, video_distillation_loss
from ..modeling.teachers import VideoTeacher, load_teacher, teacher_dtype
from ..weights import checkpoint_keys, is_official_checkpoint, load_official_compressor, load_strict

COMPRESSOR_ATTR = "video_tower_compressor"
COMPRESSOR_FILE = "compressor.safetensors"
TARGETS_KEY = "distill_targets"


class Distiller:
    """The teacher plus the glue of one training run. The compressor is `model.video_tower_compressor`."""

    def __init__(self, model: torch.nn.Module, teacher: VideoTeacher, weight: float) -> None:
        self.model, self.teacher, self.weight = model, teacher, weight
        self.teacher_inputs = teacher.inputs(model.config)  # for the dataset: frames -> teacher pixel values

    @property
    def compressor(self) -> VideoCompressor:
        return getattr(self.model, COMPRESSOR_ATTR)

    def count_frames(self, batches: list[dict[str, Any]], device: torch.device, world: int) -> torch.Tensor:
        """max(valid frames of the global step, 1); also stores each micro-batch's `PatchTargets` in it (CPU work
        only, before the forward passes)."""
        total = 0
        for b in batches:
            if "pixel_values" in b:
                if "teacher_pixel_values" not in b:
                    raise ValueError("distillation is on but the batch has no teacher_pixel_values")
                targets = patch_targets(b["input_ids"], b["pixel_values"], b["teacher_pixel_values"],
                                        self.model.config, self.teacher.patch_size)
                b[TARGETS_KEY] = targets
                total += int(targets.frame_valid.sum())
        n = torch.tensor(float(total), device=device)
        if world > 1:
            dist.all_reduce(n)
        return n.clamp(min=1.0)

    def forward(self, ddp: torch.nn.Module, batch: dict[str, Any], inputs: dict[str, Any], num_items: torch.Tensor,
                num_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(LM loss + weight * video loss, video loss) of one micro-batch.

        `num_frames` is this process's share of the global valid-frame count (global / world: DDP averages
        gradients over processes), as `num_items` is for tokens.
        """
        out = ddp(**inputs, num_items_in_batch=num_items, output_hidden_states=True)
        if TARGETS_KEY not in batch:  # no video in this micro-batch: keep the compressor in the graph (DDP)
            video = sum(p.sum() for p in self.compressor.parameters()) * 0.0
        else:
            targets = batch[TARGETS_KEY].to(out.loss.device)
            teacher = self.teacher.features(_to(batch["teacher_pixel_values"], out.loss.device))
            video = video_distillation_loss(self.compressor, out.hidden_states, teacher, targets)
            video = video / num_frames
        return out.loss + self.weight * video, video


def _to(x: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else [t.to(device) for t in x]


def setup_distillation(model: torch.nn.Module, args: Any, device: torch.device) -> Distiller | None:
    """Build the teacher and attach a (trainable) compressor to the model; None when `--distill none`.

    The compressor starts from `compressor.safetensors` in the `--model` folder, or from the official checkpoint's
    compressor, when there is one; otherwise freshly initialised. A LanguageBind `--teacher` folder without weights
    takes the official checkpoint's teacher.
    """
    if args.distill == "none":
        return None
    official = args.model if Path(str(args.model)).is_dir() and is_official_checkpoint(args.model) else None
    teacher = load_teacher(args.distill, args.teacher, official_checkpoint=official)
    teacher.to(device, dtype=teacher_dtype(device))
    text = model.config.text_config
    compressor = VideoCompressor(text.hidden_size, teacher.hidden_size, text.num_hidden_layers)
    own = Path(str(args.model)) / COMPRESSOR_FILE
    if own.is_file():
        from safetensors.torch import load_file

        load_strict(compressor, load_file(str(own)), str(own))
    elif official is not None and any(k.startswith("model.video_tower_compressor.") and ".teacher_layer." not in k
                                      for k in checkpoint_keys(official)):
        load_official_compressor(compressor, official)
    compressor.to(device).requires_grad_(True)
    setattr(model, COMPRESSOR_ATTR, compressor)
    return Distiller(model, teacher, args.distill_weight)


def save_compressor_apart(model: torch.nn.Module, target: Path, rank: int) -> None:
    """Detach the compressor from the model (so the final model files never hold it) and write it to
    `target/compressor.safetensors` on rank 0. No-op without distillation. Every rank calls it, after training."""
    compressor = getattr(model, COMPRESSOR_ATTR, None)
    if compressor is None:
        return
    delattr(model, COMPRESSOR_ATTR)
    if rank != 0:
        return
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    tmp = target / (COMPRESSOR_FILE + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in compressor.state_dict().items()}, str(tmp))
    os.replace(tmp, target / COMPRESSOR_FILE)
