"""The PyTorch mirror of the U-Net (minidiff.interop.torch_unet) computes the same function as ours.

In float64 with weights copied, outputs and every parameter gradient agree to 1e-10, on the main-job
configuration and on a deeper one with several heads and res blocks; the parameter counts and names agree.
"""
import numpy as np
import pytest

import minidiff as md
from minidiff.models.unet import UNet
from tests.layers_oracle import rel_err

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from minidiff.interop.torch_unet import TorchUNet, torch_unet_from, unet_config  # noqa: E402

CONFIGS = {
    "main_job": dict(in_channels=1, image_size=8, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,)),
    "deep": dict(in_channels=3, image_size=8, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=2,
                 attention_resolutions=(4, 2), groups=4, heads=2),
}


def _perturbed_unet(config, seed):
    """A float64 UNet with every parameter drawn at random (conv_out is zero at init, which would hide errors)."""
    model = UNet(**config, dropout=0.0, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = rng.standard_normal(p.shape) * 0.3
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_unet_matches_ours_in_float64(name):
    model = _perturbed_unet(CONFIGS[name], seed=1)
    net = torch_unet_from(model)
    assert sum(p.numel() for p in net.parameters()) == model.num_parameters()
    assert [k for k, _ in net.named_parameters()] == [k for k, _ in model.named_parameters()]
    c, s = model.in_channels, model.image_size
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((3, c, s, s)), np.array([1, 57, 200])
    y = model(md.Tensor(x), t)
    ty = net(torch.tensor(x), torch.tensor(t))
    assert ty.dtype == torch.float64
    assert rel_err(y.numpy(), ty.detach().numpy()) < 1e-10
    g = rng.standard_normal(y.shape)
    y.backward(g)
    ty.backward(torch.tensor(g))
    grads = dict(net.named_parameters())
    bad = {k: e for k, p in model.named_parameters() if not (e := rel_err(p.grad, grads[k].grad.numpy())) < 1e-10}
    assert not bad, f"parameter gradients disagree with the PyTorch mirror: {bad}"


def test_torch_unet_keeps_dtype_mode_and_config():
    model = UNet(**CONFIGS["main_job"], dropout=0.1)                    # float32 by default
    net = torch_unet_from(model)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net.training and not torch_unet_from(model.eval()).training
    assert unet_config(model)["dropout"] == 0.1
    assert isinstance(TorchUNet(**unet_config(model)), torch.nn.Module)


def test_unet_config_rejects_other_models():
    with pytest.raises(TypeError, match="minidiff UNet"):
        unet_config(md.nn.Linear(2, 2))
