"""nn.Module machinery: registration, traversal, modes, state-dict round trips and their errors,
dtype conversion, and PyTorch-default initialisation under manual_seed (docs/layers.md §6)."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidiff as md
import minidiff.functional as F
import minidiff.nn as nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.GroupNorm(1, c)
        self.act = nn.SiLU()
        self.scale = nn.Parameter(np.ones(1, np.float32))

    def forward(self, x):
        return self.act(self.norm(self.conv(x))) * self.scale


class Net(nn.Module):
    def __init__(self, c=4, n_blocks=2):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.blocks = nn.ModuleList([Block(c) for _ in range(n_blocks)])
        self.head = nn.Sequential(nn.Conv2d(c, 1, 1), nn.Dropout(0.5))

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def test_parameters_are_registered_in_assignment_order_with_dotted_names():
    """As PyTorch: a module's own parameters first, then each child's, depth first, in assignment order."""
    names = [n for n, _ in Net(n_blocks=2).named_parameters()]
    block = ["scale", "conv.weight", "conv.bias", "norm.weight", "norm.bias"]
    assert names == (["stem.weight", "stem.bias"] + [f"blocks.{i}.{n}" for i in range(2) for n in block]
                     + ["head.0.weight", "head.0.bias"])
    net = Net()
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert [type(m).__name__ for m in net.children()] == ["Conv2d", "ModuleList", "Sequential"]
    assert net.num_parameters() == sum(p.size for p in net.parameters())


def test_reassigning_and_sharing():
    net = Net()
    net.stem = None                                     # no longer a parameter holder
    assert not any(n.startswith("stem") for n, _ in net.named_parameters())
    shared = nn.Linear(2, 2)
    seq = nn.Sequential(shared, shared)
    assert len(list(seq.parameters())) == 2             # listed once


def test_train_eval_reaches_every_module():
    net = Net()
    assert net.eval() is net and not any(m.training for m in net.modules())
    x = md.Tensor(np.random.default_rng(0).standard_normal((2, 1, 5, 5)).astype(np.float32))
    np.testing.assert_array_equal(net(x).numpy(), net(x).numpy())    # dropout is off
    assert all(m.training for m in net.train().modules())


def test_zero_grad_clears_every_gradient():
    net = Net()
    net(md.Tensor(np.ones((1, 1, 4, 4), np.float32))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


@given(st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_state_dict_round_trip(n_blocks, seed):
    md.manual_seed(seed)
    a, b = Net(n_blocks=n_blocks), Net(n_blocks=n_blocks)
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    state["stem.weight"][...] = 7.0                     # a copy: the model is untouched
    assert not np.any(a.stem.weight.numpy() == 7.0)
    b.load_state_dict(a.state_dict())
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and pa.dtype == pb.dtype
        np.testing.assert_array_equal(pa.numpy(), pb.numpy())
    x = md.Tensor(np.random.default_rng(seed).standard_normal((1, 1, 4, 4)).astype(np.float32))
    np.testing.assert_array_equal(a.eval()(x).numpy(), b.eval()(x).numpy())


def test_load_state_dict_errors_name_keys_and_shapes():
    net = Net(n_blocks=1)
    state = net.state_dict()
    wrong = dict(state, **{"blocks.0.conv.weight": np.zeros((4, 4, 5, 5))})
    with pytest.raises(ValueError, match=r"'blocks.0.conv.weight'.*\(4, 4, 5, 5\).*\(4, 4, 3, 3\)"):
        net.load_state_dict(wrong)
    missing = {k: v for k, v in state.items() if k != "head.0.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['head.0.bias'\]"):
        net.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        net.load_state_dict(dict(state, extra=np.zeros(1)))
    assert net.load_state_dict(missing, strict=False) == (["head.0.bias"], [])


def test_buffers_are_saved_and_loaded():
    m = nn.Linear(2, 2)
    m.register_buffer("table", np.arange(3.0))
    assert "table" in m.state_dict()
    m2 = nn.Linear(2, 2)
    m2.register_buffer("table", np.zeros(3))
    m2.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(m2.table, np.arange(3.0))


def test_double_converts_parameters_for_gradchecks():
    net = Net().double()
    assert all(p.dtype == np.float64 for p in net.parameters())
    y = net.eval()(md.Tensor(np.ones((1, 1, 3, 3))))
    assert y.dtype == np.float64
    assert all(p.dtype == np.float32 for p in net.float().parameters())
    assert nn.Linear(2, 3, dtype=np.float64).weight.dtype == np.float64


def test_parameters_follow_the_default_dtype():
    md.set_default_dtype(np.float64)
    try:
        assert nn.Conv2d(1, 2, 3).weight.dtype == np.float64
        assert nn.SinusoidalTimeEmbedding(4)(np.arange(3)).dtype == np.float64
    finally:
        md.set_default_dtype(np.float32)
    assert nn.Conv2d(1, 2, 3).weight.dtype == np.float32


def test_manual_seed_makes_initialisation_reproducible():
    md.manual_seed(11)
    a = Net().state_dict()
    md.manual_seed(11)
    b = Net().state_dict()
    md.manual_seed(12)
    c = Net().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["stem.weight"], c["stem.weight"])


@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Linear(50, 40), 50),
    (lambda: nn.Conv2d(8, 16, 3), 8 * 9),
    (lambda: nn.ConvTranspose2d(8, 16, 4), 16 * 16),      # PyTorch: fan_in from weight.shape[1]
])
def test_default_init_is_uniform_with_bound_one_over_sqrt_fan_in(make, fan_in):
    """W and b ~ U(±1/√fan_in): all inside the bound, spread like a uniform (std = bound/√3)."""
    md.manual_seed(0)
    m = make()
    bound = 1 / math.sqrt(fan_in)
    w = m.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(m.bias.numpy()).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound
    assert abs(w.mean()) < 0.1 * bound


@pytest.mark.parametrize("shape", [(200, 100), (64, 32, 3, 3)])
@pytest.mark.parametrize("gain", [1.0, nn.init.calculate_gain("tanh")])
def test_xavier_uniform_keeps_variance_two_over_fan_in_plus_fan_out(shape, gain):
    """Glorot: W ~ U(±b), b = gain·√(6/(fan_in + fan_out)), so Var W = b²/3 = gain²·2/(fan_in + fan_out)."""
    fan_in, fan_out = nn.init.fan_in_and_fan_out(shape)
    md.manual_seed(0)
    w = nn.init.xavier_uniform_(nn.Parameter(np.empty(shape, np.float64)), gain=gain).numpy()
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    assert 0.99 * bound < np.abs(w).max() <= bound
    assert abs(w.var() / (gain ** 2 * 2.0 / (fan_in + fan_out)) - 1) < 0.05
    assert abs(w.mean()) < 0.05 * bound


def test_default_init_bound_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for ours, theirs in [(nn.Conv2d(6, 5, 3), torch.nn.Conv2d(6, 5, 3)),
                         (nn.ConvTranspose2d(6, 5, 4), torch.nn.ConvTranspose2d(6, 5, 4)),
                         (nn.Linear(30, 7), torch.nn.Linear(30, 7))]:
        fan_in = nn.init.fan_in_and_fan_out(ours.weight.shape)[0]
        t_fan_in = torch.nn.init._calculate_fan_in_and_fan_out(theirs.weight)[0]
        assert fan_in == t_fan_in


def test_group_norm_and_layer_norm_start_as_identity_affine():
    gn, ln = nn.GroupNorm(2, 4), nn.LayerNorm((3,))
    assert np.all(gn.weight.numpy() == 1) and np.all(gn.bias.numpy() == 0)
    assert np.all(ln.weight.numpy() == 1) and np.all(ln.bias.numpy() == 0)


@given(st.integers(0, 99))
def test_group_norm_silu_module_is_a_group_norm_followed_by_silu(seed):
    """nn.GroupNormSiLU has GroupNorm's parameters and state-dict keys, loads a GroupNorm's state dict, and its
    forward is SiLU of that GroupNorm's (the modules of the U-Net's SiLU∘GroupNorm, docs/layers.md eq. M25)."""
    rng = np.random.default_rng(seed)
    gn, fused = nn.GroupNorm(2, 6, dtype=np.float64), nn.GroupNormSiLU(2, 6, dtype=np.float64)
    assert isinstance(fused, nn.GroupNorm) and fused.state_dict().keys() == gn.state_dict().keys()
    gn.load_state_dict({k: rng.standard_normal(v.shape) for k, v in gn.state_dict().items()})
    fused.load_state_dict(gn.state_dict())
    x = rng.standard_normal((3, 6, 4, 5))
    np.testing.assert_allclose(fused(md.Tensor(x)).numpy(), F.silu(gn(md.Tensor(x))).numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("call, error, message", [
    (lambda: nn.GroupNorm(3, 4), ValueError, "num_channels = 4 does not split into num_groups = 3"),
    (lambda: nn.GroupNorm(2, 4)(md.Tensor(np.ones((1, 3, 2)))), ValueError, "(B, 4, ...)"),
    (lambda: nn.GroupNormSiLU(2, 4)(md.Tensor(np.ones((1, 3, 2)))), ValueError, "GroupNormSiLU(2, 4): x must be (B, 4"),
    (lambda: nn.Linear(0, 3), ValueError, "in_features"),
    (lambda: nn.Sequential(nn.ReLU(), "relu"), TypeError, "modules[1] must be a Module"),
    (lambda: nn.SelfAttention2d(6, num_heads=4), ValueError, "4 heads"),
    (lambda: nn.Conv2d(1, 2, 3, stride=(1, 2, 3)), TypeError, "stride"),
])
def test_bad_construction_is_named(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
