"""The Spatio-Temporal Alignment Block (STAB) of Video-Panda, batched.

Paper: "Video-Panda: Parameter-efficient Alignment for Encoder-free Video-Language Models", arXiv 2412.18609.
Reference: github.com/jh-yi/Video-Panda @ 995a737, `VideoTokenizer` in
`videopanda/model/multimodal_encoder/vision_tokenizer.py`. Parameter names follow the reference so that official
checkpoints load by a prefix rename only.

Shape legend: B videos, T frames per video, C channels (STAB width), G patch-grid side of the canvas, H/W crop size in
patches, h/w LSD token grid (H/conv_stride, W/conv_stride), L key length, n frames in a group, D LLM width.

Pipeline per video (spec section 1.3):
    patch embedding -> [video only] LSTE (lmhra1 + dpe) -> GSTRA (a temporal class token per chunk of frames)
    -> dense connection (+ raw patch embedding) -> crop to the valid region -> LSD (2x2 local attention downsampling)
    -> FSRA (class-embedding attention) -> rows of w tokens each followed by a split token
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

Two forms of the same function (docs/model.md, "Fast inference"):
  * the straightforward modules below: training, the parity tests, the reading of the maths;
  * `STAB.fuse()`: an inference-only form that folds BatchNorm and other constants, keeps one channels-last layout,
    runs the patch embedding as one matmul, absorbs the constant GSTRA/FSRA queries into their key weights and needs
    no host sync when the crop boxes are known (`crop_boxes=`). `unfuse()` goes back.
Ablation switches (`use_lste`, `use_gstra`, `use_fsra`, `downsample`) remove one component each (docs/model.md,
"Ablation switches"); a switched-off component is not built. The token count per frame never changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import count_visual_tokens, crop_boxes, patch_valid_mask  # noqa: F401  (geometry)
from . import kernels


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


class LocalAttention(nn.Module):
    """LSD: each conv_stride x conv_stride window is summarised by attention from its average-pooled token.

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


