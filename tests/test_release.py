"""The released Video-Panda-7B as users load it: a tiny stand-in with the official layout (EVE-style config.json,
`model.video_tower.*` keys in sharded .bin files, a LLaMA SentencePiece tokenizer), from a folder and from an offline
hub cache, through Python, the Auto classes and the CLI; saved again and reloaded; broken checkpoints refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from official_checkpoint import write_hub_cache, write_official_checkpoint, write_official_tokenizer

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.modeling.videopanda import VideoPandaForCausalLM
from videopanda.weights import CheckpointError, checkpoint_keys, resolve_model

REPO = "jh-yi/Video-Panda-7B"


def video(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(8, 4, 112, 112, generator=g)
    px[:, 3] = 1
    return px


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def logits(model: VideoPandaForCausalLM) -> torch.Tensor:
    n = int(model.encode_video(video()[None]).shape[1])
    ids = torch.tensor([[1, 5, *[model.config.video_token_index] * n, 7, 9]])
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=video()[None]).logits


def greedy(model: VideoPandaForCausalLM) -> torch.Tensor:
    n = int(model.encode_video(video()[None]).shape[1])
    ids = torch.tensor([[1, 5, *[model.config.video_token_index] * n, 7, 9]])
    return model.generate(input_ids=ids, pixel_values=video()[None], max_new_tokens=6, do_sample=False)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Two subfolders as on the hub (fine-tuned and pre-trained weights differ), each with the official tokenizer."""
    root = tmp_path_factory.mktemp("Video-Panda-7B")
    models = {}
    for seed, sub in enumerate(("videopanda_fitu", "videopanda_prtr1")):
        models[sub] = write_official_checkpoint(root / sub, fmt="bin-sharded", seed=seed)
        write_official_tokenizer(root / sub)
    return root, models


@pytest.fixture(scope="module")
def hub_cache(release, tmp_path_factory):
    root, _ = release
    cache = tmp_path_factory.mktemp("hub")
    commit = write_hub_cache(cache, REPO, {"videopanda_fitu": root / "videopanda_fitu",
                                           "videopanda_prtr1": root / "videopanda_prtr1"})
    return cache, commit


@pytest.fixture
def offline(hub_cache, monkeypatch):
    cache, commit = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import; tests set it late
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache, commit


def test_official_folder_saved_again_reloads_with_identical_weights_and_answers(release, tmp_path):
    root, models = release
    loaded = VideoPandaForCausalLM.from_pretrained(root / "videopanda_fitu").eval()
    assert same_weights(loaded, models["videopanda_fitu"])
    loaded.save_pretrained(tmp_path / "ours")
    keys = set(checkpoint_keys(tmp_path / "ours"))
    assert not any(k.startswith("model.") for k in keys), "official names written back"
    assert keys <= set(loaded.state_dict())
    again = VideoPandaForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert same_weights(again, loaded)
    # the same weights in another memory layout may round differently in the last bit; the answers are the same
    assert torch.allclose(logits(again), logits(loaded), atol=1e-5)
    assert torch.equal(greedy(again), greedy(loaded))


def test_hub_id_loads_the_fine_tuned_weights_by_default_and_a_subfolder_on_request(release, offline):
    _, models = release
    _, commit = offline
    fitu = VideoPandaForCausalLM.from_pretrained(REPO)
    assert same_weights(fitu, models["videopanda_fitu"])
    assert fitu.loading_report["repo_id"] == REPO and fitu.loading_report["revision"] == commit
    assert fitu.loading_report["subfolder"] == "videopanda_fitu" and fitu.loading_report["kind"] == "official"
    prtr = VideoPandaForCausalLM.from_pretrained(REPO, subfolder="videopanda_prtr1", revision=commit)
    assert same_weights(prtr, models["videopanda_prtr1"])
    assert not same_weights(prtr, fitu)


def test_auto_classes_load_official_folders_hub_ids_and_our_folders(release, offline, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    root, models = release
    config = AutoConfig.from_pretrained(root / "videopanda_fitu")
    assert config.prompt_format == "videopanda_v1" and config.text_config.hidden_size == 64
    auto = AutoModelForImageTextToText.from_pretrained(REPO, subfolder="videopanda_fitu")
    assert isinstance(auto, VideoPandaForCausalLM) and same_weights(auto, models["videopanda_fitu"])
    auto.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert same_weights(again, auto)


def test_our_folder_in_the_hub_cache_loads_as_pushed(release, offline, tmp_path):
    root, models = release
    cache, _ = offline
    VideoPandaForCausalLM.from_pretrained(root / "videopanda_fitu").save_pretrained(tmp_path / "pushed")
    write_hub_cache(cache, "someone/videopanda-mine", {".": tmp_path / "pushed"}, commit="b" * 40)
    mine = VideoPandaForCausalLM.from_pretrained("someone/videopanda-mine")
    assert mine.loading_report["kind"] == "ours" and same_weights(mine, models["videopanda_fitu"])


def test_a_renamed_key_is_refused_with_its_name(release, tmp_path):
    root, _ = release
    import shutil

    folder = shutil.copytree(root / "videopanda_fitu", tmp_path / "renamed")
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    old = "model.video_projector.0.weight"
    shard = index["weight_map"].pop(old)
    state = torch.load(folder / shard, weights_only=True)
    state["model.video_projector.zero.weight"] = state.pop(old)
    torch.save(state, folder / shard)
    index["weight_map"]["model.video_projector.zero.weight"] = shard
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"video_projector\.0\.weight"):
        VideoPandaForCausalLM.from_pretrained(folder)


