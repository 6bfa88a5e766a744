"""Distillation: the compressor (layer choice, token pairing, loss), the teachers (LanguageBind key layout and math,
transformers CLIP/SigLIP), the official-checkpoint loaders, and `videopanda train --distill` end to end on CPU.

Everything is tiny: a 2-layer LLM, a 32-wide STAB at 112 px, teachers of width 32 on 32 px frames.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import videopanda.train.recipe as recipe
from videopanda import VideoPandaConfig, VideoPandaForCausalLM, VideoPandaProcessor
from videopanda.cli import main
from videopanda.configuration import variant_config
from videopanda.modeling.compressor import (
    VideoCompressor,
    attention_heads,
    distill_layer_indices,
    patch_targets,
    video_distillation_loss,
)
from videopanda.modeling.teachers import (
    HFVisionTeacher,
    LanguageBindTeacher,
    LanguageBindVisionConfig,
    LanguageBindVisionTransformer,
    TeacherInputs,
)
from videopanda.transforms import frames_to_pixel_values
from videopanda.weights import CheckpointError, load_official_compressor, load_official_teacher

TINY = variant_config("videopanda-tiny", video_token_index=49152)  # 112 px, g = 4; the config of `tiny_model`
LB_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                 patch_size=4, hidden_act="gelu", layer_norm_eps=1e-5, add_time_attn=True, num_frames=8)


# ---------------------------------------------------------------------------------------------------------------
# The compressor
# ---------------------------------------------------------------------------------------------------------------


def test_layer_indices_equal_the_reference_for_32_layers_and_generalise():
    assert distill_layer_indices(32) == (32 - torch.arange(0, 33, 4)).tolist()  # the reference's rule
    assert distill_layer_indices(30) == [30, 26, 22, 19, 15, 11, 7, 4, 0]  # SmolLM2-135M
    assert distill_layer_indices(2) == [2, 2, 1, 1, 1, 1, 0, 0, 0]
    for L in range(1, 81):
        idx = distill_layer_indices(L)
        assert len(idx) == 9 and idx[0] == L and idx[-1] == 0 and idx == sorted(idx, reverse=True), L
    assert [attention_heads(d) for d in (1024, 768, 1152, 32)] == [8, 6, 9, 1]


def test_compressor_has_the_official_parameter_names_and_shapes():
    D, C = 64, 48
    state = VideoCompressor(D, C, 32).state_dict()
    expected = {f"norm_layer.{j}.0.{p}": (D,) for j in range(9) for p in ("weight", "bias")}
    expected |= {f"norm_layer.{j}.1.weight": (C, D) for j in range(9)}
    expected |= {"input_layer.weight": (C, D), "input_layer.bias": (C,), "output_layer.weight": (C, C),
                 "output_layer.bias": (C,)}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def _video_batch(config: VideoPandaConfig, teacher_inputs: TeacherInputs):
    """Two videos of 8 frames: a landscape clip of 5 frames (3 padded) and a square one of 8; input ids with text
    around each video's placeholders, right-padded."""
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (5, 36, 64, 3), dtype=np.uint8), rng.integers(0, 255, (8, 40, 40, 3), dtype=np.uint8)]
    pixel = torch.stack([frames_to_pixel_values(c, num_frames=8, image_size=config.image_size,
                                                teacher_size=config.teacher_image_size, patch_size=config.patch_size)
                         for c in clips])
    teacher = torch.stack([teacher_inputs(c) for c in clips])
    from videopanda.modeling.stab import count_visual_tokens

    counts = count_visual_tokens(pixel, config.patch_size, config.conv_stride, config.empty_frame_patches)
    rows = [[5, 6] + [config.video_token_index] * n + [7, 8, 9][: 1 + b] for b, n in enumerate(counts)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, pixel, teacher, counts


def _token_kinds(pixel: torch.Tensor, config: VideoPandaConfig) -> list[tuple[str, int, int, int]]:
    """Per visual token, frame by frame, the slow way: (kind, frame, row, col) with kind cls / patch / split."""
    from videopanda.modeling.stab import crop_boxes, patch_valid_mask

    frames = pixel.flatten(0, 1)
    boxes = crop_boxes(patch_valid_mask(frames[:, 3:], config.patch_size), config.empty_frame_patches)
    out = []
    for f, (_, _, H, W) in enumerate(boxes.tolist()):
        h, w = H // config.conv_stride, W // config.conv_stride
        out.append(("cls", f, -1, -1))
        for r in range(h):
            out += [("patch", f, r, c) for c in range(w)] + [("split", f, r, -1)]
    return out


def test_patch_targets_pick_exactly_the_patch_tokens_and_align_the_teacher_grid():
    teacher_inputs = TeacherInputs(TINY.image_size, TINY.teacher_image_size, TINY.patch_size, 32, TINY.num_frames)
    ids, pixel, teacher, counts = _video_batch(TINY, teacher_inputs)
    t = patch_targets(ids, pixel, teacher, TINY, teacher_patch_size=4)  # teacher grid 8 -> student grid 4

    visual = (ids == TINY.video_token_index).flatten().nonzero()[:, 0].tolist()
    kinds = _token_kinds(pixel, TINY)
    assert len(kinds) == len(visual) == sum(counts)
    picked = {visual.index(p) for p in t.positions.tolist()}
    assert picked == {i for i, k in enumerate(kinds) if k[0] == "patch"}  # no cls, no split token, none missed
    assert [kinds[visual.index(p)][1] for p in t.positions.tolist()] == t.frame_id.tolist()

    # Real frames: every patch token has a fully valid teacher cell, and those cells are all of the frame's cells.
    assert t.frame_valid.tolist() == [True] * 5 + [False] * 3 + [True] * 8
    real = t.frame_valid[t.frame_id]
    assert bool((t.weight[real] == 1).all()) and bool((t.weight[~real] == 0).all())
    mask = torch.nn.functional.avg_pool2d(teacher.flatten(0, 1)[:, 3:], 8)[:, 0]  # [F, 4, 4]: 8 teacher px per cell
    for f in range(16):
        cells = set((t.target_index[(t.frame_id == f) & (t.weight > 0)] - f * 16).tolist())
        assert cells == set((mask[f].flatten() == 1).nonzero()[:, 0].tolist()), f
    # the 64 x 36 clip covers ceil(4 * 36 / 64) = 3 of the 4 rows of cells, from row (4 - 3) // 2 = 0
    assert set(((t.target_index[t.frame_id == 0]) // 4).tolist()) == {0, 1, 2}


def _hidden_and_targets(seed: int = 0):
    torch.manual_seed(seed)
    teacher_inputs = TeacherInputs(TINY.image_size, TINY.teacher_image_size, TINY.patch_size, 32, TINY.num_frames)
    ids, pixel, teacher, _ = _video_batch(TINY, teacher_inputs)
    targets = patch_targets(ids, pixel, teacher, TINY, teacher_patch_size=4)
    hidden = [torch.randn(*ids.shape, 64) for _ in range(3)]  # a 2-layer LLM: 3 hidden states
    return hidden, targets, VideoCompressor(64, 32, 2)


def test_loss_is_zero_when_the_prediction_is_the_teacher_and_padded_frames_do_not_count():
    hidden, t, compressor = _hidden_and_targets()
    with torch.no_grad():
        pred = compressor(compressor.gather(hidden, t.positions))
    F_, g = t.num_frames, t.grid
    tmap = torch.randn(F_ * g * g, 32)  # padded frames keep random features: they must not matter
    tmap[t.target_index] = pred
    loss = video_distillation_loss(compressor, hidden, tmap.view(F_, g, g, 32), t)
    assert int(t.frame_valid.sum()) == 13 and abs(loss.item()) < 1e-5

    # the opposite direction: cos = -1, so 2 per valid frame; half matched, half opposed
    tmap[t.target_index] = -pred
    assert video_distillation_loss(compressor, hidden, tmap.view(F_, g, g, 32), t).item() == pytest.approx(26, rel=1e-5)
    opposed = t.frame_id[:, None] == torch.tensor([0, 1, 8])  # two landscape frames and one square frame
    tmap[t.target_index] = torch.where(opposed.any(1, keepdim=True), -pred, pred)
    loss = video_distillation_loss(compressor, hidden, tmap.view(F_, g, g, 32), t)
    assert loss.item() == pytest.approx(6, rel=1e-5)  # video_loss = 6 / 13 for this batch

    loss.backward()  # every compressor parameter is in the graph (what the reference's cos(x, x.detach()) was for)
    assert all(p.grad is not None for p in compressor.parameters())


def test_loss_pools_a_finer_teacher_map_to_the_student_grid():
    hidden, t, compressor = _hidden_and_targets(1)
    with torch.no_grad():
        pred = compressor(compressor.gather(hidden, t.positions))
    tmap = torch.randn(t.num_frames * 16, 32)
    tmap[t.target_index] = pred
    fine = tmap.view(t.num_frames, 4, 4, 32).repeat_interleave(2, 1).repeat_interleave(2, 2)  # 8 x 8, 2 x 2 blocks
    assert abs(video_distillation_loss(compressor, hidden, fine, t).item()) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Teacher inputs
# ---------------------------------------------------------------------------------------------------------------


def test_teacher_inputs_follow_the_student_geometry_at_224():
    """The reference's numbers: student 448 canvas, teacher 224 (spec 3.5): the teacher's valid region is the
    student's at half scale, normalised with the CLIP statistics; padded frames are all zero."""
    frames = np.random.default_rng(0).integers(0, 255, (3, 180, 320, 3), dtype=np.uint8)
    student = frames_to_pixel_values(frames, num_frames=8, image_size=448, teacher_size=224, patch_size=14)
    teacher = TeacherInputs(448, 224, 14, 224, 8)(frames)
    assert teacher.shape == (8, 4, 224, 224)
    assert torch.equal(teacher[:3, 3], student[:3, 3, ::2, ::2])
    assert not teacher[3:].any()
    rows = teacher[0, 3].any(1).nonzero()[:, 0]
    assert (int(rows[0]), int(rows[-1]) + 1) == (42, 168)  # 9 of 16 patch rows from row (16 - 9) // 2 = 3
    background = (teacher[0, :3, 0, 0] * torch.tensor([0.26862954, 0.26130258, 0.27577711])
                  + torch.tensor([0.48145466, 0.4578275, 0.40821073])) * 255
    assert torch.allclose(background, torch.tensor([122.0, 116.0, 104.0]), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# LanguageBind
# ---------------------------------------------------------------------------------------------------------------


def _spec_teacher_keys(layers: int) -> set[str]:
    """Spec 2.6, written out independently of the module."""
    keys = {"embeddings.class_embedding", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
            "pre_layrnorm.weight", "pre_layrnorm.bias", "post_layernorm.weight", "post_layernorm.bias"}
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for attn in ("self_attn", "temporal_attn"):
            keys |= {f"{p}{attn}.{proj}_proj.{w}" for proj in "qkv" for w in ("weight", "bias")}
            keys |= {f"{p}{attn}.out_proj.{w}" for w in ("weight", "bias")}
        for norm in ("layer_norm1", "layer_norm2", "temporal_layer_norm1"):
            keys |= {f"{p}{norm}.weight", f"{p}{norm}.bias"}
        keys |= {f"{p}mlp.fc1.weight", f"{p}mlp.fc1.bias", f"{p}mlp.fc2.weight", f"{p}mlp.fc2.bias",
                 f"{p}temporal_embedding"}
    return keys


def _languagebind_folder(root: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A folder shaped like LanguageBind_Video_merge: config.json (vision fields under vision_config) and weights
    of the whole CLIP-style model (vision_model.*, text_model.*, projections, an old-style position_ids)."""
    torch.manual_seed(seed)
    tower = LanguageBindVisionTransformer(LanguageBindVisionConfig(**LB_VISION))
    state = {k: torch.randn_like(v) * 0.1 for k, v in tower.state_dict().items()}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "LanguageBindVideo", "projection_dim": 16,
                                                  "text_config": {"hidden_size": 16}, "vision_config": LB_VISION}))
    full = {f"vision_model.{k}": v for k, v in state.items()}
    full |= {"vision_model.embeddings.position_ids": torch.arange(65)[None], "text_model.final_layer_norm.weight":
             torch.ones(16), "visual_projection.weight": torch.randn(16, 32), "logit_scale": torch.tensor(2.6)}
    save_file(full, str(root / "model.safetensors"))
    return root, state


def test_languagebind_teacher_has_the_official_keys_and_loads_strictly(tmp_path):
    config = LanguageBindVisionConfig.from_dict({"vision_config": LB_VISION})
    assert set(LanguageBindVisionTransformer(config).state_dict()) == _spec_teacher_keys(3)
    folder, state = _languagebind_folder(tmp_path / "lb")
    teacher = LanguageBindTeacher.from_pretrained(folder)
    for k, v in teacher.video_tower.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.train().training

    broken = load_file(str(folder / "model.safetensors"))
    del broken["vision_model.encoder.layers.1.temporal_embedding"]
    save_file(broken, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="temporal_embedding"):
        LanguageBindTeacher.from_pretrained(folder)


def test_languagebind_spatial_path_equals_transformers_clip(tmp_path):
    """With the temporal branch made an identity, the tower is a CLIP ViT: layer -2 equals transformers'."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder, state = _languagebind_folder(tmp_path / "lb", seed=1)
    teacher = LanguageBindTeacher.from_pretrained(folder)
    for layer in teacher.video_tower.encoder.layers:
        torch.nn.init.zeros_(layer.temporal_embedding)
        torch.nn.init.zeros_(layer.temporal_attn.out_proj.weight)
        torch.nn.init.zeros_(layer.temporal_attn.out_proj.bias)
    fields = {k: v for k, v in LB_VISION.items() if k not in ("add_time_attn", "num_frames")}
    clip = CLIPVisionModel(CLIPVisionConfig(**fields)).eval()
    spatial = {k: v for k, v in state.items() if "temporal" not in k}
    missing, unexpected = clip.load_state_dict(spatial, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)

    pixel = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        ours = teacher.encode(pixel, torch.ones(2, 8, dtype=torch.bool))
        theirs = clip(pixel_values=pixel.flatten(0, 1), output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(ours, theirs.unflatten(1, (8, 8)), rtol=1e-4, atol=1e-5)


def test_languagebind_temporal_attention_mixes_the_frames_of_one_video_only(tmp_path):
    folder, _ = _languagebind_folder(tmp_path / "lb", seed=2)
    teacher = LanguageBindTeacher.from_pretrained(folder)
    layer = teacher.video_tower.encoder.layers[0]
    x = torch.randn(2 * 8, 5, 32)
    with torch.no_grad():
        got = layer(x, 8)
        # the temporal step written the slow way: one patch position of one video at a time
        v = x.view(2, 8, 5, 32) + layer.temporal_embedding[0, :, None]
        mixed = v.clone()
        for b in range(2):
            for n in range(5):
                mixed[b, :, n] += layer.temporal_attn(layer.temporal_layer_norm1(v[b, :, n])[None])[0]
        y = mixed.reshape(16, 5, 32)
        y = y + layer.self_attn(layer.layer_norm1(y))
        want = y + layer.mlp(layer.layer_norm2(y))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    pixel = torch.randn(2, 8, 3, 32, 32)
    other = pixel.clone()
    other[1, 3] += 1.0  # change one frame of the second video
    with torch.no_grad():
        a, b = (teacher.encode(p, torch.ones(2, 8, dtype=torch.bool)) for p in (pixel, other))
    assert torch.equal(a[:8], b[:8])  # the first video is untouched
    assert not torch.allclose(a[8:11], b[8:11])  # other frames of the second video see the change


def test_official_checkpoint_compressor_and_teacher_load_strictly(tmp_path):
    """`model.video_tower_compressor.*` (teacher_layer alias left out) and `model.video_teacher.video_tower.*`."""
    _, tower_state = _languagebind_folder(tmp_path / "lb", seed=3)
    compressor_state = {k: torch.randn_like(v) for k, v in VideoCompressor(64, 32, 2).state_dict().items()}
    official = {"model.embed_tokens.weight": torch.randn(10, 64)}
    official |= {f"model.video_tower_compressor.{k}": v for k, v in compressor_state.items()}
    for prefix in ("model.video_teacher.video_tower.", "model.video_tower_compressor.teacher_layer.video_tower."):
        official |= {prefix + k: v for k, v in tower_state.items()}
    folder = tmp_path / "official"
    folder.mkdir()
    keys = sorted(official)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: official[k].contiguous() for k in ks}, str(folder / name))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, ks in shards.items() for k in ks}}))

    compressor = VideoCompressor(64, 32, 2)
    load_official_compressor(compressor, folder)
    assert all(torch.equal(v, compressor_state[k]) for k, v in compressor.state_dict().items())
    teacher = LanguageBindTeacher(LanguageBindVisionConfig(**LB_VISION))
    load_official_teacher(teacher.video_tower, folder)
    assert all(torch.equal(v, tower_state[k]) for k, v in teacher.video_tower.state_dict().items())
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_official_compressor(VideoCompressor(64, 48, 2), folder)

    # --teacher with only the LanguageBind config.json: the teacher weights come from the official checkpoint
    config_only = tmp_path / "lb_config"
    config_only.mkdir()
    (config_only / "config.json").write_text((tmp_path / "lb" / "config.json").read_text())
    from videopanda.modeling.teachers import load_teacher

    loaded = load_teacher("languagebind", config_only, official_checkpoint=folder)
    assert all(torch.equal(v, tower_state[k]) for k, v in loaded.video_tower.state_dict().items())
    with pytest.raises(CheckpointError, match="no weights"):
        load_teacher("languagebind", config_only)


