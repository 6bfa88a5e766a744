"""The Spatio-Temporal Alignment Block (STAB) of Video-Panda, batched and trainable.

Paper: "Video-Panda: Parameter-efficient Alignment for Encoder-free Video-Language Models", arXiv 2412.18609.
Reference: github.com/jh-yi/Video-Panda @ 995a737, `VideoTokenizer` in
`videopanda/model/multimodal_encoder/vision_tokenizer.py`. Parameter names follow the reference so that official
checkpoints load by a prefix rename only.

Shape legend: B videos, T frames per video, C channels (STAB width), G patch-grid side of the canvas, H/W crop size in
patches, h/w LSD token grid (H/conv_stride, W/conv_stride), L key length, n frames in a group, D LLM width.

Pipeline per video (spec section 1.3), one class per paper module:
    patch embedding -> [video only] `LSTE` (lmhra1 + dpe) -> `GSTRA` (a temporal class token per chunk of frames)
    -> dense connection (+ raw patch embedding) -> crop to the valid region -> `LSD` (2x2 local attention
    downsampling) -> `FSRA` (class-embedding attention) -> rows of w tokens each followed by a split token
    -> CLS = proj(fuse(GSTRA cls, FSRA cls)) [video] or FSRA cls [image]
Each frame yields 1 + h*(w+1) tokens, in that order.

Deliberate differences from the reference, none of which changes the function computed at inference:
  * Frames, chunks and videos are batched; frames are grouped by crop size instead of looped over one by one.
  * The reference calls the tokenizer once per video, so BatchNorm in training sees the chunks of one video. Here
    one batch norm call sees every chunk of the batch (same running statistics at eval; training statistics differ).
  * The deprecated, never-called `lmhra2` is not built; its keys in official checkpoints are reported and skipped.
  * Frame counts that are not a multiple of `chunk_size` work: the remainder forms one shorter chunk (the reference
    fails on those). T == 1 is the image path (no LSTE, no GSTRA, raw FSRA class token), as in the reference.
Kept on purpose because released checkpoints depend on them: the LSD/FSRA attention scale C**-0.5 (not
head_dim**-0.5), the dense connection, the un-masked GSTRA over padding, and the fixed 16x16-patch crop of
all-padding frames.

This is the form for training, for the parity tests and for reading the maths. The inference form of the same
function (folded constants, channels-last, Triton kernels) is `videopanda.fast.FusedSTAB`, built from a STAB.
Ablation switches (`use_lste`, `use_gstra`, `use_fsra`, `downsample`) remove one component each (docs/model.md,
"Ablation switches"); a switched-off component is not built. The token count per frame never changes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import count_visual_tokens, crop_boxes, patch_valid_mask  # noqa: F401  (geometry)


def zero_init(layer: nn.Module, names: tuple[str, ...] = ("weight", "bias")) -> None:
    """Zero some parameters of a layer and mark them, so a generic re-initialisation (transformers' `post_init`,
    `VideoPandaPreTrainedModel._init_weights`) keeps them zero: the reference's zero-inits make the new branches
    start as identities."""
    layer.zero_init_names = names
    for name in names:
        nn.init.zeros_(getattr(layer, name))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the CLIP activation the GSTRA MLP uses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LocalTemporalMHRA(nn.Module):
    """LSTE's temporal branch (UniFormerV2 "local MHRA"): BN -> 1x1x1 down -> depthwise (3,1,1) over time -> 1x1x1 up.

    The last convolution is zero-initialised, so the branch is the identity residual at the start of training.
    """

    def __init__(self, dim: int, reduction: float = 1.5, kernel: int = 3) -> None:
        super().__init__()
        inner = int(dim // reduction)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm3d(dim),
            nn.Conv3d(dim, inner, kernel_size=1),
            nn.Conv3d(inner, inner, kernel_size=(kernel, 1, 1), padding=(kernel // 2, 0, 0), groups=inner),
            nn.Conv3d(inner, dim, kernel_size=1),
        )
        zero_init(self.pos_embed[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T, G, G] -> [B, C, T, G, G]."""
        return self.pos_embed(x)


