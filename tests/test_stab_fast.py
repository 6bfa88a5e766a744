"""videopanda.fast.FusedSTAB: the inference form computes the same function as the straightforward STAB."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from videopanda import VideoPandaForCausalLM
from videopanda.configuration import variant_config
from videopanda.fast import FastEncoder, FastOptions, FusedSTAB, GraphedEncoder, kernels
from videopanda.modeling.stab import STAB

TRITON = FastOptions(unfold="triton", dpe="triton", lsd="triton", pool="triton")  # the GPU kernels, interpreted

# (B, T, canvas, per-video boxes (top, left, h, w) in pixels, trailing empty frames per video)
CASES = {
    "square": (1, 8, 112, [(0, 0, 112, 112)], 0),
    "wide_and_tall": (2, 8, 112, [(28, 0, 56, 112), (0, 28, 112, 56)], 0),
    "odd_offset_crop": (1, 4, 112, [(14, 42, 70, 56)], 0),  # top/left not on the 2x2 grid, 5 patch rows
    "padded_frames": (2, 8, 112, [(0, 0, 112, 112), (28, 0, 56, 112)], 3),
    "image": (3, 1, 112, [(0, 0, 112, 112), (28, 0, 56, 112), (0, 0, 112, 84)], 0),
    "T3": (1, 3, 112, [(0, 0, 112, 112)], 0),
    "T6_mixed": (3, 6, 112, [(0, 0, 112, 112), (28, 0, 56, 112), (0, 0, 112, 112)], 2),
    "T9": (2, 9, 112, [(0, 0, 112, 112), (0, 28, 112, 56)], 1),
    "non_multiple_canvas": (1, 5, 120, [(0, 0, 120, 120)], 0),  # 120 px: 8 patches, 8 px cut off
}
ABLATIONS = {
    "full": {},
    "no_lste": dict(use_lste=False),
    "no_gstra": dict(use_gstra=False),
    "no_fsra": dict(use_fsra=False),
    "avgpool": dict(downsample="avgpool"),
    "no_cls_sources": dict(use_gstra=False, use_fsra=False),
}


def make_stab(dtype: torch.dtype = torch.float64, **kw) -> STAB:
    """A tiny STAB with every branch awake and BatchNorm statistics away from the identity."""
    torch.manual_seed(0)
    stab = STAB(32, 4, **kw).eval()
    with torch.no_grad():
        for p in stab.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if stab.lmhra1 is not None:
            bn = stab.lmhra1.pos_embed[0]
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return stab.to(dtype)


def make_input(B: int, T: int, canvas: int, boxes: list[tuple[int, int, int, int]], empty: int,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    px = torch.zeros(B, T, 4, canvas, canvas, dtype=dtype)
    for b, (top, left, h, w) in enumerate(boxes):
        px[b, :, :3, top:top + h, left:left + w] = torch.randn(T, 3, h, w, generator=g, dtype=dtype)
        px[b, :, 3, top:top + h, left:left + w] = 1
        if empty:
            px[b, T - empty:] = 0
    return px


def run_both(stab: STAB, px: torch.Tensor, **kw):
    fused = FusedSTAB(stab)
    with torch.no_grad():
        return stab(px), fused(px, **kw)


@pytest.mark.parametrize("dpe,lsd", [("conv", "plain"), ("shift", "plain"), ("triton", "triton")])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_unfused(case, dpe, lsd):
    """Every form of the fused dpe and LSD; "triton" are the GPU kernels run by Triton's interpreter (conftest sets
    TRITON_INTERPRET=1 on machines without CUDA)."""
    if dpe == "triton" and not kernels.available(torch.empty(0)):
        pytest.skip("Triton is not installed")
    stab = make_stab()
    triton = dpe == "triton"
    fused = FusedSTAB(stab, FastOptions(dpe=dpe, lsd=lsd, unfold="triton" if triton else "torch",
                                        pool="triton" if triton else "plain"))
    px = make_input(*CASES[case])
    with torch.no_grad():
        want, got = stab(px), fused(px)
    assert got.tokens_per_frame.tolist() == want.tokens_per_frame.tolist()
    assert got.grid_hw.tolist() == want.grid_hw.tolist()
    assert got.tokens.shape == want.tokens.shape
    assert (got.tokens - want.tokens).abs().max() < 1e-12


@pytest.mark.parametrize("block_h,block_c", [(1, 64), (2, 64), (4, 32)])
def test_dpe_kernel_equals_conv3d(monkeypatch, block_h, block_c):
    """The Triton dpe on its own, on sizes that leave ragged tiles: W not a power of two, C not a multiple of the
    channel block, T and H odd (H not a multiple of the rows per program)."""
    if not kernels.available(torch.empty(0)):
        pytest.skip("Triton is not installed")
    monkeypatch.setattr(kernels, "BLOCK_H", block_h)
    monkeypatch.setattr(kernels, "BLOCK_C", block_c)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 37, 70, generator=g, dtype=torch.float64)
    w = torch.randn(70, 1, 3, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(70, generator=g, dtype=torch.float64)
    want = torch.nn.functional.conv3d(x.permute(0, 4, 1, 2, 3), w, b, padding=1, groups=70).permute(0, 2, 3, 4, 1)
    got = kernels.dpe3d(torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1)), w, b)
    assert got.shape == x.shape and (got - want).abs().max() < 1e-12
    taps = w.view(70, 27).t().contiguous()  # a tap-major buffer, passed as its [C, 27] transpose
    assert (kernels.dpe3d(torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1)), taps.t(), b) - want).abs().max() < 1e-12


def test_dpe_kernel_without_masks_equals_conv3d(monkeypatch):
    """The maskless form of the dpe kernel: blocks that tile the frame and channels exactly (as the 7B and default
    STABs have), chunks of 1, 2 and 4 frames (a chunk's first and last frames see zeros beyond them)."""
    if not kernels.available(torch.empty(0)):
        pytest.skip("Triton is not installed")
    monkeypatch.setattr(kernels, "BLOCK_H", 2)
    monkeypatch.setattr(kernels, "BLOCK_C", 16)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 1, 3, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(32, generator=g, dtype=torch.float64)
    for T in (1, 2, 4):
        x = torch.randn(3, T, 4, 8, 32, generator=g, dtype=torch.float64)
        want = torch.nn.functional.conv3d(x.permute(0, 4, 1, 2, 3), w, b, padding=1, groups=32).permute(0, 2, 3, 4, 1)
        got = kernels.dpe3d(torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1)), w, b)
        assert (got - want).abs().max() < 1e-12


