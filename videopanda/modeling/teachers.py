"""Distillation teachers (training only): frozen video encoders whose patch features the LLM's visual tokens learn.

Two kinds, one interface (`VideoTeacher.features`):
  * `LanguageBindTeacher`: the video encoder of LanguageBind (`LanguageBind/LanguageBind_Video_merge`, the paper's
    teacher): a CLIP ViT whose encoder layers first mix each patch over time (a learned temporal embedding, then a
    pre-norm temporal self-attention), then run the usual CLIP block. Parameter names follow LanguageBind's
    `vision_model` (spec 2.6), so its weights, and the teacher keys of the official Video-Panda checkpoints, load
    strictly.
  * `HFVisionTeacher`: any transformers `CLIPVisionModel` or `SiglipVisionModel` in a local folder, run frame by frame.

Features: the hidden state of layer -2 (`mm_vision_select_layer` of the reference), class token removed, as a
[F, G, G, C] map over the teacher's whole canvas (G = image_size // patch_size: 16 for ViT-L/14 at 224 px).

Inputs: `TeacherInputs` builds them from the same uint8 frames as the student (spec 3.5): each frame resized to the
student's "anypixel" geometry at the teacher's resolution, pasted on a square canvas of the CLIP mean colour,
normalised with the teacher's mean/std, plus the valid-pixel mask as a 4th channel. Padded frames are all zero.

How the grids meet: the student's geometry is decided on a grid of g = teacher_image_size / patch_size cells of the
student canvas (16 for the paper, 8 for the default and tiny variants). With image_size / teacher_image_size ==
conv_stride (true for every variant), one student LSD token covers exactly one of those cells, so the student's
H x W tokens of a frame are a box of the g x g grid. The teacher canvas is laid out with the same box scaled to its
resolution, so its G x G patch map covers the same cells; when G != g the compressor adaptive-average-pools the
teacher map (and its mask) to g x g (G = 16 -> g = 8 averages 2 x 2 patches; a coarser teacher is replicated).
The reference's 448/224/14 setup has G == g == 16: no pooling, as there.

Frozen means: no gradients, eval mode whatever `.train()` says, bfloat16 on GPU, and never registered inside
`VideoPandaForCausalLM`, so it is never in a student checkpoint.

Shape legend: B videos, T frames, F = B*T frames flat, R teacher canvas side, G teacher grid side, C teacher width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import CLIP_MEAN, CLIP_STD, Geometry, _channel_stats, _check_frames, _paste, anypixel_geometry

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# Teacher inputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherInputs:
    """uint8 frames -> teacher pixel values [T', 4, R, R], laid out like the student's pixel values (picklable, for
    DataLoader workers).

    Args:
        image_size: the student canvas side (config.image_size).
        geometry_size: the student's `teacher_image_size`: the canvas on which "anypixel" geometry is decided.
        patch_size: the student's patch size (the geometry grid's cell size at `geometry_size`).
        teacher_size: R, the teacher's input side.
        num_frames: videos are padded with all-zero frames to this many, as the student's.
        mean, std: the teacher's normalisation.
    """

    image_size: int
    geometry_size: int
    patch_size: int
    teacher_size: int
    num_frames: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def geometry(self, width: int, height: int) -> Geometry:
        """The student's valid region, at the teacher's resolution (exact at the reference's 224 / 224)."""
        g = anypixel_geometry(width, height, image_size=self.geometry_size, teacher_size=self.geometry_size,
                              patch_size=self.patch_size)
        scale = self.teacher_size / self.geometry_size
        return Geometry(width=round(g.width * scale), height=round(g.height * scale), top=round(g.top * scale),
                        left=round(g.left * scale), canvas=self.teacher_size)

    def __call__(self, frames: np.ndarray, *, image: bool = False) -> torch.Tensor:
        frames = np.asarray(frames)
        num = None if image else self.num_frames
        _check_frames(frames, num)
        mean, std = _channel_stats(self.mean, self.std)
        geometry = self.geometry(frames.shape[2], frames.shape[1])
        canvas = _paste(frames, geometry, background=tuple(int(m * 255) for m in CLIP_MEAN))  # [T, R, R, 3]
        R, n = self.teacher_size, frames.shape[0]
        out = torch.zeros(num or n, 4, R, R)  # padded frames stay all-zero (mask 0), as the reference's
        rgb = torch.from_numpy(canvas).permute(0, 3, 1, 2)
        torch.addcmul(-mean / std, rgb, 1.0 / (255.0 * std), out=out[:n, :3])
        out[:n, 3, geometry.top: geometry.top + geometry.height, geometry.left: geometry.left + geometry.width] = 1.0
        return out


# ---------------------------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------------------------


class VideoTeacher(nn.Module):
    """A frozen encoder giving per-frame patch features. Subclasses set the attributes below and `encode`."""

    image_size: int
    patch_size: int
    hidden_size: int
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def freeze(self) -> VideoTeacher:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> VideoTeacher:  # always eval: a teacher has no training mode
        return super().train(False)

    def encode(self, pixel_values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, R, R] (valid: [B, T] bool, frames with any valid pixel) -> [B*T, G, G, C]."""
        raise NotImplementedError

    def inputs(self, config: Any) -> TeacherInputs:
        """The teacher-input builder for a student `VideoPandaConfig`."""
        return TeacherInputs(config.image_size, config.teacher_image_size, config.patch_size, self.image_size,
                             config.num_frames, tuple(self.image_mean), tuple(self.image_std))

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Teacher pixel values [B, T, 4, R, R] (or a list of [T_b, 4, R, R]) -> features [F, G, G, C], frames in the
        order of the student's flat visual tokens (video by video)."""
        if isinstance(pixel_values, torch.Tensor):
            if pixel_values.ndim != 5 or pixel_values.shape[2] != 4 or pixel_values.shape[-1] != self.image_size:
                raise ValueError(f"teacher pixel values must be [B, T, 4, {self.image_size}, {self.image_size}], "
                                 f"got {tuple(pixel_values.shape)}")
            dtype = next(self.parameters()).dtype
            valid = pixel_values[:, :, 3].flatten(2).amax(2) > 0  # [B, T]
            return self.encode(pixel_values[:, :, :3].to(dtype), valid)
        by_length: dict[int, list[int]] = {}
        for i, video in enumerate(pixel_values):
            by_length.setdefault(video.shape[0], []).append(i)
        parts: list[torch.Tensor] = [None] * len(pixel_values)  # type: ignore[list-item]
        for idx in by_length.values():
            out = self.features(torch.stack([pixel_values[i] for i in idx]))
            for i, part in zip(idx, out.split(pixel_values[idx[0]].shape[0])):
                parts[i] = part
        return torch.cat(parts)


# ---------------------------------------------------------------------------------------------------------------
# LanguageBind video encoder
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LanguageBindVisionConfig:
    """The vision fields of LanguageBind's video config (its `CLIPVisionConfig` defaults where a field is absent)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    add_time_attn: bool = False
    num_frames: int = 1

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> LanguageBindVisionConfig:
        """A LanguageBind `config.json` (vision fields under `vision_config` / `vision_config_dict`) or a bare
        vision config."""
        vision = config.get("vision_config") or config.get("vision_config_dict") or config
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vision.items() if k in names})


class LanguageBindAttention(nn.Module):
    """CLIP multi-head self-attention (q/k/v/out projections with bias, scale head_dim**-0.5), through SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not a multiple of num_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, L, C] -> [N, L, C]."""
        q, k, v = (p(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # [N, heads, L, hd]
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class LanguageBindMLP(nn.Module):
    def __init__(self, config: LanguageBindVisionConfig) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LanguageBindEncoderLayer(nn.Module):
    """One LanguageBind video block: [temporal embedding + temporal attention over each patch's frames] + CLIP block.

    Temporal part (when `add_time_attn`), for x viewed as [B, T, N, C]:
        x = x + temporal_embedding[:, :T]          (skipped for T == 1, as LanguageBind does)
        x = x + TemporalAttn(temporal_layer_norm1(x)) over T, independently for every patch position
    Spatial part (CLIP): x = x + Attn(layer_norm1(x)); x = x + MLP(layer_norm2(x)).

    LanguageBind reshapes with its config's `num_frames` whatever the batch holds (8 for Video_merge; the reference
    feeds each 8-frame video as two 4-frame chunks, which the reshape joins again: spec 8.11). Here each video's own
    T frames are the temporal axis (T <= num_frames), which is the same computation for 8-frame videos.
    """

    def __init__(self, config: LanguageBindVisionConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.self_attn = LanguageBindAttention(C, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.mlp = LanguageBindMLP(config)
        self.layer_norm2 = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.add_time_attn = config.add_time_attn
        if self.add_time_attn:
            self.temporal_embedding = nn.Parameter(torch.empty(1, config.num_frames, C))
            nn.init.normal_(self.temporal_embedding, std=C**-0.5)
            self.temporal_attn = LanguageBindAttention(C, config.num_attention_heads)
            self.temporal_layer_norm1 = nn.LayerNorm(C, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: [B*T, N, C] (frames of a video consecutive) -> [B*T, N, C]."""
        if self.add_time_attn:
            BT, N, C = x.shape
            T = num_frames
            if T > self.temporal_embedding.shape[1]:
                raise ValueError(f"the LanguageBind teacher has a temporal embedding for "
                                 f"{self.temporal_embedding.shape[1]} frames, got videos of {T}")
            x = x.view(BT // T, T, N, C)
            if T != 1:
                x = x + self.temporal_embedding[:, :T, None]
            y = self.temporal_layer_norm1(x).transpose(1, 2).reshape(-1, T, C)  # [B*N, T, C]
            y = self.temporal_attn(y).view(BT // T, N, T, C).transpose(1, 2)
            x = (x + y).reshape(BT, N, C)
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class LanguageBindEmbeddings(nn.Module):
    """CLIP vision embeddings: class token + bias-free patch convolution + learned absolute positions."""

    def __init__(self, config: LanguageBindVisionConfig) -> None:
        super().__init__()
        C, p = config.hidden_size, config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(C))
        self.patch_embedding = nn.Conv2d(config.num_channels, C, kernel_size=p, stride=p, bias=False)
        self.position_embedding = nn.Embedding((config.image_size // p) ** 2 + 1, C)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[F, 3, R, R] -> [F, 1 + G*G, C]."""
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [F, G*G, C]
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], 1) + self.position_embedding.weight


class _Encoder(nn.Module):
    def __init__(self, config: LanguageBindVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LanguageBindEncoderLayer(config) for _ in range(config.num_hidden_layers))


class LanguageBindVisionTransformer(nn.Module):
    """LanguageBind's `vision_model` (keys as spec 2.6: embeddings.*, pre_layrnorm.*, encoder.layers.{i}.*,
    post_layernorm.*). `post_layernorm` is kept for the keys; layer -2 features never reach it."""

    def __init__(self, config: LanguageBindVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = LanguageBindEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = _Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -2) -> torch.Tensor:
        """pixel_values [B, T, 3, R, R] -> hidden state `select_layer` [B*T, 1 + G*G, C].

        Hidden states are numbered as transformers does (0 = embeddings after pre_layrnorm, i = output of layer i), so
        -2 is the output of the second-to-last layer; the layers after the selected one are not run.
        """
        B, T = pixel_values.shape[:2]
        x = self.pre_layrnorm(self.embeddings(pixel_values.flatten(0, 1)))
        stop = select_layer % (len(self.encoder.layers) + 1)
        for layer in self.encoder.layers[:stop]:
            x = layer(x, T)
        return x


class LanguageBindTeacher(VideoTeacher):
    """The LanguageBind video encoder as a teacher (`--distill languagebind --teacher FOLDER`)."""

    def __init__(self, config: LanguageBindVisionConfig, select_layer: int = -2) -> None:
        super().__init__()
        self.video_tower = LanguageBindVisionTransformer(config)  # the reference's attribute name
        self.select_layer = select_layer
        self.image_size, self.patch_size, self.hidden_size = config.image_size, config.patch_size, config.hidden_size

    def encode(self, pixel_values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        hidden = self.video_tower(pixel_values, self.select_layer)[:, 1:]  # class token removed
        return hidden.unflatten(1, (self.grid, self.grid))

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, weights_from: str | Path | None = None) -> LanguageBindTeacher:
        """Build from a LanguageBind folder (`config.json`, e.g. LanguageBind_Video_merge) and load its weights
        strictly: the folder's own (`vision_model.*` keys, or bare tower keys), or, with `weights_from`, the teacher
        keys of an official Video-Panda checkpoint folder (`model.video_teacher.video_tower.*`)."""
        from ..configuration import is_official_config
        from ..weights import CheckpointError, has_weights, load_official_teacher, load_prefixed_tensors

        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: the LanguageBind teacher needs its config.json "
                                    "(e.g. the LanguageBind_Video_merge folder)")
        raw = json.loads(config_file.read_text())
        if is_official_config(raw):
            raise CheckpointError(f"{folder} is a Video-Panda checkpoint, not a LanguageBind one: pass the "
                                  "LanguageBind_Video_merge folder as --teacher (with --model pointing at the "
                                  "official checkpoint, its teacher weights are used when that folder has none)")
        teacher = cls(LanguageBindVisionConfig.from_dict(raw))
        if weights_from is not None:
            load_official_teacher(teacher.video_tower, weights_from)
            return teacher.freeze()
        if not has_weights(folder):
            raise CheckpointError(f"{folder}: no weights (model.safetensors, pytorch_model.bin or a shard index)")
        state = load_prefixed_tensors(folder, "vision_model.") or load_prefixed_tensors(folder, "")
        load_tower_state(teacher.video_tower, state, str(folder))
        return teacher.freeze()


