"""hardware.py: the one place that asks the machine (and reads OFA_GROUNDING_NO_CPU_BF16)."""

from __future__ import annotations

import pytest
import torch

from ofa_grounding import hardware


def test_the_switch_answers_no_and_backbone_keeps_the_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    from ofa_grounding import backbone

    assert backbone.cpu_bf16_supported is hardware.cpu_bf16_supported  # scripts/train_demo.sh imports it there
    assert backbone.NO_CPU_BF16_ENV == hardware.NO_CPU_BF16_ENV == "OFA_GROUNDING_NO_CPU_BF16"
    monkeypatch.setenv(hardware.NO_CPU_BF16_ENV, "1")
    assert not hardware.cpu_bf16_supported()
    monkeypatch.setenv(hardware.NO_CPU_BF16_ENV, "0")
    assert not hardware.cpu_bf16_supported() or hardware.onednn_bf16_supported()  # "0" is no switch


def test_ieee_fp32_on_cuda_is_set_once_and_stays() -> None:
    """What an fp32 Grounder on a GPU calls when it is created (no GPU needed: the switches are plain settings)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, False  # torch's defaults
        assert hardware.use_ieee_fp32_on_cuda()
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert not hardware.use_ieee_fp32_on_cuda()  # nothing left to change
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