class LSTE(nn.Module):
    """Local spatio-temporal encoding: x + lmhra1(x), then + dpe(.) (the 3x3x3 depthwise positional conv).

    Both residual branches start at zero (the last lmhra1 conv and the dpe bias are zero-initialised; the dpe weight
    is not, as in the reference).
    """

    def __init__(self, dim: int, reduction: float = 1.5) -> None:
        super().__init__()
        self.lmhra1 = LocalTemporalMHRA(dim, reduction)
        self.dpe = nn.Conv3d(dim, dim, kernel_size=3, padding=1, groups=dim)
        zero_init(self.dpe, ("bias",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, C, t, G, G] -> [n, C, t, G, G]."""
        x = x + self.lmhra1(x)
        return x + self.dpe(x)


class InProjAttention(nn.Module):
    """Multi-head cross-attention with `nn.MultiheadAttention`'s parameter names (in_proj_weight/bias, out_proj).

    The reference keeps an `nn.MultiheadAttention` only for its weights and slices q/k/v out of `in_proj_weight`;
    we do the same slicing and run the attention through SDPA. Scale is head_dim**-0.5 here (as in the reference).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query: [B, Q, C], keys: [B, L, C] -> [B, Q, C]."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(query, wq, bq).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, heads, Q, hd]
        k = F.linear(keys, wk, bk).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, heads, L, hd]
        v = F.linear(keys, wv, bv).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, Q, hd]
        return self.out_proj(out.transpose(1, 2).flatten(2))


class GSTRA(nn.Module):
    """Global spatio-temporal relationship aggregator: a transformer decoder block for one query token.

    x = q + Attn(ln_1(q), ln_3(keys)); x = x + MLP(ln_2(x)). The attention and MLP outputs are zero-initialised.
    (The reference's zero-init is later overridden by transformers' Linear re-init when stage 1 loads EVE weights;
    we keep the constructor's intent.)
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.5) -> None:
        super().__init__()
        hidden = round(mlp_ratio * dim)
        self.attn = InProjAttention(dim, num_heads)
        self.ln_1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(dim, hidden)),
            ("gelu", QuickGELU()),
            ("dropout", nn.Dropout(dropout)),
            ("c_proj", nn.Linear(hidden, dim)),
        ]))
        self.ln_2 = nn.LayerNorm(dim)
        self.ln_3 = nn.LayerNorm(dim)
        zero_init(self.attn.out_proj)
        zero_init(self.mlp.c_proj)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query: [B, 1, C], keys: [B, L, C] -> [B, 1, C]."""
        x = query + self.attn(self.ln_1(query), self.ln_3(keys))
        return x + self.mlp(self.ln_2(x))


