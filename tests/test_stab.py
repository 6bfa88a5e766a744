"""STAB: parity with golden outputs of the reference implementation, token layout, batching, gradients."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from videopanda.modeling.stab import FSRA, GSTRA, LSD, LSTE, STAB, count_visual_tokens

FIXTURES = Path(__file__).parent / "fixtures" / "reference_stab"
# case: (T, canvas, top, left, h, w, empty frames) -- from fixtures/reference_stab/README.md
CASES = {
    "square_8f_224": (8, 224, 0, 0, 224, 224, 0),
    "wide_8f_224x112": (8, 224, 56, 0, 112, 224, 0),
    "tall_8f_168x224": (8, 224, 0, 28, 224, 168, 0),
    "square_4f_448": (4, 448, 0, 0, 448, 448, 0),
    "padded_8f_448_last3_empty": (8, 448, 0, 0, 448, 448, 3),
    "image_1f_224": (1, 224, 0, 0, 224, 224, 0),
}


def hash_uniform(n: int, seed: int) -> torch.Tensor:
    """The fixture's deterministic filler: n values uniform in [-1, 1)."""
    x = (torch.arange(n, dtype=torch.int64) + seed * 7919) & 0xFFFFFFFF
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    x = (x >> 16) ^ x
    return x.to(torch.float64) / 2**32 * 2 - 1


def fill(key: str, shape: list[int]) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.zeros((), dtype=torch.long)
    v = hash_uniform(math.prod(shape), zlib.crc32(key.encode()))
    if key.endswith("running_var"):
        v = 1 + 0.5 * v.abs()
    elif key.endswith("running_mean"):
        v = 0.1 * v
    elif key.endswith(("class_embedding", "split_embedding", "temporal_cls_token")):
        v = 0.05 * v
    elif len(shape) <= 1:
        v = 0.5 * v
    else:
        v = v * 2 * math.sqrt(3.0 / math.prod(shape[1:]))
    return v.reshape(shape).float()


def case_input(T: int, canvas: int, top: int, left: int, h: int, w: int, empty: int) -> torch.Tensor:
    px = torch.zeros(T, 4, canvas, canvas)
    px[:, :3, top:top + h, left:left + w] = (1.5 * hash_uniform(T * 3 * h * w, 1)).reshape(T, 3, h, w).float()
    px[:, 3, top:top + h, left:left + w] = 1
    if empty:
        px[T - empty:] = 0
    return px


@pytest.fixture(scope="module")
def reference_modules() -> tuple[STAB, nn.Module]:
    """STAB (C=1024, 8 heads) + Linear(1024, 64) GELU Linear(64, 64) loaded from the official key names."""
    keys = json.loads((FIXTURES / "keys.json").read_text())
    state = {k: fill(k, s) for k, s in keys.items()}
    stab = STAB(1024, 8).eval()
    tower = {k.removeprefix("model.video_tower."): v for k, v in state.items()
             if k.startswith("model.video_tower.") and ".lmhra2." not in k}  # lmhra2: dead in the reference too
    stab.load_state_dict(tower, strict=True)
    proj = nn.Sequential(nn.Linear(1024, 64), nn.GELU(), nn.Linear(64, 64)).eval()
    proj.load_state_dict({k.removeprefix("model.video_projector."): v for k, v in state.items()
                          if k.startswith("model.video_projector.")}, strict=True)
    return stab, proj


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_golden_outputs(reference_modules, case):
    stab, proj = reference_modules
    golden = load_file(str(FIXTURES / "golden_outputs.safetensors"))
    with torch.no_grad():
        out = stab(case_input(*CASES[case])[None])
        got = proj(out.tokens)
    want = golden[case]
    assert out.tokens_per_frame.tolist() == golden[f"{case}.tokens_per_frame"].tolist()
    assert got.shape == want.shape
    cls = torch.cumsum(out.tokens_per_frame, 0) - out.tokens_per_frame  # first token of each frame
    assert (got - want).norm() / want.norm() < 5e-5
    assert (got[cls] - want[cls]).norm() / want[cls].norm() < 5e-5


def tiny_stab(**kw) -> STAB:
    torch.manual_seed(0)
    stab = STAB(32, 4, **kw).eval()
    with torch.no_grad():  # wake the zero-initialised branches so that they are exercised
        for p in stab.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return stab


