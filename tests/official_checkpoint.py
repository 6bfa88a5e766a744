"""Build a tiny checkpoint folder laid out exactly like the released Video-Panda-7B ones (spec section 2).

Names and config fields are the reference's; sizes are tiny. Used by the strict-loading tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from videopanda.configuration import VideoPandaConfig
from videopanda.modeling.videopanda import VideoPandaForCausalLM

LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=320, max_position_embeddings=4096, rms_norm_eps=1e-5,
             pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
TOWER = "videopanda/config/videopanda-video-LB-patch14-anypixel-448"


def official_config(stab_dim: int, model_type: str = "videopanda") -> dict:
    """`model_type` "videopanda" as the released prtr1/fitu configs, "eve" as the repo's stage-1 config.json."""
    return {"model_type": model_type, "architectures": ["VideoPandaLlamaForCausalLM"], **LLAMA,
            "hidden_act": "silu", "torch_dtype": "float32", "transformers_version": "4.31.0",
            "mm_hidden_size": stab_dim, "video_hidden_size": stab_dim, "mm_projector_type": "mlp2x_gelu",
            "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
            "mm_vision_select_layer": -2,
            "mm_vision_tower": "videopanda/config/videopanda-vision-LB-patch14-anypixel-448",
            "mm_vision_tower_teacher": "LanguageBind/LanguageBind_Image", "mm_video_tower": TOWER,
            "video_tower_teacher": "LanguageBind/LanguageBind_Video_merge", "requires_video_distill": True,
            "requires_image_distill": False, "image_aspect_ratio": "square", "tune_mm_mlp_adapter": False,
            "use_mm_proj": True, "mm_projector_lr": 2e-05, "vision_tower_lr": None}


def official_state_dict(model: VideoPandaForCausalLM) -> dict[str, torch.Tensor]:
    """Our weights under the reference's names, plus everything the reference also saves."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("video_tower."):
            out["model." + key] = value
            out["model.vision_tower." + key[len("video_tower."):]] = value  # alias
            if ".lmhra1." in key:
                out["model." + key.replace(".lmhra1.", ".lmhra2.")] = value.clone()  # dead lmhra2
        elif key.startswith("video_projector."):
            out["model." + key] = value
            out["model.mm_projector." + key[len("video_projector."):]] = value
        elif key.startswith("language_model.model."):
            out[key[len("language_model."):]] = value
        elif key.startswith("language_model.lm_head."):
            out[key[len("language_model."):]] = value
    llm = model.config.text_config
    head_dim = llm.hidden_size // llm.num_attention_heads
    for i in range(llm.num_hidden_layers):  # transformers 4.31 saved rotary inv_freq as a persistent buffer
        out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(head_dim // 2)
    teacher = {"embeddings.class_embedding": torch.rand(8), "embeddings.patch_embedding.weight": torch.rand(8, 3, 2, 2),
               "encoder.layers.0.temporal_attn.q_proj.weight": torch.rand(8, 8)}
    for key, value in teacher.items():
        out["model.video_teacher.video_tower." + key] = value
        out["model.video_tower_compressor.teacher_layer.video_tower." + key] = value
    out["model.video_tower_compressor.input_layer.weight"] = torch.rand(8, LLAMA["hidden_size"])
    out["model.video_tower_compressor.norm_layer.0.1.weight"] = torch.rand(8, LLAMA["hidden_size"])
    return out


def write_official_checkpoint(folder: Path, *, stab_dim: int = 32, fmt: str = "bin-sharded",
                              seed: int = 0, model_type: str = "videopanda") -> VideoPandaForCausalLM:
    """Write the folder and return the model whose weights it holds (for comparing outputs)."""
    torch.manual_seed(seed)
    config = VideoPandaConfig(text_config={"model_type": "llama", **LLAMA}, stab_hidden_size=stab_dim,
                              stab_num_heads=8, image_size=112, teacher_image_size=56, prompt_format="videopanda_v1")
    model = VideoPandaForCausalLM(config).eval()
    with torch.no_grad():  # make the zero-initialised branches matter for the comparison
        for p in model.video_tower.parameters():
            p.add_(0.02 * torch.randn_like(p))
        bn = model.video_tower.lmhra1.pos_embed[0]
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(official_config(stab_dim, model_type), indent=2))
    pre = folder / Path(TOWER).name
    pre.mkdir(exist_ok=True)
    (pre / "preprocessor_config.json").write_text(json.dumps(
        {"num_frames": 4, "image_size": 112, "patch_stride": 14, "conv_stride": 2, "image_size_teacher": 56,
         "patch_stride_teacher": 14, "all_num_frames": 8}))
    state = official_state_dict(model)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / "model.safetensors"))
    else:
        keys = sorted(state)
        shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                  "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
        for name, shard_keys in shards.items():
            torch.save({k: state[k] for k in shard_keys}, folder / name)
        weight_map = {k: name for name, ks in shards.items() for k in ks}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return model


# The released tokenizer_config.json (spec 2.8): a slow LlamaTokenizer over a SentencePiece model.
OFFICIAL_TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                             "legacy": False, "model_max_length": 4096, "pad_token": None, "padding_side": "right",
                             "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                             "clean_up_tokenization_spaces": False, "sp_model_kwargs": {}}
CORPUS = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions. USER: ASSISTANT: What is the man doing? "
          "How many objects are there? Describe the video. The ball moves left, then right. A red square, a blue "
          "circle and a green triangle move across the frame while the camera pans slowly.")


def write_official_tokenizer(folder: Path) -> None:
    """A real LLaMA-style SentencePiece `tokenizer.model` (BPE with byte fallback, ids 0/1/2 = unk/bos/eos and
    "\n" = 13 as Vicuna's; 300 pieces, within the stand-in's vocabulary of 320) with the released tokenizer files."""
    import io

    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([CORPUS] * 20), model_writer=buffer, vocab_size=300,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   character_coverage=1.0, byte_fallback=True, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(OFFICIAL_TOKENIZER_CONFIG, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


def write_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = "a" * 40) -> str:
    """An offline Hugging Face hub cache (`HF_HUB_CACHE`) holding `repo_id` at `commit` as `refs/main`, with each
    folder of `files` (path in the repo -> local folder) copied in, as huggingface_hub lays out a download."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for inside, source in files.items():
        shutil.copytree(source, snapshot / inside, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit
