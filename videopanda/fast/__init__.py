"""Inference-only fast forms of the model: the fused STAB, its Triton kernels, the CUDA-graphed visual encode and the
LLM fusions. Each is built from a loaded plain model, shares its weights and computes the same function (checked
by the tests, and for the LLM at load time); `videopanda.modeling` never imports this package.

    options = FastOptions()                      # every kernel "auto"
    encoder = FastEncoder(model, options)        # encoder(pixel_values) == model.encode_video_flat(pixel_values)
    graphed = GraphedEncoder(encoder.stab, model.video_projector)
    fuse_projections(model.language_model, options)
    compile_pointwise(model.language_model, CompiledOps())
"""

from .encoder import FastEncoder
from .graphs import GraphedEncoder
from .llm import CompiledOps, compile_pointwise, fuse_projections, unfuse, verify_fused
from .options import FastOptions
from .stab import FusedSTAB, HostLayoutOutput

__all__ = ["CompiledOps", "FastEncoder", "FastOptions", "FusedSTAB", "GraphedEncoder", "HostLayoutOutput",
           "compile_pointwise", "fuse_projections", "unfuse", "verify_fused"]