# ---------------------------------------------------------------------------------------------------------------
# transformers teachers
# ---------------------------------------------------------------------------------------------------------------


def _save_clip(folder: Path, kind: str = "clip", seed: int = 0) -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=4)
    model = (CLIPVisionModel(CLIPVisionConfig(**fields)) if kind == "clip"
             else SiglipVisionModel(SiglipVisionConfig(**fields))).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_teacher_gives_layer_minus_2_patch_features(tmp_path, kind):
    model = _save_clip(tmp_path / kind, kind)
    teacher = HFVisionTeacher.from_pretrained(tmp_path / kind)
    assert (teacher.image_size, teacher.patch_size, teacher.hidden_size, teacher.grid) == (32, 4, 32, 8)
    assert teacher.image_mean == ((0.48145466, 0.4578275, 0.40821073) if kind == "clip" else (0.5, 0.5, 0.5))
    frames = np.random.default_rng(1).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    pixel = torch.stack([teacher.inputs(TINY)(frames)] * 2)  # [2, 8, 4, 32, 32], 5 padded frames each
    feats = teacher.features(pixel)
    assert feats.shape == (16, 8, 8, 32)
    with torch.no_grad():
        hidden = model(pixel_values=pixel[0, :3, :3], output_hidden_states=True).hidden_states[-2]
    want = (hidden[:, 1:] if kind == "clip" else hidden).unflatten(1, (8, 8))
    torch.testing.assert_close(feats[:3], want, rtol=1e-4, atol=1e-5)
    assert not feats[3:8].any()  # padded frames are not run
    assert not any(p.requires_grad for p in teacher.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Training end to end
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model, smollm2_tokenizer):
    from videopanda.data.synth import generate

    root = tmp_path_factory.mktemp("distill")
    tiny_model.save_pretrained(root / "model")
    smollm2_tokenizer.save_pretrained(root / "model")
    VideoPandaProcessor.from_pretrained(root / "model")
    _save_clip(root / "clip")
    generate(root / "data", n=12, seed=0, num_frames=8, size=64, progress=False)
    return root


