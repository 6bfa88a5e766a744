"""`FastOptions`: which form each fast kernel takes. One frozen value, passed to whatever builds a fast form.

Every field defaults to "auto": the fastest form known for the tensors at hand (a Triton kernel on a GPU with Triton,
a torch form otherwise). The other values force one form, for benchmarks and for the tests, which run the Triton
kernels under Triton's interpreter on CPU (`TRITON_INTERPRET=1`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

CHOICES: dict[str, tuple[str, ...]] = {
    # the patch embedding's unfold: one Triton pass, or torch's permute + copy (inductor's when compiling)
    "unfold": ("auto", "triton", "torch"),
    # the dpe (depthwise 3x3x3 conv): the Triton kernel, 27 shifted multiply-adds (what inductor fuses best), or
    # one channels-last conv (cuDNN / oneDNN). Auto: triton on a GPU, shift when compiling, else conv
    "dpe": ("auto", "triton", "shift", "conv"),
    # LSD's 2x2 window attention: one Triton kernel, or torch ops
    "lsd": ("auto", "triton", "plain"),
    # GSTRA's and FSRA's constant-query pooling: two Triton passes that never write the normed keys, or LN + matmuls
    "pool": ("auto", "triton", "plain"),
    # the LSTE's second 1x1x1 conv with residual and zero border in its epilogue, and the projector's first layer
    # with its GELU: TMA GEMMs (a GPU of compute capability 9.0+ in 16-bit, or the interpreter), or cuBLAS + a pass
    "gemm": ("auto", "triton", "torch"),
    # the LLM's batch-1 decode-step products: the Triton matrix-vector kernel, or cuBLAS. Auto: the kernel on CUDA
    # inside compiled code (eager decoding is bound by launches, where a Triton launch costs more)
    "gemv": ("auto", "triton", "torch"),
}


@dataclass(frozen=True)
class FastOptions:
    """The form of each fast kernel ("auto" or one of `CHOICES[field]`). Invalid values raise ValueError."""

    unfold: str = "auto"
    dpe: str = "auto"
    lsd: str = "auto"
    pool: str = "auto"
    gemm: str = "auto"
    gemv: str = "auto"

    def __post_init__(self) -> None:
        for f in fields(self):
            value, allowed = getattr(self, f.name), CHOICES[f.name]
            if value not in allowed:
                raise ValueError(f"FastOptions.{f.name} must be one of {', '.join(map(repr, allowed))}; "
                                 f"got {value!r}")

    @classmethod
    def all(cls, form: str) -> FastOptions:
        """Every field that offers `form` set to it (e.g. `FastOptions.all("triton")`), the others "auto"."""
        return cls(**{name: form for name, allowed in CHOICES.items() if form in allowed})
