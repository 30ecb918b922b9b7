from __future__ import annotations

import pytest
import torch

from ofa_grounding import backbone, hardware
from ofa_grounding.backbone import ResNet


def _randomised_resnet() -> ResNet:
    torch.manual_seed(0)
    net = ResNet("resnet50", width=8).eval()
    for m in net.modules():  # BatchNorm statistics that are not the identity, so folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.mark.slow
def test_folding_batchnorm_keeps_the_output() -> None:
    net, images = _randomised_resnet(), torch.randn(2, 3, 64, 48)
    with torch.inference_mode():
        before = net(images)
        after = net.fuse_for_inference_()(images)
    assert after.shape == (2, 128, 4, 3)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not hardware.onednn_post_ops(), reason="this torch build has no oneDNN fused convolutions")
def test_onednn_post_ops_equal_the_eager_fused_path_bitwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Convolution + residual sum + ReLU in one oneDNN call gives the same float32 bits as three eager ops."""
    net, images = _randomised_resnet().fuse_for_inference_(), torch.randn(2, 3, 64, 48)
    with torch.inference_mode():
        fused = net(images)
        monkeypatch.setattr(backbone, "onednn_post_ops", lambda: False)
        eager = net(images)
    if torch.get_num_threads() >= 2:
        assert torch.equal(fused, eager)
    else:  # on one thread oneDNN picks another algorithm for the fused call: 1-2 ulp apart (measured 4.8e-7)
        torch.testing.assert_close(fused, eager, rtol=1e-6, atol=1e-6)