def _args(root: Path, out: Path, *extra: object, steps: int = 4) -> list[str]:
    return ["-v", "train", "--data", str(root / "data" / "train.json"), "--out", str(out), "--model",
            str(root / "model"), "--steps", str(steps), "--save-every", "2", "--log-every", "1", "--batch-size", "2",
            "--num-workers", "0", "--stage", "finetune", "--lr", "1e-3", "--visual-lr", "1e-3", "--distill", "hf",
            "--teacher", str(root / "clip"), *map(str, extra)]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_train_with_a_clip_teacher_saves_the_compressor_apart_and_resumes_exactly(setup, tmp_path, monkeypatch):
    groups: dict[str, list[str]] = {}
    make_optimizer = recipe.make_optimizer

    def spy(model, args, total):
        optimizer, scheduler = make_optimizer(model, args, total)
        names = {id(p): n for n, p in model.named_parameters()}
        groups["visual"] = [names[id(p)] for p in optimizer.param_groups[0]["params"]]
        return optimizer, scheduler

    a, b = tmp_path / "a", tmp_path / "b"
    with monkeypatch.context() as m:
        m.setattr(recipe, "make_optimizer", spy)
        assert main(_args(setup, a)) == 0
    assert any(n.startswith("video_tower_compressor.") for n in groups["visual"])  # the visual learning rate

    log = _log(a)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    video = [r["video_loss"] for r in log]
    assert all(math.isfinite(v) and 0 < v < 2 for v in video)
    assert video[-1] < video[0]  # the compressor learns the teacher
    for r in log:
        assert r["loss"] == pytest.approx(r["lm_loss"] + r["video_loss"], rel=1e-6)

    final = a / "final"
    compressor = load_file(str(final / "compressor.safetensors"))
    assert set(compressor) == set(VideoCompressor(64, 32, 2).state_dict())
    model_keys = set(load_file(str(final / "model.safetensors")))
    assert model_keys == set(VideoPandaForCausalLM(TINY).state_dict())  # no compressor, no teacher
    VideoPandaForCausalLM.from_pretrained(final)
    state = torch.load(a / "checkpoint-000004" / "state.pt", map_location="cpu", weights_only=False)
    assert {k for k in state["model"] if k.startswith("video_tower_compressor.")} == \
        {f"video_tower_compressor.{k}" for k in compressor}
    assert not any("teacher" in k or "embeddings.class_embedding" in k for k in state["model"])
    for k, v in compressor.items():
        assert torch.equal(v, state["model"][f"video_tower_compressor.{k}"]), k

    calls = {"n": 0}

    def stop_before_third_step(*_):
        calls["n"] += 1
        return calls["n"] >= 3

    with monkeypatch.context() as m:
        m.setattr(recipe, "_time_is_up", stop_before_third_step)
        assert main(_args(setup, b)) == 0
    assert main(_args(setup, b, "--resume")) == 0
    log_b = _log(b)
    assert [r["step"] for r in log_b] == [1, 2, 3, 4]
    for key in ("loss", "video_loss"):
        torch.testing.assert_close(torch.tensor([r[key] for r in log_b]), torch.tensor([r[key] for r in log]),
                                   rtol=1e-5, atol=0)
    resumed = load_file(str(b / "final" / "compressor.safetensors"))
    for k in compressor:
        torch.testing.assert_close(resumed[k], compressor[k], rtol=1e-5, atol=1e-7)

    # A run from the final folder starts from the compressor saved beside the model (learning rate 0: unchanged).
    nxt = tmp_path / "next"
    assert main([*_args(setup, nxt, steps=1), "--model", str(final), "--lr", "0", "--visual-lr", "0"]) == 0
    again = load_file(str(nxt / "final" / "compressor.safetensors"))
    assert all(torch.equal(again[k], compressor[k]) for k in compressor)