class GlobalAttention(nn.Module):
    """FSRA: a learned class embedding attends over all LSD tokens of a frame. Scale C**-0.5 as in the reference."""

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
    The two long tensors are on the tokens' device, except in the fused form, which keeps them on the host (it
    knows them there; reading them costs no sync).
    """

    tokens: torch.Tensor
    tokens_per_frame: torch.Tensor
    grid_hw: torch.Tensor


class _HostLayoutOutput(STABOutput):
    """The fused form's STABOutput: the layout stays Python ints until read, so that a compiled forward holds no
    host tensor ops (those would keep inductor from using CUDA graphs for it)."""

    def __init__(self, tokens: torch.Tensor, grid: list[tuple[int, int]]) -> None:
        self.tokens = tokens
        self._grid = grid

    @property
    def grid_hw(self) -> torch.Tensor:
        return torch.tensor(self._grid, dtype=torch.long).view(-1, 2)

    @property
    def tokens_per_frame(self) -> torch.Tensor:
        return torch.tensor([1 + h * (w + 1) for h, w in self._grid], dtype=torch.long)


CropBoxes = Sequence[Sequence[int]] | torch.Tensor | str


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
        self.lmhra1 = LocalTemporalMHRA(dim, lste_reduction) if use_lste else None
        self.dpe = nn.Conv3d(dim, dim, kernel_size=3, padding=1, groups=dim) if use_lste else None
        if self.dpe is not None:
            zero_init(self.dpe, ("bias",))
        self.dec = GSTRA(dim, num_heads, mlp_ratio, dropout) if use_gstra else None
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(dropout), nn.Linear(dim, dim)) if fuse_cls else None
        self.local_attention = LocalAttention(dim, conv_stride, num_heads) if downsample == "lsd" else None
        self.global_attention = GlobalAttention(dim, num_heads) if use_fsra else None
        self._fused = False
        # fused dpe form: None = auto ("triton" on a GPU with Triton, else "shift" when compiling, else "conv")
        self.dpe_impl: str | None = None
        # fused LSD form: None = auto ("triton", the window attention as one Triton kernel, on a GPU with Triton;
        # else "plain")
        self.lsd_impl: str | None = None
        # fused patch unfold: None = auto ("triton", one Triton kernel, on a GPU with Triton; else "torch")
        self.unfold_impl: str | None = None
        # GSTRA's and FSRA's pooling: None = auto ("triton", two Triton passes that never write the layer-normed keys,
        # on a GPU with Triton; else "plain": layer norm, then two matmuls)
        self.pool_impl: str | None = None
        # the LSTE's second 1x1x1 conv with the residual add and the dpe's zero border in its epilogue: None = auto
        # ("triton", one TMA GEMM (`gemm_kernels.linear_residual_pad`), on a GPU with TMA in bfloat16/float16 when
        # the dpe is the Triton kernel; else "torch": cuBLAS, then inductor's add-and-pad pass)
        self.gemm_impl: str | None = None
        self.register_load_state_dict_post_hook(_refold_after_load)
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

    def forward(self, pixel_values: torch.Tensor, crop_boxes: CropBoxes | None = None, *,
                pixel_address: torch.Tensor | None = None) -> STABOutput:
        """pixel_values: [B, T, 4, S, S] (RGB normalised + valid-pixel mask) -> STABOutput (tokens before projector).

        crop_boxes: a hint for the fused form (`fuse`); the straightforward form always reads the mask.
            None: read from the mask channel (one small device->host copy, overlapped with the patch embedding).
            "full": every frame is the whole canvas (the caller promises that all pixels are valid, e.g. square
            videos of `num_frames` frames). Or per-frame (top, left, height, width) in patches, e.g. from
            `crop_boxes_for` on the host copy of the pixels. Given boxes make the call free of host syncs, and (as
            Python ints) let torch.compile trace it as one graph, specialised on them.
        pixel_address: fused form with the Triton unfold and given boxes only: one int64 on the device holding the
            address of contiguous pixels shaped and typed as `pixel_values`, which the unfold reads there when it
            runs; `pixel_values` then only stands for their shape and dtype (`kernels.patch_unfold_at`; how
            `GraphedEncoder` feeds its CUDA graphs without copying the caller's pixels).
        """
        if pixel_address is not None and not (self._fused and crop_boxes is not None):
            raise ValueError("pixel_address needs the fused STAB (fuse()) and given crop_boxes")
        if self._fused:
            return self._fast_forward(pixel_values, crop_boxes, pixel_address)
        B, T = pixel_values.shape[:2]
        frames = pixel_values.flatten(0, 1).to(self.patch_embedding.weight.dtype)  # [BT, 4, S, S]
        patches = self.patch_embedding(frames[:, :3])  # [BT, C, G, G]
        valid = patch_valid_mask(frames[:, 3:], self.patch_size)  # [BT, G, G]
        video_cls = None
        if T > 1:
            patches, video_cls = self._temporal(patches.unflatten(0, (B, T)))
        return self._frame_tokens(patches.permute(0, 2, 3, 1), valid, video_cls)

    def _temporal(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LSTE + GSTRA + dense connection over chunks. patches: [B, T, C, G, G] -> ([B*T, C, G, G], [B*T, C])."""
        B, T, C, G, _ = patches.shape
        feats, cls = [], []
        for chunk in _chunks(patches, self.chunk_size):  # at most two groups of equal-length chunks
            n, t = chunk.shape[:2]
            x = chunk.transpose(1, 2)  # [n, C, t, G, G]
            if self.lmhra1 is not None:
                x = x + self.lmhra1(x)
                x = x + self.dpe(x)
            feats.append((x.transpose(1, 2) + chunk).reshape(B, -1, C, G, G))  # dense connection
            if self.dec is not None:
                keys = x.flatten(2).transpose(1, 2)  # [n, t*G*G, C], (t, h, w) order
                c = self.dec(self.temporal_cls_token.expand(n, 1, C), keys)[:, 0]  # [n, C]
                cls.append(c.view(B, -1, 1, C).expand(B, n // B, t, C).reshape(B, -1, C))
        video_cls = torch.cat(cls, 1).flatten(0, 1) if cls else None
        return torch.cat(feats, 1).flatten(0, 1), video_cls

    def _frame_tokens(self, feats: torch.Tensor, valid: torch.Tensor, video_cls: torch.Tensor | None) -> STABOutput:
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
        cls = self._cls(frame_cls, None if video_cls is None else video_cls[idx], tokens)
        split = self.split_embedding.expand(n, h, 1, C)
        tokens = torch.cat([tokens.view(n, h, w, C), split.to(tokens.dtype)], 2).reshape(n, h * (w + 1), C)
        return torch.cat([cls[:, None].to(tokens.dtype), tokens], 1)

    def _cls(self, frame_cls: torch.Tensor | None, video_cls: torch.Tensor | None, tokens: torch.Tensor
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

    # -- inference fast path ------------------------------------------------------------------------------------------
    @property
    def fused(self) -> bool:
        return self._fused

    def fuse(self) -> STAB:
        """Prepare the inference-only fast form in place; returns self. Same function, other arithmetic order.

        What changes (docs/model.md, "Fast inference"): BatchNorm is folded into the next 1x1x1 conv (which then reads
        the unfolded patches directly), the temporal conv bias into the last one, dpe's residual into its centre tap;
        the constant GSTRA and FSRA queries are folded into their key weights (scores = LN(keys) @ u, values projected
        after pooling); the patch embedding is one matmul over unfolded 14x14 patches; everything runs channels-last.
        The folded tensors are non-persistent buffers: `state_dict()` is unchanged, loading weights re-folds, `.to()`
        carries them.
        `train()` raises until `unfuse()`. Call it after loading weights and picking the dtype.
        """
        self.eval()
        self._fused = True
        self._fold()
        return self

    def unfuse(self) -> STAB:
        """Back to the straightforward form (for training); returns self."""
        for name in list(self._buffers):
            if name.startswith("_fold_"):
                del self._buffers[name]
        self._fused = False
        return self

    def train(self, mode: bool = True) -> STAB:
        if mode and self._fused:
            raise RuntimeError("this STAB was fused for inference (STAB.fuse(): BatchNorm folded, constant queries "
                               "precomputed; no gradients reach the parameters); call .unfuse() before training")
        return super().train(mode)

    @torch.no_grad()
    def _fold(self) -> None:
        """Compute the folded constants (in float32 at least, stored in the parameter dtype)."""
        dtype = self.patch_embedding.weight.dtype
        wide = torch.promote_types(dtype, torch.float32)
        C, heads = self.dim, self.num_heads
        hd = C // heads

        def keep(name: str, value: torch.Tensor, dtype: torch.dtype = dtype) -> None:
            self.register_buffer("_fold_" + name, value.to(dtype).contiguous(), persistent=False)

        def keep_pool(name: str, ln: nn.LayerNorm, u: torch.Tensor) -> None:
            """u [C, heads] for the plain pooling; for `kernels.ln_pool`, the norm's affine folded in (in the model
            dtype, for its tensor-core dot) and the sums it needs in float32 at least."""
            keep(name + "_u", u)
            gu = (ln.weight.to(wide)[:, None] * u).to(dtype)  # rounded as the kernel reads it
            keep(name + "_gu", gu)
            keep(name + "_s1", gu.to(wide).sum(0), wide)
            keep(name + "_s0", ln.bias.to(wide) @ u, wide)

        # the patch embedding as a [C, 3 * p * p] matrix, zero columns up to a multiple of 8 (aligned matmul rows
        # for the unfolded patches, which the Triton unfold and the compiled path write padded)
        patch_w = self.patch_embedding.weight.flatten(1)
        patch_w = F.pad(patch_w, (0, -patch_w.shape[1] % 8))
        keep("patch_w", patch_w)

        if self.lmhra1 is not None:
            bn, down, tconv, up = self.lmhra1.pos_embed
            scale = bn.weight.to(wide) * torch.rsqrt(bn.running_var.to(wide) + bn.eps)  # BN(x) = x * scale + shift
            shift = bn.bias.to(wide) - bn.running_mean.to(wide) * scale
            w1 = down.weight.to(wide).flatten(1)  # [I, C]
            # the inner width I (682 for C = 1024) padded with zero channels to a multiple of 16: aligned matmuls,
            # which inductor would otherwise pad with extra copies, and rows whose strides the TMA descriptors of
            # `gemm_kernels` accept (Triton's interpreter wants 16 elements); the zero channels add nothing
            pad = -w1.shape[0] % 16
            # the first LSTE matmul taken straight from the unfolded patches: the patch embedding has no bias, so
            # x @ W1^T == patches @ (W1 Wp)^T, with K = 3 * 14 * 14 (592 padded) instead of C = 1024 (40% fewer
            # FLOPs, and x is not rounded to the model dtype on the way)
            keep("patch_lste_w", F.pad(w1 * scale, (0, 0, 0, pad)) @ patch_w.to(wide))
            keep("lste_b1", F.pad(down.bias.to(wide) + w1 @ shift, (0, pad)))
            keep("lste_taps", F.pad(tconv.weight.to(wide).flatten(1).t(), (0, pad)))  # [k, I]
            keep("lste_w2", F.pad(up.weight.to(wide).flatten(1), (0, pad)))  # [C, I]
            keep("lste_b2", up.bias.to(wide) + up.weight.to(wide).flatten(1) @ tconv.bias.to(wide))
            dpe = self.dpe.weight.to(wide).clone()  # [C, 1, 3, 3, 3]
            dpe[:, 0, 1, 1, 1] += 1  # x + dpe(x) == dpe'(x) with the identity in the centre tap
            keep("dpe_w", dpe)
        if self.dec is not None:
            attn = self.dec.attn
            wq, wk, _ = attn.in_proj_weight.to(wide).chunk(3)
            bq = attn.in_proj_bias.to(wide).chunk(3)[0]
            q = F.linear(_layer_norm_up(self.dec.ln_1, self.temporal_cls_token.view(C)), wq, bq)  # [C]
            # q_h . (Wk_h k + bk_h) * hd^-0.5 == k . u_h + const_h, and the constant cancels in the softmax.
            keep_pool("gstra", self.dec.ln_3, torch.einsum("hd,hdc->ch", q.view(heads, hd), wk.view(heads, hd, C)) *
                      hd**-0.5)
        if self.global_attention is not None:
            ga = self.global_attention
            q = F.linear(_layer_norm_up(ga.q[0], self.class_embedding), ga.q[1].weight.to(wide))  # [C]
            wk = ga.kv[1].weight.to(wide)[:C]
            keep_pool("fsra", ga.kv[0], torch.einsum("hd,hdc->ch", q.view(heads, hd), wk.view(heads, hd, C)) *
                      ga.scale)

    def _fast_forward(self, pixel_values: torch.Tensor, crop_boxes: CropBoxes | None,
                      pixel_address: torch.Tensor | None = None) -> STABOutput:
        """The fused form of `forward`. Host syncs: none when `crop_boxes` is given; otherwise one small copy of
        the boxes, issued before the heavy work so the host has them while the device still computes."""
        B, T, _, S, _ = pixel_values.shape
        G = S // self.patch_size
        frames = pixel_values.flatten(0, 1)  # [BT, 4, S, S]
        pending = _boxes_to_host(frames[:, 3:], self.patch_size, self.empty_frame_patches) \
            if crop_boxes is None else None
        lste = T > 1 and self.lmhra1 is not None
        feats, y = self._fast_patch_embed(frames, G, lste, pixel_address)  # [BT, G, G, C], [BT, G, G, I] or None
        video_cls = None
        if T > 1:
            feats, video_cls = self._fast_temporal(feats.unflatten(0, (B, T)),
                                                   None if y is None else y.unflatten(0, (B, T)))
        if crop_boxes is None:
            boxes = _boxes_wait(pending)
        elif isinstance(crop_boxes, str):
            if crop_boxes != "full":
                raise ValueError(f"crop_boxes must be None, 'full' or per-frame boxes, got {crop_boxes!r}")
            boxes = [(0, 0, G, G)] * (B * T)
        else:
            boxes = [tuple(int(v) for v in b) for b in
                     (crop_boxes.tolist() if isinstance(crop_boxes, torch.Tensor) else crop_boxes)]
            if len(boxes) != B * T:
                raise ValueError(f"crop_boxes has {len(boxes)} boxes for {B * T} frames")
        return self._fast_frame_tokens(feats, video_cls, boxes)

    def _fast_patch_embed(self, frames: torch.Tensor, G: int, lste: bool, address: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[BT, 4, S, S] -> ([BT, G, G, C], and with `lste` the LSTE's first matmul [BT, G, G, I] or None): one
        unfold copy (cast included) and a matmul per output, both from the unfolded patches. `address`: the frames
        are read at the address it holds (`forward`'s pixel_address)."""
        p, w = self.patch_size, self.patch_embedding.weight
        BT, K = frames.shape[0], 3 * p * p
        impl = self.unfold_impl
        if impl is None and address is None:
            impl = "triton" if frames.is_cuda and kernels.available(frames) else "torch"
        padded = self._fold_patch_w  # [C, K rounded up to a multiple of 8]
        weights = (padded, self._fold_patch_lste_w) if lste else (padded,)
        if address is not None:
            if impl not in (None, "triton") or not kernels.available(address):
                raise ValueError("pixel_address needs the Triton unfold (unfold_impl None or 'triton', on a device "
                                 "with Triton)")
            patches = kernels.patch_unfold_at(address, list(frames.shape), frames.dtype, p, padded.shape[1], w.dtype)
        elif impl == "triton":  # rows padded (aligned for the matmul), written in one pass
            patches = kernels.patch_unfold(frames, p, padded.shape[1], w.dtype)
        elif impl != "torch":
            raise ValueError(f"unfold_impl must be None, 'triton' or 'torch', got {impl!r}")
        else:
            rgb = frames[:, :3, : G * p, : G * p].unflatten(3, (G, p)).unflatten(2, (G, p))  # [BT, 3, G, p, G, p]
            if torch.compiler.is_compiling():
                # K padded here, so that inductor's matmul takes the unfold as it is: otherwise it copies the
                # unfolded patches once more to align them (two passes over the frames instead of one)
                patches = F.pad(rgb.permute(0, 2, 4, 1, 3, 5).reshape(BT * G * G, K).to(w.dtype),
                                (0, padded.shape[1] - K))
            else:
                patches = torch.empty(BT, G, G, 3, p, p, dtype=w.dtype, device=frames.device)
                patches.copy_(rgb.permute(0, 2, 4, 1, 3, 5))
                patches = patches.view(BT * G * G, K)
                weights = tuple(m[:, :K] for m in weights)  # the padding columns are zero
        feats, *rest = (F.linear(patches, m).view(BT, G, G, -1) for m in weights)
        return feats, (rest[0] if rest else None)

    def _fast_temporal(self, patches: torch.Tensor, y: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`_temporal`, channels-last. patches: [B, T, G, G, C], y: the LSTE's first matmul [B, T, G, G, I] (None
        without LSTE) -> ([B*T, G, G, C], [B*T, C] or None)."""
        B, T, G, _, C = patches.shape
        feats, cls = [], []
        chunks = _chunks(patches, self.chunk_size)
        ys = [None] * len(chunks) if y is None else _chunks(y, self.chunk_size)
        for chunk, y_chunk in zip(chunks, ys):  # [n, t, G, G, C], [n, t, G, G, I]
            n, t = chunk.shape[:2]
            # x and the dense connection x + chunk
            x, dense = self._fast_lste(chunk, y_chunk) if y_chunk is not None else (chunk, chunk + chunk)
            feats.append(dense.reshape(B, -1, G, G, C))
            if self.dec is not None:
                c = self._fast_gstra(x.reshape(n, t * G * G, C))  # [n, C]
                cls.append(c.view(B, -1, 1, C).expand(B, n // B, t, C).reshape(B, -1, C))
        video_cls = torch.cat(cls, 1).flatten(0, 1) if cls else None
        feats = feats[0] if len(feats) == 1 else torch.cat(feats, 1)
        return feats.flatten(0, 1), video_cls

    def _fast_lste(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x + lmhra1(x), then + dpe(.), with BN folded; also that plus x (the dense connection).
        x: [n, t, G, G, C]; y: x's first LSTE matmul without its bias [n, t, G, G, I] (`_fast_patch_embed`) ->
        (same as x, same as x)."""
        taps, b1 = self._fold_lste_taps, self._fold_lste_b1
        # the bias goes in after the taps, as a [t, I] term (zero padding drops end taps): y stays the matmul's own
        # output, and inductor fuses the taps into one pass (with the bias inside y it took two)
        z = _shifted_sum(y, taps, dim=1) + _shifted_sum(b1.expand(1, x.shape[1], 1, 1, -1), taps, dim=1)
        if self._gemm_form(x) == "triton" and self._dpe_form(x) == "triton":
            from . import gemm_kernels

            n, t, G, _, C = x.shape
            xp = gemm_kernels.linear_residual_pad(z.reshape(-1, z.shape[-1]), self._fold_lste_w2, self._fold_lste_b2,
                                                  x.reshape(-1, C), G)  # x + z W2^T + b2, zero-bordered
            return kernels.dpe3d_residual(xp.view(n, t, G + 2, G + 2, C), self._fold_dpe_w, self.dpe.bias, x)
        return self._fast_dpe(x + F.linear(z, self._fold_lste_w2, self._fold_lste_b2), x)

    def _gemm_form(self, x: torch.Tensor) -> str:
        impl = self.gemm_impl
        if impl is None:
            return "triton" if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and _tma_ok(x) else "torch"
        if impl not in ("triton", "torch"):
            raise ValueError(f"gemm_impl must be None, 'triton' or 'torch', got {impl!r}")
        if impl == "triton" and not _tma_ok(x):
            raise ValueError("gemm_impl='triton' needs Triton and a GPU with TMA (compute capability 9.0+), or "
                             "Triton's interpreter")
        return impl

    def _dpe_form(self, x: torch.Tensor) -> str:
        impl = self.dpe_impl
        if impl is None:
            impl = "triton" if x.is_cuda and kernels.available(x) else \
                "shift" if torch.compiler.is_compiling() else "conv"
        return impl

    def _fast_dpe(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y = x + dpe(x), as one depthwise 3x3x3 conv with the identity folded in, and y + residual.
        x, residual: [n, t, G, G, C]."""
        impl = self._dpe_form(x)
        if impl == "triton":
            # a zero border, so the kernel needs no bounds masks; it also writes y + residual, so that the passes
            # after it read one tensor, not two (modeling/kernels.py)
            return kernels.dpe3d_residual(F.pad(x, (0, 0, 1, 1, 1, 1)), self._fold_dpe_w, self.dpe.bias, residual)
        if impl == "shift":  # 27 shifted multiply-adds: inductor fuses them into one kernel
            w = self._fold_dpe_w.view(-1, 27).t().view(3, 3, 3, -1)
            xp = F.pad(x, (0, 0, 1, 1, 1, 1, 1, 1))
            t, G1, G2 = x.shape[1:4]
            out = self.dpe.bias
            for a in range(3):
                for b in range(3):
                    for c in range(3):
                        out = out + w[a, b, c] * xp[:, a:a + t, b:b + G1, c:c + G2]
            return out, out + residual
        if impl != "conv":
            raise ValueError(f"dpe_impl must be None, 'triton', 'shift' or 'conv', got {impl!r}")
        # one depthwise conv on the channels-last view (PyTorch routes channels-last depthwise convs to cuDNN on GPU,
        # to oneDNN on CPU; a contiguous NCDHW input would get the slow native depthwise-3d kernel)
        y = F.conv3d(x.permute(0, 4, 1, 2, 3), self._fold_dpe_w, self.dpe.bias, padding=1, groups=x.shape[-1])
        y = y.permute(0, 2, 3, 4, 1)
        return y, y + residual

    def _fast_gstra(self, x: torch.Tensor) -> torch.Tensor:
        """GSTRA with its constant query folded: x [n, L, C] (LSTE output) -> video cls [n, C]."""
        dec, C = self.dec, self.dim
        pooled = self._fast_ln_pool(x, dec.ln_3, "gstra")  # [n, heads, C]: sum_l a_hl k_l
        wv, bv = dec.attn.in_proj_weight[2 * C:], dec.attn.in_proj_bias[2 * C:]
        out = torch.einsum("nhc,hdc->nhd", pooled, wv.view(self.num_heads, -1, C)).flatten(1) + bv  # [n, C]
        q = self.temporal_cls_token.view(1, C) + dec.attn.out_proj(out)
        return q + dec.mlp(dec.ln_2(q))

    def _fast_frame_tokens(self, feats: torch.Tensor, video_cls: torch.Tensor | None,
                           boxes: list[tuple[int, ...]]) -> STABOutput:
        """Crop, LSD, FSRA, rows, CLS per group of frames with one crop box (host ints: static shapes, plain slices).

        feats: [BT, G, G, C]. Returns tokens in frame order; tokens_per_frame and grid_hw on the host (no sync to
        read them).
        """
        s = self.conv_stride
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, box in enumerate(boxes):
            groups.setdefault(box, []).append(i)
        pieces: dict[int, tuple[torch.Tensor, int, int]] = {}  # first frame of a run -> (tokens, start, stop)
        for (top, left, H, W), idx in groups.items():
            h, w = H // s, W // s
            runs = _runs(idx)
            crop = _take(feats, runs)[:, top:top + h * s, left:left + w * s]  # [n, h*s, w*s, C]
            vcls = None if video_cls is None else _take(video_cls, runs)
            tokens = self._fast_group(crop, vcls)  # [n, 1 + h*(w+1), C]
            start = 0
            for a, b in runs:
                pieces[a] = (tokens, start, start + b - a)
                start += b - a
        parts = [pieces[a][0][pieces[a][1]:pieces[a][2]].flatten(0, 1) for a in sorted(pieces)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return _HostLayoutOutput(out, [(b[2] // s, b[3] // s) for b in boxes])

    def _fast_group(self, crop: torch.Tensor, video_cls: torch.Tensor | None) -> torch.Tensor:
        """Tokens of n frames with one crop box: [n, h*s, w*s, C] -> [n, 1 + h*(w+1), C]."""
        n, Hs, Ws, C = crop.shape
        s = self.conv_stride
        h, w = Hs // s, Ws // s
        if self.local_attention is None:
            tokens = crop.reshape(n, h, s, w, s, C).mean((2, 4))  # [n, h, w, C]
        else:
            tokens = self._fast_lsd(crop)
        tokens = tokens.reshape(n, h * w, C)
        frame_cls = self._fast_fsra(tokens) if self.global_attention is not None else None
        cls = self._cls(frame_cls, video_cls, tokens)
        out = torch.empty(n, 1 + h * (w + 1), C, dtype=tokens.dtype, device=tokens.device)
        out[:, 0] = cls
        rows = out[:, 1:].view(n, h, w + 1, C)
        rows[:, :, :w] = tokens.view(n, h, w, C)
        rows[:, :, w] = self.split_embedding
        return out

    def _fast_lsd(self, crop: torch.Tensor) -> torch.Tensor:
        """LSD without gathering windows: K/V for every token in place. crop [n, h*s, w*s, C] -> [n, h, w, C].

        `lsd_impl` "triton" (the default on a GPU): the scores, softmax and weighted sum as one Triton kernel
        (kernels.lsd_attend) that reads the keys and values once; "plain": as torch ops (inductor makes a score
        reduction and a weighted sum of them).
        """
        la, heads = self.local_attention, self.num_heads
        n, Hs, Ws, C = crop.shape
        s = self.conv_stride
        h, w = Hs // s, Ws // s
        windows = crop.reshape(n, h, s, w, s, C)
        pooled = windows.mean((2, 4))  # [n, h, w, C]
        kv = la.kv(windows)  # [n, h, s, w, s, 2C]
        impl = self.lsd_impl
        if impl is None:
            impl = "triton" if kv.is_cuda and kernels.available(kv) else "plain"
        if impl == "triton":
            return pooled + la.proj(kernels.lsd_attend(la.q(pooled), kv, heads, la.scale))
        if impl != "plain":
            raise ValueError(f"lsd_impl must be None, 'triton' or 'plain', got {impl!r}")
        q = (la.q(pooled) * la.scale).view(n, h, 1, w, 1, heads, -1)
        k, v = kv.view(n, h, s, w, s, 2, heads, -1).unbind(5)  # [n, h, s, w, s, heads, hd]
        scores = (q * k).sum(-1)  # [n, h, s, w, s, heads]
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        e = (scores - scores.amax((2, 4), keepdim=True)).exp()
        attn = (e / e.sum((2, 4), keepdim=True)).to(v.dtype)  # softmax over the s*s window positions
        out = (attn[..., None] * v).sum((2, 4))  # [n, h, w, heads, hd]
        return pooled + la.proj(out.flatten(3))

    def _fast_fsra(self, tokens: torch.Tensor) -> torch.Tensor:
        """FSRA with its constant query folded. tokens [n, L, C] -> [n, C]."""
        ga, C = self.global_attention, self.dim
        pooled = self._fast_ln_pool(tokens, ga.kv[0], "fsra")  # [n, heads, C]
        wv = ga.kv[1].weight[C:].view(self.num_heads, -1, C)
        out = torch.einsum("nhc,hdc->nhd", pooled, wv).flatten(1)
        return self.class_embedding + ga.proj(out)

    def _fast_ln_pool(self, x: torch.Tensor, ln: nn.LayerNorm, name: str) -> torch.Tensor:
        """The constant query's attention over keys ln(x) (the folded `u`), pooled: x [n, L, C] -> [n, heads, C],
        sum_l softmax_l(ln(x) @ u)_h ln(x_l). "triton" never writes ln(x) (`kernels.ln_pool`)."""
        impl = self.pool_impl
        if impl is None:
            impl = "triton" if x.is_cuda and kernels.available(x) else "plain"
        if impl == "triton":
            folds = (getattr(self, f"_fold_{name}_{part}") for part in ("gu", "s1", "s0"))
            return kernels.ln_pool(x, *folds, ln.weight, ln.bias, ln.eps).to(x.dtype)
        if impl != "plain":
            raise ValueError(f"pool_impl must be None, 'triton' or 'plain', got {impl!r}")
        keys = ln(x)  # [n, L, C]
        attn = _softmax_up(keys @ getattr(self, f"_fold_{name}_u"), 1)  # [n, L, heads]
        return attn.transpose(1, 2) @ keys

    def crop_boxes_for(self, pixel_values: torch.Tensor) -> list[tuple[int, int, int, int]]:
        """Per-frame crop boxes (top, left, height, width in patches) of [B, T, 4, S, S] pixel values, for
        `forward(..., crop_boxes=)`. Reads the mask, so call it where the pixels are on the host (after the
        processor, before `.to(device)`) to keep the device path sync-free."""
        mask = pixel_values.flatten(0, 1)[:, 3:]
        boxes = crop_boxes(patch_valid_mask(mask, self.patch_size), self.empty_frame_patches)
        return [tuple(b) for b in boxes.tolist()]


def _tma_ok(x: torch.Tensor) -> bool:
    """Whether `gemm_kernels` can run on x's device (imported only then: it needs Triton)."""
    if not kernels.available(x):
        return False
    from . import gemm_kernels

    return gemm_kernels.tma_available(x)


def _chunks(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """[B, T, ...] -> up to two [n, t, ...] groups: B*(T//size) chunks of `size` frames, then the remainder."""
    B, T = x.shape[:2]
    full, rest = divmod(T, size)
    groups = []
    if full:
        groups.append(x[:, : full * size].reshape(B * full, size, *x.shape[2:]))
    if rest:
        groups.append(x[:, full * size:])
    return groups


def _shifted_sum(y: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """Depthwise 1-D convolution along `dim` with zero padding: sum_j taps[j] * y[.., t + j - k//2, ..].

    y: [..., channels last]; taps: [k, channels].
    """
    k, r, t = taps.shape[0], taps.shape[0] // 2, y.shape[dim]
    if torch.compiler.is_compiling():  # out of place, with zero-filled shifts: one fused kernel under inductor
        out = taps[r] * y
        for j in range(k):
            d = j - r
            if d and abs(d) < t:
                shifted = y.narrow(dim, max(0, d), t - abs(d))  # y[t + d] for the t where it exists
                zeros = torch.zeros_like(y.narrow(dim, 0, abs(d)))
                out = out + taps[j] * (torch.cat([shifted, zeros], dim) if d > 0 else torch.cat([zeros, shifted], dim))
        return out
    out = taps[r] * y
    for j in range(k):
        d = j - r  # out[t] += taps[j] * y[t + d] where 0 <= t + d < t_max
        if d and abs(d) < t:
            lo = max(0, -d)
            out.narrow(dim, lo, t - abs(d)).add_(taps[j] * y.narrow(dim, lo + d, t - abs(d)))
    return out


def _runs(idx: list[int]) -> list[tuple[int, int]]:
    """Sorted frame indices -> maximal [start, stop) runs of consecutive frames."""
    runs = [[idx[0], idx[0] + 1]]
    for i in idx[1:]:
        if i == runs[-1][1]:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(a, b) for a, b in runs]


def _take(x: torch.Tensor, runs: list[tuple[int, int]]) -> torch.Tensor:
    """Rows of x in the given runs: a view for one run, one copy otherwise (no index tensor, no host->device copy)."""
    if len(runs) == 1:
        return x[runs[0][0]:runs[0][1]]
    return torch.cat([x[a:b] for a, b in runs])


@torch.compiler.disable
def _boxes_to_host(mask: torch.Tensor, patch_size: int, empty_side: int) -> Callable[[], list]:
    """Start copying the crop boxes of [BT, 1, S, S] masks to the host; returns a function that waits for them.

    On CUDA the copy goes to pinned memory behind an event, so the device keeps working on the kernels queued after
    it (the patch embedding and the temporal part) while the host waits only for this small copy.
    """
    boxes = crop_boxes(patch_valid_mask(mask, patch_size), empty_side)
    if boxes.device.type != "cuda":
        return boxes.tolist
    host = torch.empty(boxes.shape, dtype=boxes.dtype, pin_memory=True)
    host.copy_(boxes, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait() -> list:
        done.synchronize()
        return host.tolist()

    return wait


@torch.compiler.disable
def _boxes_wait(pending: Callable[[], list]) -> list[tuple[int, ...]]:
    return [tuple(b) for b in pending()]


def _layer_norm_up(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm in float32 at least."""
    up = torch.promote_types(x.dtype, torch.float32)
    return F.layer_norm(x.to(up), ln.normalized_shape, ln.weight.to(up), ln.bias.to(up), ln.eps)


def _softmax_up(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax in float32 at least (as SDPA does), cast back."""
    return x.to(torch.promote_types(x.dtype, torch.float32)).softmax(dim).to(x.dtype)


def _refold_after_load(module: STAB, incompatible_keys) -> None:
    """New weights make the folded constants stale: fold again."""
    if module._fused:
        module._fold()