@pytest.mark.parametrize("S,patch,width", [(28, 14, 592), (23, 5, 80), (20, 4, 48)])
def test_patch_unfold_kernel_equals_permute(S, patch, width):
    """The patch unfold kernel on its own: a 4-channel frame (the mask channel is skipped), a side that is not a
    multiple of the patch (the remainder is dropped), zero columns after the 3 * patch**2 pixels (none in the last)."""
    if not kernels.available(torch.empty(0)):
        pytest.skip("Triton is not installed")
    frames = torch.randn(3, 4, S, S, generator=torch.Generator().manual_seed(0))
    G = S // patch
    rgb = frames[:, :3, :G * patch, :G * patch].unflatten(3, (G, patch)).unflatten(2, (G, patch))
    want = torch.nn.functional.pad(rgb.permute(0, 2, 4, 1, 3, 5).reshape(3 * G * G, -1), (0, width - 3 * patch**2))
    got = kernels.patch_unfold(frames, patch, width, torch.float64)
    assert got.dtype == torch.float64 and torch.equal(got, want.double())


@pytest.mark.parametrize("s", [2, 3])
@pytest.mark.parametrize("n,h,w,heads,hd,block_n", [(3, 2, 5, 4, 12, 32), (2, 2, 4, 2, 8, 8)])
def test_lsd_attend_kernel_equals_softmax_attention(monkeypatch, s, n, h, w, heads, hd, block_n):
    """LSD's window attention kernel on its own: a strided crop of the keys/values (as `_fast_group` passes it);
    first a head width that is not a power of two and a window count that is not a multiple of the windows per
    program (masked loads), then both exact (the maskless form the 7B STAB takes)."""
    if not kernels.available(torch.empty(0)):
        pytest.skip("Triton is not installed")
    monkeypatch.setattr(kernels, "LSD_BLOCK_N", block_n)
    g = torch.Generator().manual_seed(0)
    C = heads * hd
    full = torch.randn(n, h * s + 1, w * s + 2, 2 * C, generator=g, dtype=torch.float64)
    kv = full[:, 1:, 1:-1].reshape(n, h, s, w, s, 2 * C)  # a view, not contiguous
    q = torch.randn(n, h, w, C, generator=g, dtype=torch.float64)
    scale = C**-0.5
    k, v = kv.permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, s * s, 2, heads, hd).unbind(4)
    attn = torch.einsum("nijhd,nijphd->nijhp", q.view(n, h, w, heads, hd) * scale, k).softmax(-1)
    want = torch.einsum("nijhp,nijphd->nijhd", attn, v).reshape(n, h, w, C)
    got = kernels.lsd_attend(q, kv, heads, scale)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-12