def box_input(B: int, T: int, canvas: int, boxes: list[tuple[int, int, int, int]], empty: int = 0) -> torch.Tensor:
    torch.manual_seed(1)
    px = torch.zeros(B, T, 4, canvas, canvas)
    for b, (top, left, h, w) in enumerate(boxes):
        px[b, :, :3, top:top + h, left:left + w] = torch.randn(T, 3, h, w)
        px[b, :, 3, top:top + h, left:left + w] = 1
        if empty:
            px[b, T - empty:] = 0
    return px


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 8, 9])
@pytest.mark.parametrize("box", [(0, 0, 112, 112), (28, 0, 56, 112), (0, 28, 112, 84)])
def test_token_count_follows_layout(T, box):
    stab = tiny_stab()
    px = box_input(1, T, 112, [box])
    with torch.no_grad():
        out = stab(px)
    h, w = box[2] // 28, box[3] // 28
    assert out.tokens_per_frame.tolist() == [1 + h * (w + 1)] * T
    assert out.tokens.shape == (T * (1 + h * (w + 1)), 32)
    assert torch.isfinite(out.tokens).all()
    assert count_visual_tokens(px, 14, 2) == [T * (1 + h * (w + 1))]


def test_row_split_tokens_sit_after_every_row():
    stab = tiny_stab()
    with torch.no_grad():
        out = stab(box_input(1, 2, 112, [(28, 0, 56, 112)]))
    h, w = out.grid_hw[0].tolist()
    frame = out.tokens[: 1 + h * (w + 1)]
    rows = frame[1:].view(h, w + 1, -1)
    assert torch.equal(rows[:, -1], stab.split_embedding.expand(h, -1))


def test_batch_equals_one_by_one_with_mixed_sizes():
    stab = tiny_stab()
    boxes = [(0, 0, 112, 112), (28, 0, 56, 112), (0, 28, 112, 56)]
    px = box_input(3, 8, 112, boxes, empty=2)
    with torch.no_grad():
        batched = stab(px)
        single = [stab(px[i:i + 1]) for i in range(3)]
    assert torch.allclose(batched.tokens, torch.cat([s.tokens for s in single]), atol=1e-5)
    assert batched.tokens_per_frame.tolist() == sum((s.tokens_per_frame.tolist() for s in single), [])


def test_letterbox_content_does_not_leak_into_lsd_tokens():
    """LSD/FSRA see only the valid crop; GSTRA (as in the reference) sees the whole canvas, so check T=1."""
    stab = tiny_stab()
    px = box_input(1, 1, 112, [(28, 0, 56, 112)])
    noisy = px.clone()
    noisy[:, :, :3, :28] = torch.randn_like(noisy[:, :, :3, :28])
    with torch.no_grad():
        assert torch.allclose(stab(px).tokens, stab(noisy).tokens, atol=1e-6)


