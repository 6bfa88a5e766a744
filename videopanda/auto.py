"""Registration with transformers' Auto classes, done by `import videopanda`.

After it, `AutoConfig`, `AutoModelForImageTextToText`, `AutoModelForCausalLM` and `AutoProcessor` know the model type
"videopanda", so tools built on them (pipelines, lmms-eval, TRL, ...) load our folders, official Video-Panda folders
and hub ids like any transformers model.
"""

from __future__ import annotations

_DONE = False


def register() -> None:
    """Register once per process (transformers refuses a second registration of the same type)."""
    global _DONE
    if _DONE:
        return
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from .configuration import VideoPandaConfig
    from .modeling.videopanda import VideoPandaForCausalLM

    AutoConfig.register("videopanda", VideoPandaConfig, exist_ok=True)
    AutoModelForImageTextToText.register(VideoPandaConfig, VideoPandaForCausalLM, exist_ok=True)
    AutoModelForCausalLM.register(VideoPandaConfig, VideoPandaForCausalLM, exist_ok=True)

    # transformers' top-level AutoVideoProcessor is a placeholder that demands torchvision; the class in its module
    # works without it, and so does ours (PyAV decoding, our own resize).
    from transformers import AutoProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from .processing import VideoPandaProcessor
    from .video_processing import VideoPandaVideoProcessor

    AutoVideoProcessor.register(VideoPandaConfig, video_processor_classes={
        "torchvision": VideoPandaVideoProcessor, "pil": VideoPandaVideoProcessor}, exist_ok=True)
    AutoProcessor.register(VideoPandaConfig, VideoPandaProcessor, exist_ok=True)
    _DONE = True