def test_our_folder_missing_a_tensor_is_refused(release, tmp_path):
    root, _ = release
    from safetensors.torch import load_file, save_file

    VideoPandaForCausalLM.from_pretrained(root / "videopanda_fitu").save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["video_tower.class_embedding"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="class_embedding"):
        VideoPandaForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(("files", "match"), [
    ({"config.json": {"model_type": "llama", "hidden_size": 4096}}, "'llama' model folder, not a Video-Panda"),
    ({"config.json": {"model_type": "videopanda", "text_config": {"model_type": "llama"}}}, "no weights"),
    ({"notes.txt": "hello"}, "no config.json"),
])
def test_folders_that_are_not_checkpoints_are_named_before_anything_is_built(tmp_path, files, match):
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content) if isinstance(content, dict) else content)
    with pytest.raises(CheckpointError, match=match):
        resolve_model(tmp_path)


def test_a_hub_id_missing_from_the_offline_cache_says_so(offline):
    with pytest.raises(CheckpointError, match="not in the local hub cache"):
        resolve_model("nobody/nothing-here")


def test_cli_answers_from_the_hub_id_and_reports_the_source(release, offline, real_video):
    cache, commit = offline
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "videopanda", "ask", real_video, "What is the man doing?",
                          "--model", REPO, "--subfolder", "videopanda_prtr1", "--max-new-tokens", "4", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["source"] == {"name": REPO, "kind": "official", "repo_id": REPO, "subfolder": "videopanda_prtr1",
                                "revision": commit, "folder": result["source"]["folder"]}
    assert result["source"]["folder"].endswith(f"{commit}/videopanda_prtr1")
    assert result["new_tokens"] >= 1


def test_convert_writes_a_folder_the_auto_classes_load(release, offline, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from videopanda.processing import VideoPandaProcessor

    _, models = release
    cache, _ = offline
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "converted"
    done = subprocess.run([sys.executable, "-m", "videopanda", "convert", REPO, str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tensors"] == len(checkpoint_keys(out))
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert same_weights(model, models["videopanda_fitu"])
    processor = AutoProcessor.from_pretrained(out)
    official = VideoPandaProcessor.from_pretrained(REPO)
    assert isinstance(processor, VideoPandaProcessor)
    frames = torch.randint(0, 255, (8, 64, 64, 3), dtype=torch.uint8).numpy()
    question = "What is the man doing?"
    a, b = processor(videos=frames, text=question), official(videos=frames, text=question)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    again = subprocess.run([sys.executable, "-m", "videopanda", "convert", REPO, str(out)], capture_output=True,
                           text=True, env=env, timeout=300)
    assert again.returncode == 2 and again.stderr.startswith("error:") and "--overwrite" in again.stderr


def test_training_from_the_official_layout_ends_in_a_folder_that_reloads_with_the_trained_weights(release, tmp_path):
    from videopanda.cli import main
    from videopanda.data.synth import generate

    root, models = release
    generate(tmp_path / "data", n=4, seed=0, num_frames=8, size=64, progress=False)
    out = tmp_path / "run"
    assert main(["-v", "train", "--model", str(root / "videopanda_fitu"), "--data", str(tmp_path / "data/train.json"),
                 "--out", str(out), "--steps", "2", "--save-every", "2", "--batch-size", "2", "--num-workers", "0",
                 "--stage", "finetune", "--lr", "1e-3", "--visual-lr", "1e-3"]) == 0
    final = VideoPandaForCausalLM.from_pretrained(out / "final")  # strict: random weights would raise
    trained = torch.load(out / "checkpoint-000002" / "state.pt", map_location="cpu", weights_only=False)["model"]
    own = final.state_dict()
    assert all(torch.equal(own[k], v) for k, v in trained.items() if k in own)
    start = models["videopanda_fitu"].state_dict()
    assert not torch.equal(own["video_projector.0.weight"], start["video_projector.0.weight"])
    assert torch.equal(own["video_tower.lmhra1.pos_embed.0.running_var"],
                       trained["video_tower.lmhra1.pos_embed.0.running_var"])


def test_training_from_the_hub_id_ends_in_a_folder_that_ask_answers_from(release, offline, tmp_path, capsys,
                                                                          cli_inputs):
    from videopanda.cli import main
    from videopanda.data.synth import generate

    generate(tmp_path / "data", n=4, seed=0, num_frames=8, size=64, progress=False)
    out = tmp_path / "run"
    assert main(["-v", "train", "--model", REPO, "--data", str(tmp_path / "data/train.json"), "--out", str(out),
                 "--steps", "1", "--batch-size", "2", "--num-workers", "0", "--stage", "finetune"]) == 0
    capsys.readouterr()
    assert main(["-v", "ask", str(cli_inputs["plain"]), "What is the man doing?", "--model", str(out / "final"),
                 "--max-new-tokens", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"]["kind"] == "ours" and result["new_tokens"] >= 1