class LSD(nn.Module):
    """Local spatial downsampling: each conv_stride x conv_stride window is summarised by attention from its
    average-pooled token.

    Scale is C**-0.5 rather than head_dim**-0.5: inherited from EVE and kept, because the released weights were
    trained with it.
    """

    def __init__(self, dim: int, conv_stride: int, num_heads: int = 8) -> None:
        super().__init__()
        self.conv_stride = conv_stride
        self.num_heads = num_heads
        self.scale = dim**-0.5
        self.q = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim, bias=False))
        self.kv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim, bias=False))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, H, W, C] channels-last crops -> [n, h*w, C] tokens (h = H // s, w = W // s, row-major)."""
        s = self.conv_stride
        n, H, W, C = x.shape
        h, w = H // s, W // s
        windows = x[:, : h * s, : w * s].reshape(n, h, s, w, s, C).transpose(2, 3).reshape(n, h * w, s * s, C)
        pooled = windows.mean(2)  # [n, hw, C] == avg_pool2d
        q = self.q(pooled).unflatten(-1, (self.num_heads, -1))  # [n, hw, heads, hd]
        k, v = self.kv(windows).unflatten(-1, (2, self.num_heads, -1)).unbind(3)  # [n, hw, s*s, heads, hd] each
        attn = torch.einsum("nqhd,nqkhd->nqhk", q * self.scale, k).softmax(-1)
        out = torch.einsum("nqhk,nqkhd->nqhd", attn, v).flatten(2)  # [n, hw, C]
        return pooled + self.proj(out)


class FSRA(nn.Module):
    """Frame-level spatial relationship aggregator: a learned class embedding attends over all LSD tokens of a
    frame. Scale C**-0.5 as in the reference."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim**-0.5
        self.q = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim, bias=False))
        self.kv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim, bias=False))
        self.proj = nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """cls: [C], tokens: [n, L, C] -> [n, C]."""
        q = self.q(cls).unflatten(-1, (self.num_heads, -1))  # [heads, hd]
        k, v = self.kv(tokens).unflatten(-1, (2, self.num_heads, -1)).unbind(2)  # [n, L, heads, hd]
        attn = torch.einsum("hd,nlhd->nhl", q * self.scale, k).softmax(-1)
        out = torch.einsum("nhl,nlhd->nhd", attn, v).flatten(1)  # [n, C]
        return cls + self.proj(out)


@dataclass
class STABOutput:
    """Visual tokens of a batch, flat in LLM order, with the bookkeeping to split them.

    tokens: [N_total, C] frame by frame, each frame as [cls, row_0 (w tokens), split, row_1, split, ...].
    tokens_per_frame: [B*T] long, 1 + h*(w+1) per frame.
    grid_hw: [B*T, 2] long, the LSD grid (h, w) of each frame.
    """

    tokens: torch.Tensor
    tokens_per_frame: torch.Tensor
    grid_hw: torch.Tensor


class STAB(nn.Module):
    """The STAB (reference class `VideoTokenizer`), without the projector (which lives in the top model).

    Args:
        dim: C, the STAB width.
        num_heads: heads of LSD, FSRA and GSTRA.
        patch_size: patch embedding kernel/stride.
        conv_stride: LSD downsampling factor.
        chunk_size: frames per GSTRA chunk.
        lste_reduction, mlp_ratio, dropout: see `VideoPandaConfig`.
        empty_frame_patches: patch side kept for all-padding frames.
        use_lste: build LSTE (`lmhra1` + `dpe`). Off: frame features skip it (the dense connection still adds the
            raw patch embedding, so a video frame's features are 2 x patch embedding, i.e. LSTE's branches read as 0).
        use_gstra: build GSTRA (`dec`, `temporal_cls_token`). Off: no video-level token; every frame's CLS is its
            FSRA token as on the image path.
        use_fsra: build FSRA (`global_attention`, `class_embedding`). Off: a video frame's CLS is its chunk's GSTRA
            token; with no class-token source at all (images, or GSTRA off too) it is the mean of the frame's
            LSD tokens, so the layout [cls, rows...] and the token count stay those of the full model.
        downsample: "lsd" (learned 2x2 local attention) or "avgpool" (the same windows average-pooled; no
            `local_attention`).
    The CLS fusion (`balance`, `proj`) exists only when both GSTRA and FSRA do: with one source there is nothing
    to fuse and its token is used as is (as the image path uses FSRA's).
    """

    def __init__(self, dim: int = 1024, num_heads: int = 8, *, patch_size: int = 14, conv_stride: int = 2,
                 chunk_size: int = 4, lste_reduction: float = 1.5, mlp_ratio: float = 4.0, dropout: float = 0.5,
                 empty_frame_patches: int = 16, use_lste: bool = True, use_gstra: bool = True, use_fsra: bool = True,
                 downsample: str = "lsd") -> None:
        super().__init__()
        if downsample not in ("lsd", "avgpool"):
            raise ValueError(f"downsample must be 'lsd' or 'avgpool', got {downsample!r}")
        self.dim, self.num_heads, self.patch_size, self.conv_stride = dim, num_heads, patch_size, conv_stride
        self.chunk_size, self.empty_frame_patches = chunk_size, empty_frame_patches
        self.downsample = downsample
        fuse_cls = use_gstra and use_fsra
        # Registration order = the reference's state_dict order; switched-off parts are plain None attributes.
        self.class_embedding = nn.Parameter(torch.randn(dim)) if use_fsra else None
        self.split_embedding = nn.Parameter(torch.randn(dim))
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if use_gstra else None
        self.balance = nn.Parameter(torch.zeros(dim)) if fuse_cls else None
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, bias=False)
        lste = LSTE(dim, lste_reduction) if use_lste else None
        # the reference keeps LSTE's two parts at the top level (keys `lmhra1.*`, `dpe.*`): they are registered here,
        # and the LSTE that runs them is kept unregistered (the same modules, not a copy)
        self.lmhra1 = lste.lmhra1 if lste is not None else None
        self.dpe = lste.dpe if lste is not None else None
        object.__setattr__(self, "lste", lste)
        self.dec = GSTRA(dim, num_heads, mlp_ratio, dropout) if use_gstra else None
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(dropout), nn.Linear(dim, dim)) if fuse_cls else None
        self.local_attention = LSD(dim, conv_stride, num_heads) if downsample == "lsd" else None
        self.global_attention = FSRA(dim, num_heads) if use_fsra else None
        self.reset_parameters()

    @classmethod
    def from_config(cls, config) -> STAB:
        """The STAB of a `VideoPandaConfig`."""
        return cls(config.stab_hidden_size, config.stab_num_heads, patch_size=config.patch_size,
                   conv_stride=config.conv_stride, chunk_size=config.chunk_size, lste_reduction=config.lste_reduction,
                   mlp_ratio=config.gstra_mlp_ratio, dropout=config.dropout,
                   empty_frame_patches=config.empty_frame_patches, use_lste=config.stab_use_lste,
                   use_gstra=config.stab_use_gstra, use_fsra=config.stab_use_fsra, downsample=config.stab_downsample)

    def reset_parameters(self) -> None:
        """The constructor-level initialisations of the reference (spec 1.6)."""
        with torch.no_grad():
            self.split_embedding.normal_()
            if self.class_embedding is not None:
                self.class_embedding.normal_()
            if self.temporal_cls_token is not None:
                self.temporal_cls_token.zero_()
            if self.balance is not None:
                self.balance.zero_()

    def forward(self, pixel_values: torch.Tensor) -> STABOutput:
        """pixel_values: [B, T, 4, S, S] (RGB normalised + valid-pixel mask) -> STABOutput (tokens before projector)."""
        B, T = pixel_values.shape[:2]
        frames = pixel_values.flatten(0, 1).to(self.patch_embedding.weight.dtype)  # [BT, 4, S, S]
        patches = self.patch_embedding(frames[:, :3])  # [BT, C, G, G]
        valid = patch_valid_mask(frames[:, 3:], self.patch_size)  # [BT, G, G]
        video_cls = None
        if T > 1:
            patches, video_cls = self.temporal(patches.unflatten(0, (B, T)))
        return self.frame_tokens(patches.permute(0, 2, 3, 1), valid, video_cls)

    def temporal(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LSTE + GSTRA + dense connection over chunks. patches: [B, T, C, G, G] -> ([B*T, C, G, G], [B*T, C])."""
        B, T, C, G, _ = patches.shape
        feats, cls = [], []
        for chunk in frame_chunks(patches, self.chunk_size):  # at most two groups of equal-length chunks
            n, t = chunk.shape[:2]
            x = chunk.transpose(1, 2)  # [n, C, t, G, G]
            if self.lste is not None:
                x = self.lste(x)
            feats.append((x.transpose(1, 2) + chunk).reshape(B, -1, C, G, G))  # dense connection
            if self.dec is not None:
                keys = x.flatten(2).transpose(1, 2)  # [n, t*G*G, C], (t, h, w) order
                c = self.dec(self.temporal_cls_token.expand(n, 1, C), keys)[:, 0]  # [n, C]
                cls.append(c.view(B, -1, 1, C).expand(B, n // B, t, C).reshape(B, -1, C))
        video_cls = torch.cat(cls, 1).flatten(0, 1) if cls else None
        return torch.cat(feats, 1).flatten(0, 1), video_cls

    def frame_tokens(self, feats: torch.Tensor, valid: torch.Tensor, video_cls: torch.Tensor | None) -> STABOutput:
        """Crop, LSD, FSRA, split tokens, CLS fusion. feats: [BT, G, G, C] channels-last."""
        boxes = crop_boxes(valid, self.empty_frame_patches)  # [BT, 4]
        s = self.conv_stride
        grid = boxes[:, 2:] // s  # [BT, 2] (h, w)
        counts = 1 + grid[:, 0] * (grid[:, 1] + 1)
        offsets = torch.cumsum(counts, 0) - counts
        out = feats.new_empty(int(counts.sum()), feats.shape[-1])
        for size in torch.unique(boxes[:, 2:], dim=0).tolist():  # usually one or two crop sizes per batch
            idx = ((boxes[:, 2] == size[0]) & (boxes[:, 3] == size[1])).nonzero()[:, 0]
            tokens = self._group_tokens(feats, idx, boxes[idx, :2], size, video_cls)  # [n, L, C]
            rows = offsets[idx, None] + torch.arange(tokens.shape[1], device=feats.device)
            out[rows.flatten()] = tokens.flatten(0, 1).to(out.dtype)
        return STABOutput(out, counts, grid)

    def _group_tokens(self, feats: torch.Tensor, idx: torch.Tensor, corner: torch.Tensor, size: list[int],
                      video_cls: torch.Tensor | None) -> torch.Tensor:
        """Tokens of n frames sharing one crop size: [n, 1 + h*(w+1), C]."""
        H, W = size
        rows = corner[:, :1] + torch.arange(H, device=feats.device)  # [n, H]
        cols = corner[:, 1:] + torch.arange(W, device=feats.device)  # [n, W]
        crop = feats[idx[:, None, None], rows[:, :, None], cols[:, None, :]]  # [n, H, W, C]
        if self.local_attention is not None:
            tokens = self.local_attention(crop)  # [n, h*w, C]
        else:
            s = self.conv_stride
            pooled = F.avg_pool2d(crop.permute(0, 3, 1, 2), s, s)  # [n, C, h, w]
            tokens = pooled.flatten(2).transpose(1, 2)
        n, C = crop.shape[0], crop.shape[-1]
        h, w = H // self.conv_stride, W // self.conv_stride
        frame_cls = self.global_attention(self.class_embedding, tokens) if self.global_attention is not None else None
        cls = self.cls_token(frame_cls, None if video_cls is None else video_cls[idx], tokens)
        split = self.split_embedding.expand(n, h, 1, C)
        tokens = torch.cat([tokens.view(n, h, w, C), split.to(tokens.dtype)], 2).reshape(n, h * (w + 1), C)
        return torch.cat([cls[:, None].to(tokens.dtype), tokens], 1)

    def cls_token(self, frame_cls: torch.Tensor | None, video_cls: torch.Tensor | None, tokens: torch.Tensor
                  ) -> torch.Tensor:
        """The CLS token of n frames: fused GSTRA+FSRA (video), whichever of them exists, else the mean LSD token.

        frame_cls, video_cls: [n, C] or None; tokens: [n, L, C] LSD tokens.
        """
        if frame_cls is not None and video_cls is not None:
            weight = torch.sigmoid(self.balance)
            return self.proj((1 - weight) * video_cls + weight * frame_cls)
        if frame_cls is not None:
            return frame_cls
        if video_cls is not None:
            return video_cls
        return tokens.mean(1)

    def crop_boxes_for(self, pixel_values: torch.Tensor) -> list[tuple[int, int, int, int]]:
        """Per-frame crop boxes (top, left, height, width in patches) of [B, T, 4, S, S] pixel values: the geometry
        `frame_tokens` uses (`transforms.crop_boxes`), read on the host."""
        mask = pixel_values.flatten(0, 1)[:, 3:]
        boxes = crop_boxes(patch_valid_mask(mask, self.patch_size), self.empty_frame_patches)
        return [tuple(b) for b in boxes.tolist()]


def frame_chunks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """[B, T, ...] -> up to two [n, t, ...] groups: B*(T//size) chunks of `size` frames, then the remainder."""
    B, T = x.shape[:2]
    full, rest = divmod(T, size)
    groups = []
    if full:
        groups.append(x[:, : full * size].reshape(B * full, size, *x.shape[2:]))
    if rest:
        groups.append(x[:, full * size:])
    return groups