def load_tower_state(tower: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; `embeddings.position_ids` (a buffer that older transformers saved) is ignored."""
    from ..weights import load_strict

    load_strict(tower, {k: v for k, v in state.items() if not k.endswith("position_ids")}, source)


# ---------------------------------------------------------------------------------------------------------------
# transformers CLIP / SigLIP vision models
# ---------------------------------------------------------------------------------------------------------------

HF_VISION_TYPES = {"clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel",
                   "siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel"}


class HFVisionTeacher(VideoTeacher):
    """A transformers CLIP or SigLIP vision model as a per-frame teacher (`--distill hf --teacher FOLDER`).

    Layer -2 of `hidden_states`; CLIP's class token is dropped (SigLIP has none). All-padding frames are not run.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        vision = getattr(model.config, "vision_config", model.config)
        self.image_size, self.patch_size, self.hidden_size = vision.image_size, vision.patch_size, vision.hidden_size
        self.image_mean, self.image_std = tuple(mean), tuple(std)

    def encode(self, pixel_values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        frames, keep = pixel_values.flatten(0, 1), valid.flatten()
        out = frames.new_zeros(frames.shape[0], self.grid, self.grid, self.hidden_size)
        idx = keep.nonzero()[:, 0]
        if idx.numel():
            hidden = self.model(pixel_values=frames[idx], output_hidden_states=True).hidden_states[-2]
            if hidden.shape[1] == self.grid**2 + 1:
                hidden = hidden[:, 1:]  # CLIP's class token
            out[idx] = hidden.unflatten(1, (self.grid, self.grid)).to(out.dtype)
        return out

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> HFVisionTeacher:
        import transformers

        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: --distill hf needs a transformers CLIP/SigLIP folder")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type not in HF_VISION_TYPES:
            raise ValueError(f"{folder}: model_type {model_type!r} is not a supported teacher; "
                             f"expected one of {', '.join(sorted(HF_VISION_TYPES))}")
        model = getattr(transformers, HF_VISION_TYPES[model_type]).from_pretrained(folder, dtype=torch.float32)
        default = SIGLIP_MEAN if model_type.startswith("siglip") else CLIP_MEAN
        default_std = SIGLIP_STD if model_type.startswith("siglip") else CLIP_STD
        pre = folder / "preprocessor_config.json"
        pre_cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        teacher = cls(model, pre_cfg.get("image_mean", default), pre_cfg.get("image_std", default_std))
        return teacher.freeze()


def load_teacher(kind: str, folder: str | Path, *, official_checkpoint: str | Path | None = None) -> VideoTeacher:
    """`kind` "languagebind" or "hf". For LanguageBind, `official_checkpoint` supplies the weights when the folder
    has only a config.json."""
    from ..weights import has_weights

    if kind == "languagebind":
        use_official = official_checkpoint is not None and not has_weights(folder)
        return LanguageBindTeacher.from_pretrained(folder, weights_from=official_checkpoint if use_official else None)
    if kind == "hf":
        return HFVisionTeacher.from_pretrained(folder)
    raise ValueError(f"unknown teacher kind {kind!r}: expected 'languagebind' or 'hf'")


def teacher_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPU (as the reference), float32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32
