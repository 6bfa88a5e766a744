"""The distillation head of Video-Panda (reference `VideoCompressor`, spec 5.5) and its loss. Training only.

The LLM's hidden states at the visual patch positions, taken from 9 layers, are compressed into one vector per patch
and pulled towards a frozen teacher's patch feature by a negative-cosine loss:

    f_j  = norm_layer[j](h[layer_idx[j]])            LayerNorm(D) + Linear(D -> C, no bias), j = 0..8
    attn = softmax_j(f_0 . f_j * C**-0.5), j = 1..8  per head (heads of <= 128 dims)
    pred = input_layer(h[layer_idx[0]]) + output_layer(sum_j attn_j f_j)
    loss = sum over valid frames of (1 - mean over the frame's valid tokens of cos(pred, teacher)) / #valid frames

`h[i]` is `hidden_states[i]` of the transformers LLM: 0 = the input embeddings (the projector output at visual
positions), L = the output of the final norm. Parameter names are the reference's (`norm_layer.{j}.{0,1}`,
`input_layer`, `output_layer`), so `weights.load_official_compressor` loads the released compressor strictly.

Which tokens: every frame contributes 1 + h*(w+1) visual tokens ([cls, row_0, split, row_1, split, ...], see
`stab.STABOutput`); the class token and the split tokens are dropped, leaving the h*w patch tokens, each mapped to
its cell on the student's full-canvas token grid so it can be paired with the teacher's feature there (see
`teachers.py` for how the grids meet). All index bookkeeping (`PatchTargets`) is computed once per batch, batched,
from the masks and input ids on the CPU, so the training step itself has no per-frame Python loop and no host sync.

Deliberate differences from the reference:
  * Padded frames and frames without a teacher simply weigh 0. The reference added `cos(x, x.detach())` for them,
    a hack so every parameter is used under ZeRO-3; multiplying by 0 keeps every parameter in the graph as well.
  * Only the 9 used layers are gathered, at the patch positions only (the reference stacked all 33 layers at every
    position: ~5 GB in bf16 at batch 8).
  * The layer indices are generalised to any LLM depth (`distill_layer_indices`).

Shape legend: B videos, T frames, F frames in the batch, N sequence length, n patch tokens in the batch, D LLM width,
C teacher width, g student token grid side, G teacher grid side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import crop_boxes, patch_valid_mask

NUM_DISTILL_LAYERS = 9


def distill_layer_indices(num_layers: int, count: int = NUM_DISTILL_LAYERS) -> list[int]:
    """LLM hidden-state indices the compressor reads: `count` points evenly spaced from L down to 0.

    idx_j = L - round(j * L / (count - 1)), rounding halves up, j = 0..count-1. For L = 32 this is the reference's
    `32 - arange(0, 33, 4)` = [32, 28, ..., 4, 0] exactly. For L = 30 (SmolLM2-135M): [30, 26, 22, 19, 15, 11, 7, 4,
    0]. Shallow models repeat layers (L = 2: [2, 2, 1, 1, 1, 1, 0, 0, 0]), which is harmless: each point keeps its own
    norm and projection, and the count (hence the official parameter names) stays the same.
    """
    if num_layers < 1 or count < 2:
        raise ValueError(f"need num_layers >= 1 and count >= 2, got {num_layers} and {count}")
    steps = count - 1
    return [num_layers - (2 * j * num_layers + steps) // (2 * steps) for j in range(count)]


def attention_heads(dim: int, max_head_dim: int = 128) -> int:
    """Fewest heads whose size divides `dim` and is at most `max_head_dim` (1024 -> 8 heads of 128, as the
    reference; 32 -> 1 head of 32)."""
    return next(h for h in range(1, dim + 1) if dim % h == 0 and dim // h <= max_head_dim)


class VideoCompressor(nn.Module):
    """Maps LLM hidden states at visual patch positions to the teacher's feature space.

    Args:
        llm_hidden_size: D.
        teacher_hidden_size: C.
        num_llm_layers: L, the LLM's decoder layers (hidden_states has L + 1 entries).
    """

    def __init__(self, llm_hidden_size: int, teacher_hidden_size: int, num_llm_layers: int) -> None:
        super().__init__()
        D, C = llm_hidden_size, teacher_hidden_size
        self.layer_idx = distill_layer_indices(num_llm_layers)
        self.norm_layer = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(D), nn.Linear(D, C, bias=False)) for _ in self.layer_idx)
        self.input_layer = nn.Linear(D, C)
        self.output_layer = nn.Linear(C, C)
        self.num_heads = attention_heads(C)
        self.scale = C**-0.5  # the full width, as the reference (not head_dim**-0.5)

    def gather(self, hidden_states: Sequence[torch.Tensor], positions: torch.Tensor) -> list[torch.Tensor]:
        """The selected layers at flat positions: hidden_states (L + 1 of [B, N, D]), positions [n] into B*N ->
        list of [n, D], one per `layer_idx` entry."""
        cache: dict[int, torch.Tensor] = {}
        for i in self.layer_idx:
            if i not in cache:
                cache[i] = hidden_states[i].flatten(0, 1)[positions]
        return [cache[i] for i in self.layer_idx]

    def forward(self, layers: Sequence[torch.Tensor]) -> torch.Tensor:
        """layers: one [n, D] per `layer_idx` entry (from `gather`) -> predictions [n, C]."""
        feats = torch.stack([norm(h) for norm, h in zip(self.norm_layer, layers)], 1)  # [n, 9, C]
        n, P, C = feats.shape
        heads = feats.view(n, P, self.num_heads, -1).transpose(1, 2)  # [n, heads, 9, hd]
        q, kv = heads[:, :, :1], heads[:, :, 1:]
        attn = ((q * self.scale) * kv).sum(-1).softmax(-1)  # [n, heads, 8]
        fused = (attn[..., None] * kv).sum(2).flatten(1)  # [n, C]
        return self.input_layer(layers[0]) + self.output_layer(fused)


# ---------------------------------------------------------------------------------------------------------------
# Which token pairs with which teacher feature
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PatchTargets:
    """Index bookkeeping of one micro-batch, computed from masks and ids only (before the forward pass).

    positions: [n] flat index into the LLM sequence (B*N) of each visual patch token.
    target_index: [n] index into the teacher map pooled to the student grid, flattened as [F*g*g].
    frame_id: [n] the frame of each token (0..F-1, video by video).
    weight: [n] 1.0 where the teacher cell is fully inside the frame, else 0.0.
    frame_tokens: [F] number of weighted tokens per frame.
    num_frames: F; grid: g.
    """

    positions: torch.Tensor
    target_index: torch.Tensor
    frame_id: torch.Tensor
    weight: torch.Tensor
    frame_tokens: torch.Tensor
    num_frames: int
    grid: int

    @property
    def frame_valid(self) -> torch.Tensor:
        """[F] bool: frames that count (some token has a teacher target); padded frames do not."""
        return self.frame_tokens > 0

    def to(self, device: torch.device) -> PatchTargets:
        move = {k: v.to(device, non_blocking=True) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return PatchTargets(**{**vars(self), **move})


def _flat_frames(x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, T, ...] or a list of [T_b, ...] -> [F, ...] in the student's token order."""
    return x.flatten(0, 1) if isinstance(x, torch.Tensor) else torch.cat(list(x))


