"""benchmarks/train_step.py refuses to time two U-Nets that do not compute the same function.

Its float64 agreement check runs on a tiny configuration (fast): it passes for the PyTorch mirror as
it is, and raises when the mirror is changed (a wrong activation, one weight off) or when the
parameter counts differ.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import minidiff.interop.torch_unet as torch_unet  # noqa: E402

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "train_step.py"
_spec = importlib.util.spec_from_file_location("bench_train_step", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TINY = dict(unet=dict(in_channels=1, image_size=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      attention_resolutions=(2,), dropout=0.1, groups=4, heads=2), batch=3)


@pytest.fixture
def inputs(tmp_path):
    path = str(tmp_path / "inputs.npz")
    bench.make_inputs(TINY, path, seed=1)
    return path


def test_agreement_check_passes_for_the_mirror(inputs):
    facts = bench.check_float64_agreement(TINY, inputs)
    assert facts["float64_max_rel_err"] < 1e-10
    assert facts["params"] == sum(p.numel() for p in torch_unet.TorchUNet(**TINY["unet"]).parameters())
    assert facts["forward_gflop"] > 0 and facts["step_gflop"] == pytest.approx(3 * facts["forward_gflop"])


def test_agreement_check_fails_for_a_different_activation(inputs, monkeypatch):
    monkeypatch.setattr(torch_unet.F, "silu", lambda x, inplace=False: x * torch.sigmoid(1.001 * x))   # not quite SiLU
    with pytest.raises(AssertionError, match="the U-Nets differ"):
        bench.check_float64_agreement(TINY, inputs)


def test_agreement_check_fails_for_one_weight_off(inputs, monkeypatch):
    copy = torch_unet.copy_weights

    def off_by_one_weight(net, model):
        net = copy(net, model)
        with torch.no_grad():
            net.conv_out.weight[0, 0, 1, 1] += 1e-6
        return net

    monkeypatch.setattr(torch_unet, "copy_weights", off_by_one_weight)
    with pytest.raises(AssertionError, match="relative error"):
        bench.check_float64_agreement(TINY, inputs)


def test_agreement_check_fails_for_a_different_parameter_count(inputs, monkeypatch):
    copy = torch_unet.copy_weights

    def with_unused_parameter(net, model):
        net = copy(net, model)
        net.unused = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))   # same outputs, one more parameter
        return net

    monkeypatch.setattr(torch_unet, "copy_weights", with_unused_parameter)
    with pytest.raises(AssertionError, match=r"parameters (\d+) vs (?!\1)\d+"):
        bench.check_float64_agreement(TINY, inputs)


def test_inputs_are_float32_and_reproducible(tmp_path, inputs):
    again = str(tmp_path / "again.npz")
    bench.make_inputs(TINY, again, seed=1)
    (w1, b1), (w2, b2) = bench.load_inputs(inputs), bench.load_inputs(again)
    assert all(w1[k].dtype == np.float32 and np.array_equal(w1[k], w2[k]) for k in w1)
    assert b1["x_t"].shape == (3, 1, 4, 4) and np.array_equal(b1["x_t"], b2["x_t"])
