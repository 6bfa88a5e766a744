"""VideoPandaProcessor: prompt formats, placeholder expansion that matches the model, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videopanda import VideoPandaConfig, VideoPandaProcessor, load_video
from videopanda.configuration import variant_config
from videopanda.processing import VIDEOPANDA_V1_SYSTEM


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


def tiny_config(fmt: str = "chat_template") -> VideoPandaConfig:
    """A fresh config of the tiny variant (the tests may change it), placeholder 49152 as `tiny_model`'s."""
    return variant_config("videopanda-tiny", video_token_index=49152, prompt_format=fmt)


def processor(tokenizer, fmt: str = "chat_template") -> VideoPandaProcessor:
    return VideoPandaProcessor(tokenizer, tiny_config(fmt))


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


def test_placeholders_match_the_model_token_count(tokenizer, tiny_model):
    model = tiny_model
    p = VideoPandaProcessor(tokenizer, model.config)
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


# -- chat templates and apply_chat_template --------------------------------------------------------------------------
def video_message(path, question: str, key: str = "path") -> dict:
    return {"role": "user", "content": [{"type": "video", key: str(path)}, {"type": "text", "text": question}]}


@pytest.mark.parametrize("fmt", ["chat_template", "videopanda_v1"])
def test_apply_chat_template_with_a_video_file_gives_the_direct_call_inputs(tokenizer, cli_inputs, fmt):
    p = processor(tokenizer, fmt)
    clip = cli_inputs["portrait_with_audio"]
    out = p.apply_chat_template([video_message(clip, "What is happening?")], add_generation_prompt=True,
                                tokenize=True, return_dict=True, num_frames=8)
    direct = p(videos=load_video(clip, 8), text="What is happening?")
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}
    for key in out:
        assert torch.equal(out[key], direct[key]), key
    # later turns, and the other keys transformers reads a video from
    chat = [video_message(clip, "What is it?", key="video"), {"role": "assistant", "content": "A bar."},
            {"role": "user", "content": [{"type": "text", "text": "Which way?"}]}]
    out = p.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    direct = p(videos=load_video(clip, 8), text=p.build_prompt("Which way?", [("What is it?", "A bar.")]))
    assert all(torch.equal(out[k], direct[k]) for k in ("input_ids", "pixel_values"))
    ids = p.apply_chat_template([video_message(clip, "What is it?", key="url")], add_generation_prompt=True,
                                tokenize=True)
    assert torch.equal(ids, p(videos=load_video(clip, 8), text="What is it?")["input_ids"])


@pytest.mark.parametrize("fmt", ["chat_template", "videopanda_v1"])
def test_apply_chat_template_text_has_one_placeholder_where_build_prompt_puts_it(tokenizer, fmt):
    p = processor(tokenizer, fmt)
    text = p.apply_chat_template([video_message("clip.mp4", "What is happening?")], add_generation_prompt=True)
    assert text == p.build_prompt("What is happening?") and text.count("<video>") == 1
    if fmt == "videopanda_v1":
        assert text == f"{VIDEOPANDA_V1_SYSTEM} USER: <video>\nWhat is happening? ASSISTANT:"


def test_chat_template_format_is_the_tokenizers_own_template(tokenizer):
    p = processor(tokenizer)
    turns = [("What is it?", "A ball."), ("Which way?", None)]
    messages = [{"role": "user", "content": "<video>\nWhat is it?"}, {"role": "assistant", "content": "A ball."},
                {"role": "user", "content": "Which way?"}]
    assert p.render(turns) == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with_system = VideoPandaProcessor(tokenizer, tiny_config(), system_prompt="Be brief.")
    assert with_system.apply_chat_template([video_message("clip.mp4", "Why?")], add_generation_prompt=True) == \
        tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "<video>\nWhy?"}],
                                      add_generation_prompt=True, tokenize=False)


def test_system_prompt_replaces_the_reference_one(tokenizer):
    p = VideoPandaProcessor(tokenizer, tiny_config("videopanda_v1"), system_prompt="Be brief.")
    assert p.build_prompt("Why?") == "Be brief. USER: <video>\nWhy? ASSISTANT:"


def test_image_blocks_take_the_one_frame_path(tokenizer, tmp_path):
    p = processor(tokenizer)
    Image.fromarray(frames(1, 40, 30)[0]).save(tmp_path / "still.png")
    chat = [{"role": "user", "content": [{"type": "image", "path": str(tmp_path / "still.png")},
                                         {"type": "text", "text": "What is it?"}]}]
    out = p.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert out["pixel_values"].shape == (1, 1, 4, 112, 112)
    direct = p(images=frames(1, 40, 30)[0], text=p.apply_chat_template(chat, add_generation_prompt=True))
    assert all(torch.equal(out[k], direct[k]) for k in ("input_ids", "pixel_values"))


def test_config_num_frames_sets_sampling_and_padding(tokenizer, cli_inputs):
    p = processor(tokenizer)
    clip = cli_inputs["plain"]
    p.config.num_frames = 4
    out = p(videos=clip, text="q")
    assert out["pixel_values"].shape[1] == 4
    assert torch.equal(out["pixel_values"], p(videos=load_video(clip, 4), text="q")["pixel_values"])
    assert p(videos=clip, text="q", num_frames=6)["pixel_values"].shape[1] == 6  # for one call only
    assert p.video_processor.num_frames == 4
    alone = p.video_processor([clip, load_video(clip, 4)])  # the video processor by itself, as transformers calls it
    assert torch.equal(alone["pixel_values"][0], out["pixel_values"][0])
    assert alone["num_visual_tokens"] == [p.count_tokens(out["pixel_values"][0])] * 2


def test_urls_are_refused_with_a_clear_message(tokenizer):
    with pytest.raises(ValueError, match="only local files"):
        processor(tokenizer)(videos="https://example.com/clip.mp4", text="q")