def test_every_parameter_gets_a_gradient():
    stab = tiny_stab().train()
    out = stab(box_input(2, 8, 112, [(0, 0, 112, 112), (28, 0, 56, 112)]))
    out.tokens.square().mean().backward()
    missing = [n for n, p in stab.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_zero_inits_make_temporal_branches_identities():
    stab = STAB(32, 4)
    for layer in (stab.lmhra1.pos_embed[3], stab.dec.attn.out_proj, stab.dec.mlp.c_proj):
        assert not layer.weight.any() and not layer.bias.any()
    assert not stab.dpe.bias.any() and not stab.balance.any() and not stab.temporal_cls_token.any()


# -- ablation switches (issue #3 item 7) -------------------------------------------------------------------------------
ABLATIONS = {
    "no_lste": (dict(use_lste=False), ("lmhra1", "dpe")),
    "no_gstra": (dict(use_gstra=False), ("dec", "temporal_cls_token", "balance", "proj")),
    "no_fsra": (dict(use_fsra=False), ("global_attention", "class_embedding", "balance", "proj")),
    "avgpool": (dict(downsample="avgpool"), ("local_attention",)),
    "no_gstra_no_fsra": (dict(use_gstra=False, use_fsra=False),
                         ("dec", "temporal_cls_token", "global_attention", "class_embedding", "balance", "proj")),
}
CONFIG_NAMES = dict(use_lste="stab_use_lste", use_gstra="stab_use_gstra", use_fsra="stab_use_fsra",
                    downsample="stab_downsample")


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_removes_exactly_its_modules(name):
    kw, removed = ABLATIONS[name]
    full, ablated = STAB(32, 4), STAB(32, 4, **kw)
    full_names = {n.split(".")[0] for n, _ in full.named_parameters()}
    ablated_names = {n.split(".")[0] for n, _ in ablated.named_parameters()}
    assert full_names - ablated_names == set(removed)
    assert all(getattr(ablated, r) is None for r in removed)
    gone = sum(p.numel() for n, p in full.named_parameters() if n.split(".")[0] in removed)
    assert sum(p.numel() for p in ablated.parameters()) == sum(p.numel() for p in full.parameters()) - gone


@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_runs_and_keeps_the_token_layout(name, T):
    stab = tiny_stab(**ABLATIONS[name][0]).train()
    boxes = [(0, 0, 112, 112), (28, 0, 56, 112)]
    px = box_input(2, T, 112, boxes, empty=1 if T > 1 else 0)
    out = stab(px)
    assert torch.isfinite(out.tokens).all()
    assert out.tokens_per_frame.view(2, T).sum(1).tolist() == count_visual_tokens(px, 14, 2)
    out.tokens.square().mean().backward()
    used = [n for n, p in stab.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    if T > 1:  # every built parameter is used by a video (GSTRA is idle on images, as in the full model)
        assert sorted(used) == sorted(n for n, _ in stab.named_parameters())


def test_paper_modules_keep_the_reference_keys():
    """One class per paper module; LSTE's two parts stay registered at the top level (`lmhra1.*`, `dpe.*`, the
    reference's keys) and the LSTE runs those same modules, also in a copy."""
    import copy

    stab = STAB(32, 4)
    assert isinstance(stab.lste, LSTE) and isinstance(stab.dec, GSTRA)
    assert isinstance(stab.local_attention, LSD) and isinstance(stab.global_attention, FSRA)
    keys = list(stab.state_dict())
    assert "lmhra1.pos_embed.3.weight" in keys and "dpe.bias" in keys and not any(k.startswith("lste.") for k in keys)
    assert keys.index("patch_embedding.weight") < keys.index("lmhra1.pos_embed.0.weight") < keys.index("dpe.weight") \
        < keys.index("dec.attn.in_proj_weight")  # the reference's order
    twin = copy.deepcopy(stab)
    assert twin.lste.lmhra1 is twin.lmhra1 and twin.lste.dpe is twin.dpe and twin.lmhra1 is not stab.lmhra1
    assert STAB(32, 4, use_lste=False).lste is None


def test_ablation_class_tokens():
    """Which token sits in the CLS slot: FSRA's without GSTRA, GSTRA's without FSRA, the mean LSD token with neither."""
    px = box_input(1, 4, 112, [(0, 0, 112, 112)])
    with torch.no_grad():
        no_gstra = tiny_stab(use_gstra=False)
        out = no_gstra(px)
        feats = no_gstra.temporal(no_gstra.patch_embedding(px[0, :, :3])[None])[0]
        tokens = no_gstra.local_attention(feats.permute(0, 2, 3, 1))
        assert torch.allclose(out.tokens[0], no_gstra.global_attention(no_gstra.class_embedding, tokens[:1])[0],
                              atol=1e-5)
        no_fsra = tiny_stab(use_fsra=False)
        _, video_cls = no_fsra.temporal(no_fsra.patch_embedding(px[0, :, :3])[None])
        cls = no_fsra(px).tokens.view(4, 21, 32)[:, 0]
        assert torch.allclose(cls, video_cls, atol=1e-5)
        neither = tiny_stab(use_gstra=False, use_fsra=False, downsample="avgpool")
        frame = neither(px).tokens[:21]
        rows = frame[1:].view(4, 5, 32)[:, :4]
        assert torch.allclose(frame[0], rows.reshape(16, 32).mean(0), atol=1e-5)


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablated_model_agrees_with_the_processor_and_reloads(name, tmp_path):

    from videopanda import VideoPandaForCausalLM
    from videopanda.configuration import variant_config
    from videopanda.video_processing import VideoPandaVideoProcessor

    switches = {CONFIG_NAMES[k]: v for k, v in ABLATIONS[name][0].items()}
    config = variant_config("videopanda-tiny", **switches)
    model = VideoPandaForCausalLM(config).eval()
    processor = VideoPandaVideoProcessor.from_config(config)
    videos = [box_input(1, 8, 112, [(28, 0, 56, 112)], empty=2)[0], box_input(1, 1, 112, [(0, 0, 112, 112)])[0]]
    with torch.no_grad():
        _, per_video = model.encode_video_flat(videos)
    assert per_video == [processor.count_tokens(v) for v in videos]
    model.save_pretrained(tmp_path)
    again = VideoPandaForCausalLM.from_pretrained(tmp_path)
    assert all(getattr(again.config, k) == v for k, v in switches.items())
    assert again.state_dict().keys() == model.state_dict().keys()


def test_config_switches_default_to_the_full_stab():
    from videopanda import VideoPandaConfig

    config = VideoPandaConfig(text_config={"model_type": "llama"})
    assert (config.stab_use_lste, config.stab_use_gstra, config.stab_use_fsra, config.stab_downsample) == (
        True, True, True, "lsd")
    with pytest.raises(ValueError, match="stab_downsample"):
        VideoPandaConfig(text_config={"model_type": "llama"}, stab_downsample="maxpool")
    with pytest.raises(ValueError, match="downsample"):
        STAB(32, 4, downsample="maxpool")
