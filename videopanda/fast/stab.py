"""`FusedSTAB`: the STAB's inference form. Same function as `modeling.stab.STAB`, other arithmetic order.

What changes (docs/model.md, "Fast inference"): BatchNorm is folded into the next 1x1x1 conv (which then reads the
unfolded patches directly), the temporal conv bias into the last one, dpe's residual into its centre tap; the constant
GSTRA and FSRA queries are folded into their key weights (scores = LN(keys) @ u, values projected after pooling); the
patch embedding is one matmul over unfolded 14x14 patches; everything runs channels-last; and with the crop boxes
known on the host (`crop_boxes=`) the call needs no host sync. `FastOptions` picks the form of each kernel.

The FusedSTAB shares the STAB's parameters (no copy); the folded constants are non-persistent buffers computed at
construction. An eager call first checks that the STAB's tensors are those folded (same storage, no in-place change
since: a load, an optimiser step, `.to()`) and folds again if not; compiled code skips that check, so call `refold()`
after changing the weights of a compiled or graphed encoder.

Shape legend as in `modeling/stab.py`: B videos, T frames, C channels, G patch-grid side, n frames in a group,
I the LSTE's inner width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.stab import STAB, STABOutput, frame_chunks
from ..transforms import crop_boxes, patch_valid_mask
from . import kernels
from .options import FastOptions

CropBoxes = Sequence[Sequence[int]] | torch.Tensor | str


class HostLayoutOutput(STABOutput):
    """The FusedSTAB's STABOutput: the layout stays Python ints (`grid`, the frames' (h, w)) until read as tensors,
    so that a compiled forward holds no host tensor ops (those would keep inductor from using CUDA graphs for it)."""

    def __init__(self, tokens: torch.Tensor, grid: list[tuple[int, int]]) -> None:
        self.tokens = tokens
        self.grid = grid

    @property
    def grid_hw(self) -> torch.Tensor:
        return torch.tensor(self.grid, dtype=torch.long).view(-1, 2)

    @property
    def tokens_per_frame(self) -> torch.Tensor:
        return torch.tensor([1 + h * (w + 1) for h, w in self.grid], dtype=torch.long)


class FusedSTAB(nn.Module):
    """The inference form of a loaded `STAB`, sharing its parameters.

    Args:
        stab: the STAB (its weights loaded and its dtype and device chosen: the folds are made from them).
        options: the form of each kernel (`FastOptions`).
    Inference only: `train()` raises. The STAB itself stays trainable.
    """

    def __init__(self, stab: STAB, options: FastOptions = FastOptions()) -> None:
        super().__init__()
        if not isinstance(stab, STAB):
            raise TypeError(f"FusedSTAB needs a modeling.stab.STAB, got {type(stab).__name__}")
        self.stab = stab.eval()
        self.options = options
        self.dim, self.num_heads, self.patch_size = stab.dim, stab.num_heads, stab.patch_size
        self.conv_stride, self.chunk_size, self.empty_frame_patches = \
            stab.conv_stride, stab.chunk_size, stab.empty_frame_patches
        self._folded_from: tuple = ()
        self._slots: list[tuple[nn.Module, str]] = []  # (a module of the STAB, one of its tensors' names)
        self.refold()
        super().train(False)

    def train(self, mode: bool = True) -> FusedSTAB:
        if mode:
            raise RuntimeError("FusedSTAB is inference only (BatchNorm folded, constant queries precomputed); train "
                               "its STAB (`.stab`), then refold()")
        return super().train(False)

    def forward(self, pixel_values: torch.Tensor, crop_boxes: CropBoxes | None = None, *,
                pixel_address: torch.Tensor | None = None) -> HostLayoutOutput:
        """pixel_values: [B, T, 4, S, S] (RGB normalised + valid-pixel mask) -> STABOutput, as `STAB.forward`.

        crop_boxes: None: read from the mask channel (one small device->host copy, issued before the heavy work so the
            host has the boxes while the device still computes). "full": every frame is the whole canvas (the caller
            promises that all pixels are valid). Or per-frame (top, left, height, width) in patches, e.g. from
            `crop_boxes_for` on the host copy of the pixels. Given boxes make the call free of host syncs, and (as
            Python ints) let torch.compile trace it as one graph, specialised on them.
        pixel_address: with given boxes and the Triton unfold only: one int64 on the device holding the address of
            contiguous pixels shaped and typed as `pixel_values`, which the unfold reads there when it runs;
            `pixel_values` then only stands for their shape and dtype (`kernels.patch_unfold_at`; how
            `GraphedEncoder` feeds its CUDA graphs without copying the caller's pixels).
        """
        if self.stab.training:
            raise RuntimeError("the STAB under this FusedSTAB is in training mode (dropout on, BatchNorm statistics "
                               "changing); put it in eval mode")
        if not torch.compiler.is_compiling() and self._folded_from != self._weights_key():
            self.refold()
        if pixel_address is not None and crop_boxes is None:
            raise ValueError("pixel_address needs given crop_boxes")
        B, T, _, S, _ = pixel_values.shape
        G = S // self.patch_size
        frames = pixel_values.flatten(0, 1)  # [BT, 4, S, S]
        pending = _boxes_to_host(frames[:, 3:], self.patch_size, self.empty_frame_patches) \
            if crop_boxes is None else None
        lste = T > 1 and self.stab.lmhra1 is not None
        feats, y = self._patch_embed(frames, G, lste, pixel_address)  # [BT, G, G, C], [BT, G, G, I] or None
        video_cls = None
        if T > 1:
            feats, video_cls = self._temporal(feats.unflatten(0, (B, T)), None if y is None else y.unflatten(0, (B, T)))
        return self._frame_tokens(feats, video_cls, self._boxes(crop_boxes, pending, B * T, G))

    @staticmethod
    def _boxes(crop_boxes: CropBoxes | None, pending: Callable[[], list] | None, frames: int, G: int
               ) -> list[tuple[int, ...]]:
        """The frames' crop boxes as host ints, from the pending copy, "full" or the given boxes."""
        if crop_boxes is None:
            return _boxes_wait(pending)
        if isinstance(crop_boxes, str):
            if crop_boxes != "full":
                raise ValueError(f"crop_boxes must be None, 'full' or per-frame boxes, got {crop_boxes!r}")
            return [(0, 0, G, G)] * frames
        boxes = [tuple(int(v) for v in b) for b in
                 (crop_boxes.tolist() if isinstance(crop_boxes, torch.Tensor) else crop_boxes)]
        if len(boxes) != frames:
            raise ValueError(f"crop_boxes has {len(boxes)} boxes for {frames} frames")
        return boxes

    def _weights_key(self) -> tuple:
        """Where the STAB's tensors are and how often each was changed in place: differs once its weights change.

        Read by name from each module (the (module, name) pairs kept by `refold`), so that a tensor replaced by
        assignment is seen too, without walking the module tree on every call (about a thousand Python calls each)."""
        # inference tensors (made under torch.inference_mode) keep no version counter
        return tuple((t.data_ptr(), -1 if t.is_inference() else t._version)
                     for t in (getattr(module, name, None) for module, name in self._slots) if t is not None)

    @torch.no_grad()
    def refold(self) -> None:
        """Compute the folded constants from the STAB's current weights (in float32 at least, stored in the
        parameter dtype). Eager calls do it themselves when the weights changed; compiled code does not."""
        with torch.inference_mode(False):  # normal tensors even when called under inference mode: a later call
            self._fold()  # with autograd on may save them for backward, which inference tensors refuse
        self._slots = [(module, name) for module in self.stab.modules()
                       for name, _ in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))]
        self._folded_from = self._weights_key()

    def _fold(self) -> None:
        dtype = self.stab.patch_embedding.weight.dtype
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
        patch_w = self.stab.patch_embedding.weight.flatten(1)
        patch_w = F.pad(patch_w, (0, -patch_w.shape[1] % 8))
        keep("patch_w", patch_w)

        if self.stab.lmhra1 is not None:
            bn, down, tconv, up = self.stab.lmhra1.pos_embed
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
            dpe = self.stab.dpe.weight.to(wide).clone()  # [C, 1, 3, 3, 3]
            dpe[:, 0, 1, 1, 1] += 1  # x + dpe(x) == dpe'(x) with the identity in the centre tap
            keep("dpe_w", dpe)
        if self.stab.dec is not None:
            attn = self.stab.dec.attn
            wq, wk, _ = attn.in_proj_weight.to(wide).chunk(3)
            bq = attn.in_proj_bias.to(wide).chunk(3)[0]
            q = F.linear(_layer_norm_up(self.stab.dec.ln_1, self.stab.temporal_cls_token.view(C)), wq, bq)  # [C]
            # q_h . (Wk_h k + bk_h) * hd^-0.5 == k . u_h + const_h, and the constant cancels in the softmax.
            u = torch.einsum("hd,hdc->ch", q.view(heads, hd), wk.view(heads, hd, C)) * hd**-0.5
            keep_pool("gstra", self.stab.dec.ln_3, u)
        if self.stab.global_attention is not None:
            ga = self.stab.global_attention
            q = F.linear(_layer_norm_up(ga.q[0], self.stab.class_embedding), ga.q[1].weight.to(wide))  # [C]
            wk = ga.kv[1].weight.to(wide)[:C]
            keep_pool("fsra", ga.kv[0], torch.einsum("hd,hdc->ch", q.view(heads, hd), wk.view(heads, hd, C)) *
                      ga.scale)

    def _patch_embed(self, frames: torch.Tensor, G: int, lste: bool, address: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[BT, 4, S, S] -> ([BT, G, G, C], and with `lste` the LSTE's first matmul [BT, G, G, I] or None): one
        unfold copy (cast included) and a matmul per output, both from the unfolded patches. `address`: the frames
        are read at the address it holds (`forward`'s pixel_address)."""
        p, w = self.patch_size, self.stab.patch_embedding.weight
        BT, K = frames.shape[0], 3 * p * p
        impl = self.options.unfold
        if impl == "auto":
            impl = "triton" if address is not None or (frames.is_cuda and kernels.available(frames)) else "torch"
        padded = self._fold_patch_w  # [C, K rounded up to a multiple of 8]
        weights = (padded, self._fold_patch_lste_w) if lste else (padded,)
        if address is not None:
            if impl != "triton" or not kernels.available(address):
                raise ValueError("pixel_address needs the Triton unfold (FastOptions.unfold 'auto' or 'triton', on a "
                                 "device with Triton)")
            patches = kernels.patch_unfold_at(address, list(frames.shape), frames.dtype, p, padded.shape[1], w.dtype)
        elif impl == "triton":  # rows padded (aligned for the matmul), written in one pass
            patches = kernels.patch_unfold(frames, p, padded.shape[1], w.dtype)
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

    def _temporal(self, patches: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LSTE + GSTRA + dense connection over chunks (`STAB.temporal`), channels-last. patches: [B, T, G, G, C],
        y: the LSTE's first matmul [B, T, G, G, I] (None without LSTE) -> ([B*T, G, G, C], [B*T, C] or None)."""
        B, T, G, _, C = patches.shape
        feats, cls = [], []
        chunks = frame_chunks(patches, self.chunk_size)
        ys = [None] * len(chunks) if y is None else frame_chunks(y, self.chunk_size)
        for chunk, y_chunk in zip(chunks, ys):  # [n, t, G, G, C], [n, t, G, G, I]
            n, t = chunk.shape[:2]
            # x and the dense connection x + chunk
            x, dense = self._lste(chunk, y_chunk) if y_chunk is not None else (chunk, chunk + chunk)
            feats.append(dense.reshape(B, -1, G, G, C))
            if self.stab.dec is not None:
                c = self._gstra(x.reshape(n, t * G * G, C))  # [n, C]
                cls.append(c.view(B, -1, 1, C).expand(B, n // B, t, C).reshape(B, -1, C))
        video_cls = torch.cat(cls, 1).flatten(0, 1) if cls else None
        feats = feats[0] if len(feats) == 1 else torch.cat(feats, 1)
        return feats.flatten(0, 1), video_cls

    def _lste(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x + lmhra1(x), then + dpe(.), with BN folded; also that plus x (the dense connection).
        x: [n, t, G, G, C]; y: x's first LSTE matmul without its bias [n, t, G, G, I] (`_patch_embed`) ->
        (same as x, same as x)."""
        taps, b1 = self._fold_lste_taps, self._fold_lste_b1
        # the bias goes in after the taps, as a [t, I] term (zero padding drops end taps): y stays the matmul's own
        # output, and inductor fuses the taps into one pass (with the bias inside y it took two)
        z = _shifted_sum(y, taps, dim=1) + _shifted_sum(b1.expand(1, x.shape[1], 1, 1, -1), taps, dim=1)
        if self.gemm_form(x) == "triton" and self._dpe_form(x) == "triton":
            from . import gemm_kernels

            n, t, G, _, C = x.shape
            xp = gemm_kernels.linear_residual_pad(z.reshape(-1, z.shape[-1]), self._fold_lste_w2, self._fold_lste_b2,
                                                  x.reshape(-1, C), G)  # x + z W2^T + b2, zero-bordered
            return kernels.dpe3d_residual(xp.view(n, t, G + 2, G + 2, C), self._fold_dpe_w, self.stab.dpe.bias, x)
        return self._dpe(x + F.linear(z, self._fold_lste_w2, self._fold_lste_b2), x)

    def gemm_form(self, x: torch.Tensor) -> str:
        """"triton" or "torch": the form of the GEMMs with fused epilogues for tensors like x (`FastOptions.gemm`)."""
        impl = self.options.gemm
        if impl == "auto":
            return "triton" if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and _tma_ok(x) else "torch"
        if impl == "triton" and not _tma_ok(x):
            raise ValueError("FastOptions.gemm='triton' needs Triton and a GPU with TMA (compute capability 9.0+), or "
                             "Triton's interpreter")
        return impl

    def _dpe_form(self, x: torch.Tensor) -> str:
        impl = self.options.dpe
        if impl == "auto":
            impl = "triton" if x.is_cuda and kernels.available(x) else \
                "shift" if torch.compiler.is_compiling() else "conv"
        return impl

    def _dpe(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y = x + dpe(x), as one depthwise 3x3x3 conv with the identity folded in, and y + residual.
        x, residual: [n, t, G, G, C]."""
        impl = self._dpe_form(x)
        if impl == "triton":
            # a zero border, so the kernel needs no bounds masks; it also writes y + residual, so that the passes
            # after it read one tensor, not two (fast/kernels.py)
            return kernels.dpe3d_residual(F.pad(x, (0, 0, 1, 1, 1, 1)), self._fold_dpe_w, self.stab.dpe.bias, residual)
        if impl == "shift":  # 27 shifted multiply-adds: inductor fuses them into one kernel
            w = self._fold_dpe_w.view(-1, 27).t().view(3, 3, 3, -1)
            xp = F.pad(x, (0, 0, 1, 1, 1, 1, 1, 1))
            t, G1, G2 = x.shape[1:4]
            out = self.stab.dpe.bias
            for a in range(3):
                for b in range(3):
                    for c in range(3):
                        out = out + w[a, b, c] * xp[:, a:a + t, b:b + G1, c:c + G2]
            return out, out + residual
        # one depthwise conv on the channels-last view (PyTorch routes channels-last depthwise convs to cuDNN on GPU,
        # to oneDNN on CPU; a contiguous NCDHW input would get the slow native depthwise-3d kernel)
        y = F.conv3d(x.permute(0, 4, 1, 2, 3), self._fold_dpe_w, self.stab.dpe.bias, padding=1, groups=x.shape[-1])
        y = y.permute(0, 2, 3, 4, 1)
        return y, y + residual

    def _gstra(self, x: torch.Tensor) -> torch.Tensor:
        """GSTRA with its constant query folded: x [n, L, C] (LSTE output) -> video cls [n, C]."""
        dec, C = self.stab.dec, self.dim
        pooled = self._ln_pool(x, dec.ln_3, "gstra")  # [n, heads, C]: sum_l a_hl k_l
        wv, bv = dec.attn.in_proj_weight[2 * C:], dec.attn.in_proj_bias[2 * C:]
        out = torch.einsum("nhc,hdc->nhd", pooled, wv.view(self.num_heads, -1, C)).flatten(1) + bv  # [n, C]
        q = self.stab.temporal_cls_token.view(1, C) + dec.attn.out_proj(out)
        return q + dec.mlp(dec.ln_2(q))

    def _frame_tokens(self, feats: torch.Tensor, video_cls: torch.Tensor | None,
                      boxes: list[tuple[int, ...]]) -> HostLayoutOutput:
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
            tokens = self._group(crop, vcls)  # [n, 1 + h*(w+1), C]
            start = 0
            for a, b in runs:
                pieces[a] = (tokens, start, start + b - a)
                start += b - a
        parts = [pieces[a][0][pieces[a][1]:pieces[a][2]].flatten(0, 1) for a in sorted(pieces)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return HostLayoutOutput(out, [(b[2] // s, b[3] // s) for b in boxes])

    def _group(self, crop: torch.Tensor, video_cls: torch.Tensor | None) -> torch.Tensor:
        """Tokens of n frames with one crop box: [n, h*s, w*s, C] -> [n, 1 + h*(w+1), C]."""
        n, Hs, Ws, C = crop.shape
        s = self.conv_stride
        h, w = Hs // s, Ws // s
        if self.stab.local_attention is None:
            tokens = crop.reshape(n, h, s, w, s, C).mean((2, 4))  # [n, h, w, C]
        else:
            tokens = self._lsd(crop)
        tokens = tokens.reshape(n, h * w, C)
        frame_cls = self._fsra(tokens) if self.stab.global_attention is not None else None
        cls = self.stab.cls_token(frame_cls, video_cls, tokens)
        out = torch.empty(n, 1 + h * (w + 1), C, dtype=tokens.dtype, device=tokens.device)
        out[:, 0] = cls
        rows = out[:, 1:].view(n, h, w + 1, C)
        rows[:, :, :w] = tokens.view(n, h, w, C)
        rows[:, :, w] = self.stab.split_embedding
        return out

    def _lsd(self, crop: torch.Tensor) -> torch.Tensor:
        """LSD without gathering windows: K/V for every token in place. crop [n, h*s, w*s, C] -> [n, h, w, C].

        `FastOptions.lsd` "triton" (the default on a GPU): the scores, softmax and weighted sum as one Triton kernel
        (kernels.lsd_attend) that reads the keys and values once; "plain": as torch ops (inductor makes a score
        reduction and a weighted sum of them).
        """
        la, heads = self.stab.local_attention, self.num_heads
        n, Hs, Ws, C = crop.shape
        s = self.conv_stride
        h, w = Hs // s, Ws // s
        windows = crop.reshape(n, h, s, w, s, C)
        pooled = windows.mean((2, 4))  # [n, h, w, C]
        kv = la.kv(windows)  # [n, h, s, w, s, 2C]
        impl = self.options.lsd
        if impl == "auto":
            impl = "triton" if kv.is_cuda and kernels.available(kv) else "plain"
        if impl == "triton":
            return pooled + la.proj(kernels.lsd_attend(la.q(pooled), kv, heads, la.scale))
        q = (la.q(pooled) * la.scale).view(n, h, 1, w, 1, heads, -1)
        k, v = kv.view(n, h, s, w, s, 2, heads, -1).unbind(5)  # [n, h, s, w, s, heads, hd]
        scores = (q * k).sum(-1)  # [n, h, s, w, s, heads]
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        e = (scores - scores.amax((2, 4), keepdim=True)).exp()
        attn = (e / e.sum((2, 4), keepdim=True)).to(v.dtype)  # softmax over the s*s window positions
        out = (attn[..., None] * v).sum((2, 4))  # [n, h, w, heads, hd]
        return pooled + la.proj(out.flatten(3))

    def _fsra(self, tokens: torch.Tensor) -> torch.Tensor:
        """FSRA with its constant query folded. tokens [n, L, C] -> [n, C]."""
        ga, C = self.stab.global_attention, self.dim
        pooled = self._ln_pool(tokens, ga.kv[0], "fsra")  # [n, heads, C]
        wv = ga.kv[1].weight[C:].view(self.num_heads, -1, C)
        out = torch.einsum("nhc,hdc->nhd", pooled, wv).flatten(1)
        return self.stab.class_embedding + ga.proj(out)

    def _ln_pool(self, x: torch.Tensor, ln: nn.LayerNorm, name: str) -> torch.Tensor:
        """The constant query's attention over keys ln(x) (the folded `u`), pooled: x [n, L, C] -> [n, heads, C],
        sum_l softmax_l(ln(x) @ u)_h ln(x_l). "triton" never writes ln(x) (`kernels.ln_pool`)."""
        impl = self.options.pool
        if impl == "auto":
            impl = "triton" if x.is_cuda and kernels.available(x) else "plain"
        if impl == "triton":
            folds = (getattr(self, f"_fold_{name}_{part}") for part in ("gu", "s1", "s0"))
            return kernels.ln_pool(x, *folds, ln.weight, ln.bias, ln.eps).to(x.dtype)
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

