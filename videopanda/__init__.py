"""videopanda: Video-Panda (CVPR 2025), an encoder-free video-language model. Fast, faithful and practical."""

from .configuration import VARIANTS, VideoPandaConfig
from .modeling.stab import STAB
from .modeling.videopanda import VideoPandaForCausalLM
from .processing import VideoPandaProcessor
from .video import VideoDecodeError, load_image, load_video

__all__ = [
    "STAB",
    "VARIANTS",
    "VideoDecodeError",
    "VideoPandaConfig",
    "VideoPandaForCausalLM",
    "VideoPandaProcessor",
    "load_image",
    "load_video",
]
__version__ = "0.1.0"