@pytest.mark.parametrize("n,L,C,heads", [(3, 37, 48, 3), (2, 600, 32, 4), (1, 5, 20, 8)])
def test_ln_pool_kernels_equal_layer_norm_attention(monkeypatch, n, L, C, heads):
    """`kernels.ln_pool` (GSTRA's and FSRA's pooling without the normed keys) against layer norm, softmax and
    matmuls in float64: rows and channels that leave ragged blocks, head counts that are not powers of two, rows
    split over programs (L = 600), and rows with a mean far from zero (the kernel centres before it sums)."""
    if not kernels.available(torch.empty(0)):
        pytest.skip("Triton is not installed")
    monkeypatch.setattr(kernels, "POOL_SCORE_ROWS", 16)
    monkeypatch.setattr(kernels, "POOL_BLOCK_K", 16)
    monkeypatch.setattr(kernels, "POOL_BLOCK_L", 16)
    monkeypatch.setattr(kernels, "POOL_BLOCK_C", 16)
    g = torch.Generator().manual_seed(n * L)
    x = torch.randn(n, L, C, generator=g, dtype=torch.float64) + 30 * torch.randn(n, L, 1, generator=g,
                                                                                 dtype=torch.float64)
    ln = torch.nn.LayerNorm(C, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.normal_(1, 0.3, generator=g)
        ln.bias.normal_(0, 0.3, generator=g)
        u = torch.randn(C, heads, generator=g, dtype=torch.float64) / C**0.5
        keys = ln(x)
        want = (keys @ u).softmax(1).transpose(1, 2) @ keys
        gu = ln.weight[:, None] * u
        got = kernels.ln_pool(x, gu, gu.sum(0), ln.bias @ u, ln.weight, ln.bias, ln.eps)
    assert got.shape == (n, heads, C) and (got - want).abs().max() < 1e-12


@pytest.mark.parametrize("ablation", list(ABLATIONS))
@pytest.mark.parametrize("case", ["wide_and_tall", "padded_frames", "image", "T6_mixed"])
def test_fused_equals_unfused_for_every_ablation(ablation, case):
    want, got = run_both(make_stab(**ABLATIONS[ablation]), make_input(*CASES[case]))
    assert got.tokens_per_frame.tolist() == want.tokens_per_frame.tolist()
    assert (got.tokens - want.tokens).abs().max() < 1e-12


def test_float32_close():
    stab = make_stab(torch.float32)
    want, got = run_both(stab, make_input(*CASES["padded_frames"], dtype=torch.float32))
    assert (got.tokens - want.tokens).abs().max() < 2e-5


@pytest.mark.parametrize("kernels_impl", ["torch", "triton"])
def test_bfloat16_error_is_that_of_the_unfused_path(kernels_impl, gpu_rounding):
    """Folding must not cost precision: both forms in bfloat16 against a float64 truth (with the Triton dpe, LSD and
    unfold kernels too)."""
    if kernels_impl == "triton" and not kernels.available(torch.empty(0)):
        pytest.skip("Triton is not installed")
    px = make_input(*CASES["wide_and_tall"], dtype=torch.float32)
    truth = make_stab()(px.double()).tokens.detach()
    errors = {}
    fused = FusedSTAB(make_stab(torch.bfloat16), TRITON if kernels_impl == "triton" else FastOptions())
    for name, stab in (("unfused", make_stab(torch.bfloat16)), ("fused", fused)):
        with torch.no_grad():
            errors[name] = (stab(px).tokens.double() - truth).abs().mean().item()
    assert errors["fused"] < 1.25 * errors["unfused"] + 1e-6, errors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pixels_read_at_an_address_equal_pixels_passed(dtype):
    """`pixel_address` (how GraphedEncoder's graphs read the caller's pixels without copying them): the unfold
    reads the pixels at the address a device tensor holds, and a stand-in tensor only gives their shape and dtype;
    the tokens are those of passing the pixels. Without given boxes or the Triton unfold it is refused."""
    if not kernels.available(torch.empty(0)):
        pytest.skip("Triton is not installed")
    stab = make_stab().to(dtype)
    fused = FusedSTAB(stab)
    px = make_input(*CASES["padded_frames"], dtype=dtype)
    boxes = fused.crop_boxes_for(px)
    address = torch.tensor([px.data_ptr()], dtype=torch.int64)
    stand_in = px.new_zeros(()).expand(px.shape)
    with torch.no_grad():
        want = fused(px, crop_boxes=boxes).tokens
        assert torch.equal(fused(stand_in, crop_boxes=boxes, pixel_address=address).tokens, want)
        other = px.clone()
        other[:, :, :3] = other[:, :, :3].flip(-1) * 0.5  # other pixels, the same valid region (boxes)
        address.fill_(other.data_ptr())  # a new address, the same stand-in: the new pixels are read
        assert torch.equal(fused(stand_in, crop_boxes=boxes, pixel_address=address).tokens,
                           fused(other, crop_boxes=boxes).tokens)
        with pytest.raises(ValueError, match="pixel_address"):
            fused(stand_in, pixel_address=address)
        with pytest.raises(ValueError, match="not torch.uint8"):
            kernels.patch_unfold_at(address, list(px.shape[1:]), torch.uint8, 4, 48, dtype)
        with pytest.raises(ValueError, match="Triton unfold"):
            FusedSTAB(stab, FastOptions(unfold="torch"))(stand_in, crop_boxes=boxes, pixel_address=address)


def test_crop_box_hints():
    fused = FusedSTAB(make_stab())
    px = make_input(*CASES["T6_mixed"])
    with torch.no_grad():
        want = fused(px)
        boxes = fused.crop_boxes_for(px)
        assert len(boxes) == 18 and boxes[6] == (2, 0, 4, 8)
        for hint in (boxes, torch.tensor(boxes)):
            assert torch.equal(fused(px, crop_boxes=hint).tokens, want.tokens)
        square = make_input(*CASES["square"])
        assert torch.equal(fused(square, crop_boxes="full").tokens, fused(square).tokens)
        with pytest.raises(ValueError, match="18 frames"):
            fused(px, crop_boxes=boxes[:-1])
        with pytest.raises(ValueError, match="crop_boxes"):
            fused(px, crop_boxes="all")


def test_given_boxes_need_no_data():
    """With the crop boxes given, nothing reads tensor values on the host (meta tensors have none): the device
    path is free of host syncs."""
    fused = FusedSTAB(make_stab(torch.float32)).to("meta")
    px = torch.empty(2, 8, 4, 112, 112, device="meta")
    with torch.no_grad():
        out = fused(px, crop_boxes="full")
        assert out.tokens.shape == (2 * 8 * (1 + 4 * 5), 32) and out.tokens.device.type == "meta"
        boxes = [(0, 0, 8, 8)] * 8 + [(2, 0, 4, 8)] * 5 + [(0, 0, 8, 8)] * 3
        out = fused(px, crop_boxes=boxes)
        assert out.tokens_per_frame.tolist() == [21] * 8 + [11] * 5 + [21] * 3


def test_fused_stab_shares_the_weights_and_is_inference_only():
    stab = make_stab(torch.float32)
    keys = list(stab.state_dict())
    fused = FusedSTAB(stab)
    assert fused.stab is stab and list(stab.state_dict()) == keys  # the STAB is untouched, its keys unchanged
    assert {p.data_ptr() for p in fused.parameters()} == {p.data_ptr() for p in stab.parameters()}  # no copy
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()
    fused.eval()  # allowed
    stab.train()  # the STAB itself still trains
    stab(make_input(*CASES["square"], dtype=torch.float32)).tokens.sum().backward()
    assert stab.patch_embedding.weight.grad is not None
    with pytest.raises(RuntimeError, match="training mode"), torch.no_grad():
        fused(make_input(*CASES["square"], dtype=torch.float32))


def test_changed_weights_are_refolded():
    """New weights in the STAB (a load, an in-place update, a new dtype, tensors replaced) make the folds stale: an
    eager call folds again, so the fused tokens follow the STAB's."""
    px = make_input(*CASES["padded_frames"])
    stab = make_stab()
    fused = FusedSTAB(stab)
    other = make_stab()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
        other.lmhra1.pos_embed[0].running_var.mul_(1.5)
    stab.load_state_dict(other.state_dict())
    with torch.no_grad():
        want, got = other(px), fused(px)
        assert (got.tokens - want.tokens).abs().max() < 1e-12
        stab.split_embedding.add_(1.0)  # in place, as an optimiser step
        assert (fused(px).tokens - stab(px).tokens).abs().max() < 1e-12
        fused.float()
        assert fused._fold_patch_lste_w.dtype == torch.float32
        assert (fused(px.float()).tokens.double() - stab.double()(px).tokens).abs().max() < 1e-4
        fused.double()
        stab.load_state_dict(make_stab().state_dict(), assign=True)  # new tensors in place of the old ones
        assert (fused(px).tokens - stab(px).tokens).abs().max() < 1e-12


def test_dynamo_traces_the_fast_path_without_graph_breaks():
    """torch.compile(fullgraph=True) on the fused STAB with the boxes given (backend aot_eager: dynamo + AOT
    autograd, no code generation, so it is quick); with the boxes read from the mask there are exactly two breaks,
    around the box copy."""
    import torch._dynamo
    from torch._dynamo.backends.debugging import aot_eager

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    stab = make_stab(torch.float32)
    fused = FusedSTAB(stab)
    px = make_input(*CASES["padded_frames"], dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, dynamic=False, backend=backend)
    with torch.no_grad():
        want = stab(px).tokens
        got = compiled(px, crop_boxes=fused.crop_boxes_for(px)).tokens
        assert (got - want).abs().max() < 2e-5
        square = make_input(*CASES["square"], dtype=torch.float32)
        out = compiled(square, crop_boxes="full")
        assert (out.tokens - stab(square).tokens).abs().max() < 2e-5
        assert out.tokens_per_frame.tolist() == [21] * 8
    # no host tensors are made inside the graphs (they would keep inductor from CUDA-graphing them)
    assert len(graphs) == 2 and not any(n.target is torch.tensor for g in graphs for n in g.graph.nodes)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(fused)(px)
    assert explained.graph_break_count == 2
    assert all("_boxes_" in str(r.reason) for r in explained.break_reasons)


@pytest.mark.slow
def test_inductor_compiles_the_fast_path():
    """The real thing (inductor C++ code generation on CPU): about 1-2 minutes on a small machine."""
    import torch._dynamo

    stab = make_stab(torch.float32)
    fused = FusedSTAB(stab)
    px = make_input(1, 5, 112, [(0, 0, 112, 112)], 0, dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, dynamic=False)
    with torch.no_grad():
        got = compiled(px, crop_boxes="full").tokens
        want = stab(px).tokens
    assert (got - want).abs().max() < 2e-5


def tiny_model(layers: int = 2) -> VideoPandaForCausalLM:
    """The tiny variant, its own copy: these tests perturb the STAB's weights and switch the model to training."""
    torch.manual_seed(0)
    model = VideoPandaForCausalLM(variant_config("videopanda-tiny", text_config={"num_hidden_layers": layers})).eval()
    with torch.no_grad():  # wake the zero-initialised STAB branches
        for p in model.video_tower.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_fast_encoder_gives_the_models_encode():
    """FastEncoder: the model's encode_video_flat through the FusedSTAB, for a tensor (with and without host boxes),
    images and a list of videos of different lengths; the model stays plain and trainable."""
    model = tiny_model()
    encoder = FastEncoder(model)
    assert encoder.stab.stab is model.video_tower and encoder.projector is model.video_projector
    px = make_input(*CASES["wide_and_tall"], dtype=torch.float32)
    mixed = [px[0], px[1, :3], px[1, 0:1]]
    with torch.no_grad():
        for inputs, extra in ((px, {}), (px, {"crop_boxes": encoder.stab.crop_boxes_for(px)}), (px[:, 0], {}),
                              (mixed, {})):
            want, want_per_video = model.encode_video_flat(inputs)
            got, per_video = encoder(inputs, **extra)
            assert per_video == want_per_video and (got - want).abs().max() < 1e-5
    with pytest.raises(ValueError, match="crop_boxes"):
        encoder(list(px), crop_boxes="full")
    with pytest.raises(ValueError, match="pixel_values must be"):
        encoder(px[:, :, :3])
    model.train()  # the plain model is untouched by the fast form


def test_graphed_encoder_checks_and_runs_the_encode_off_cuda():
    """GraphedEncoder (CUDA graphs on a GPU): needs the FusedSTAB; off CUDA it runs the same encode, with the host
    crop boxes, and gives encode_video_flat's tokens."""
    model = tiny_model(layers=1)
    with pytest.raises(ValueError, match="FusedSTAB"):
        GraphedEncoder(model.video_tower, model.video_projector)
    stab = FusedSTAB(model.video_tower)
    encoder = GraphedEncoder(stab, model.video_projector, compile=False)
    px = make_input(*CASES["wide_and_tall"], dtype=torch.float32)
    with torch.no_grad():
        want, _ = FastEncoder(model)(px)
        plain, _ = model.encode_video_flat(px)
    got = encoder(px, stab.crop_boxes_for(px))
    assert torch.equal(got, want) and (got - plain).abs().max() < 1e-5


@pytest.mark.parametrize("case", ["square", "padded_frames"])
def test_fused_epilogue_gemms_equal_matmul_then_pass(case, scalar_index):
    """FastOptions.gemm="triton": the LSTE's second conv with the residual add and the dpe's zero border as one TMA GEMM
    (gemm_kernels.linear_residual_pad), and in GraphedEncoder the projector's first layer with its exact GELU
    (gemm_kernels.linear_gelu), run by Triton's interpreter in float32; the tokens are those of cuBLAS + the separate
    passes, and of the straightforward STAB."""
    from videopanda.fast import gemm_kernels

    if not kernels.available(torch.empty(0)) or not gemm_kernels.tma_available(torch.empty(0)):
        pytest.skip("needs Triton with tensor descriptors (its interpreter on CPU)")
    stab = make_stab(torch.float32)
    fused = FusedSTAB(stab, dataclasses.replace(TRITON, gemm="torch"))
    projector = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 48))
    px = make_input(*CASES[case], dtype=torch.float32)
    boxes = fused.crop_boxes_for(px)
    with torch.no_grad():
        want = stab(px).tokens
        plain = GraphedEncoder(fused, projector, compile=False)(px, boxes)
        fused = FusedSTAB(stab, dataclasses.replace(TRITON, gemm="triton"))
        got_tokens = fused(px, crop_boxes=boxes).tokens
        got = GraphedEncoder(fused, projector, compile=False)(px, boxes)
    assert (got_tokens - want).abs().max() < 1e-4
    assert (got - plain).abs().max() < 1e-4 and (got - projector(want)).abs().max() < 1e-4


@pytest.mark.parametrize("field", ["unfold", "dpe", "lsd", "pool", "gemm", "gemv"])
def test_unknown_kernel_form_is_refused(field):
    with pytest.raises(ValueError, match=f"FastOptions.{field} must be one of 'auto'"):
        FastOptions(**{field: "cudnn-magic"})
    assert getattr(FastOptions.all("triton"), field) == "triton"
