"""What this machine computes natively, and the one process-wide precision setting the package makes.

Everything that asks the hardware (or an environment variable standing in for it) lives here, so that the
model, the backbone and the trainer ask one place:
- `cpu_bf16_supported`: whether bfloat16 is fast on this CPU (`OFA_GROUNDING_NO_CPU_BF16=1` answers no);
- `onednn_bf16_supported`, `onednn_post_ops`: what this torch build's oneDNN offers;
- `use_ieee_fp32_on_cuda`: turn TF32 off on CUDA, once, for fp32 answers that match the reference's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["NO_CPU_BF16_ENV", "cpu_bf16_supported", "onednn_bf16_supported", "onednn_post_ops",
           "use_ieee_fp32_on_cuda"]

NO_CPU_BF16_ENV = "OFA_GROUNDING_NO_CPU_BF16"  # read here only


def onednn_bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 kernels on this CPU (its own check: emulated units count)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes in bfloat16 natively (x86: AVX-512 BF16 or AMX; Arm: the BF16 extension) and
    oneDNN's bfloat16 kernels run on it. Elsewhere bfloat16 is emulated (slower than float32) or, for oneDNN's
    convolutions, refused. `OFA_GROUNDING_NO_CPU_BF16=1` answers no on any CPU (to test that path)."""
    if os.environ.get(NO_CPU_BF16_ENV, "") not in ("", "0"):
        return False
    if not onednn_bf16_supported():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: oneDNN's own check above is all we have
        return True
    return any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16"))


def onednn_post_ops() -> bool:
    """Whether this torch build has oneDNN's convolution with fused post-ops (the op torch.compile's CPU
    backend emits; private, so checked rather than assumed)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def use_ieee_fp32_on_cuda() -> bool:
    """Turn TF32 off for float32 on CUDA, for the whole process: cuDNN convolves float32 in TF32 (10-bit
    mantissas) by default on Ampere and later GPUs, which moves fp32 answers away from the reference's (cuBLAS
    matmuls are IEEE by default; set here too, in case something turned them on). Returns whether a setting
    changed. A process-wide switch by nature (torch keeps one per process, for every thread): it is set once,
    where an fp32 `Grounder` is created on a GPU, and never flipped back and forth around calls."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    changed = bool(cudnn.allow_tf32 or matmul.allow_tf32)
    if changed:
        cudnn.allow_tf32 = matmul.allow_tf32 = False
    return changed