def test_distill_needs_a_teacher_folder(setup, tmp_path, capsys):
    args = _args(setup, tmp_path / "run")
    i = args.index("--teacher")
    del args[i: i + 2]
    assert main(args) == 2
    assert "--teacher" in capsys.readouterr().err


def test_datasets_give_teacher_inputs_only_when_asked_and_flips_match(setup):
    from videopanda.data.dataset import collate
    from videopanda.data.synth_stream import SynthQAStream

    processor = VideoPandaProcessor.from_pretrained(setup / "model")
    inputs = TeacherInputs(TINY.image_size, TINY.teacher_image_size, TINY.patch_size, 32, TINY.num_frames)
    assert SynthQAStream(processor, seed=0)[0].teacher_pixel_values is None  # off by default
    stream = SynthQAStream(processor, seed=0, teacher_inputs=inputs)
    samples = [stream[i] for i in range(2)]
    assert samples[0].teacher_pixel_values.shape == (8, 4, 32, 32)
    batch = collate(samples, pad_id=0)
    assert batch["teacher_pixel_values"].shape == (2, 8, 4, 32, 32)
    assert "teacher_pixel_values" not in collate([SynthQAStream(processor, seed=0)[0]], pad_id=0)

    class Fixed(torch.utils.data.Dataset):  # --flip: the teacher sees the student's flip
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return stream[0]

    flipped = [recipe.PositionFlip(Fixed(), seed=0)[(0, p)] for p in range(8)]
    for s in flipped:
        mirrored = not torch.equal(s.pixel_values, samples[0].pixel_values)
        assert torch.equal(s.teacher_pixel_values, samples[0].teacher_pixel_values.flip(-1) if mirrored
                           else samples[0].teacher_pixel_values)
    assert len({torch.equal(s.pixel_values, samples[0].pixel_values) for s in flipped}) == 2  # both cases seen