def patch_targets(input_ids: torch.Tensor, pixel_values: torch.Tensor | Sequence[torch.Tensor],
                  teacher_pixel_values: torch.Tensor | Sequence[torch.Tensor], config, teacher_patch_size: int,
                  ) -> PatchTargets:
    """Pair every visual patch token of a batch with a cell of the teacher map.

    Args:
        input_ids: [B, N] with `config.video_token_index` at the visual positions.
        pixel_values: the student's [B, T, 4, S, S] (or list), channel 3 the valid-pixel mask.
        teacher_pixel_values: the teacher's [B, T, 4, R, R] (or list), aligned frame by frame.
        config: the student's `VideoPandaConfig`.
        teacher_patch_size: the teacher's patch size (its grid is R // teacher_patch_size).
    """
    frames = _flat_frames(pixel_values)  # [F, 4, S, S]
    teacher_mask = _flat_frames(teacher_pixel_values)[:, 3:].float()  # [F, 1, R, R]
    if teacher_mask.shape[0] != frames.shape[0]:
        raise ValueError(f"{frames.shape[0]} student frames but {teacher_mask.shape[0]} teacher frames")
    p, s = config.patch_size, config.conv_stride
    boxes = crop_boxes(patch_valid_mask(frames[:, 3:], p), config.empty_frame_patches)  # [F, 4] in patches
    h, w = boxes[:, 2] // s, boxes[:, 3] // s
    counts = 1 + h * (w + 1)  # tokens per frame, as the STAB makes them
    offsets = torch.cumsum(counts, 0) - counts
    n = h * w
    F_ = frames.shape[0]
    frame_id = torch.repeat_interleave(torch.arange(F_), n)  # [n]
    k = torch.arange(int(n.sum())) - (torch.cumsum(n, 0) - n)[frame_id]  # index of the token within its frame
    wf = w[frame_id]
    i, j = k // wf, k % wf  # row and column in the frame's h x w grid
    token_index = offsets[frame_id] + 1 + i * (wf + 1) + j  # skip the cls token and one split token per row

    visual = (input_ids == config.video_token_index).flatten().nonzero()[:, 0]
    if visual.numel() != int(counts.sum()):
        raise ValueError(f"the batch holds {visual.numel()} visual placeholders but its frames give "
                         f"{int(counts.sum())} visual tokens")
    g = frames.shape[-1] // p // s  # the student's full-canvas token grid
    rows = (boxes[frame_id, 0] // s + i).clamp(max=g - 1)
    cols = (boxes[frame_id, 1] // s + j).clamp(max=g - 1)
    target_index = frame_id * g * g + rows * g + cols

    inside = F.avg_pool2d(teacher_mask, teacher_patch_size)  # [F, 1, G, G] valid fraction of each teacher patch
    if inside.shape[-1] != g:
        inside = F.adaptive_avg_pool2d(inside, g)
    weight = (inside.flatten() > 1 - 1e-4).float()[target_index]  # fully valid cells only (the reference's == 1)
    frame_tokens = torch.zeros(F_).index_add_(0, frame_id, weight)
    return PatchTargets(visual[token_index], target_index, frame_id, weight, frame_tokens, F_, g)


def video_distillation_loss(compressor: VideoCompressor, hidden_states: Sequence[torch.Tensor],
                            teacher_features: torch.Tensor, targets: PatchTargets) -> torch.Tensor:
    """Sum over frames of (1 - mean cos(pred, teacher)) over each frame's valid tokens; frames that do not count
    weigh 0. Divide by the number of valid frames (of the micro-batch, or of the global step) for the loss.

    Args:
        compressor: the trainable head.
        hidden_states: the LLM's L + 1 hidden states, each [B, N, D].
        teacher_features: [F, G, G, C], from `VideoTeacher.features`.
        targets: `patch_targets(...)` of the same batch, on the device.
    """
    g = targets.grid
    tmap = teacher_features.float().permute(0, 3, 1, 2)  # [F, C, G, G]
    if tmap.shape[-1] != g:
        tmap = F.adaptive_avg_pool2d(tmap, g)
    tmap = tmap.permute(0, 2, 3, 1).reshape(-1, tmap.shape[1])  # [F*g*g, C]
    pred = compressor(compressor.gather(hidden_states, targets.positions))  # [n, C]
    cos = F.cosine_similarity(pred.float(), tmap[targets.target_index], dim=-1)  # [n]
    per_frame = torch.zeros(targets.num_frames, device=cos.device).index_add(0, targets.frame_id,
                                                                             cos * targets.weight)
    loss = (1 - per_frame / targets.frame_tokens.clamp(min=1)) * targets.frame_valid
    return loss.sum()
