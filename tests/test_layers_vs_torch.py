"""Every nn layer against its torch.nn twin: our state dict loads into the torch module name for
name, then the output, the input gradient and every parameter gradient must agree (relative error
< 1e-10 in float64, < 1e-4 in float32) over hypothesis-drawn configurations."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minidiff as md
import minidiff.nn as nn
from tests.layers_oracle import TOL, rel_err
from tests.strategies import arrays
from tests.strategies_layers import assume_spread_rows, well_spread

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
DTYPES = [np.float64, np.float32]


def check_module(ours, theirs, x, dtype, seed=0):
    """Load ours' state into theirs, run both on x, backpropagate one random cotangent, compare."""
    ours.to(dtype)
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()}, strict=True)
    x = np.asarray(x, dtype=dtype)
    X, tX = md.Tensor(x.copy(), requires_grad=True), torch.tensor(x.copy(), requires_grad=True)
    y, ty = ours(X), theirs(tX)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    y.backward(g)
    ty.backward(torch.tensor(g))
    errors = {"forward": rel_err(y.numpy(), ty.detach().numpy()), "input": rel_err(X.grad, tX.grad.numpy())}
    t_params = dict(theirs.named_parameters())
    errors.update({name: rel_err(p.grad, t_params[name].grad.numpy()) for name, p in ours.named_parameters()})
    bad = {k: e for k, e in errors.items() if not e < TOL[dtype]}
    assert not bad, f"{type(ours).__name__} disagrees with torch ({np.dtype(dtype).name}): {bad}"


def image(draw, channels, side_lo=1, side_hi=6):
    B, H, W = draw(st.integers(1, 2)), draw(st.integers(side_lo, side_hi)), draw(st.integers(side_lo, side_hi))
    return draw(arrays((B, channels, H, W)))


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(1, 5), st.integers(1, 5), st.booleans(), st.data())
def test_linear(dtype, n_in, n_out, bias, data):
    x = data.draw(arrays((data.draw(st.integers(1, 3)), n_in)))
    check_module(nn.Linear(n_in, n_out, bias), torch.nn.Linear(n_in, n_out, bias), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1),
       st.booleans(), st.data())
def test_conv2d(dtype, c_in, c_out, k, stride, padding, bias, data):
    x = image(data.draw, c_in, side_lo=max(1, k - 2 * padding))
    check_module(nn.Conv2d(c_in, c_out, k, stride, padding, bias=bias),
                 torch.nn.Conv2d(c_in, c_out, k, stride, padding, bias=bias), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 2), st.integers(0, 1), st.data())
def test_conv_transpose2d(dtype, c_in, c_out, k, stride, padding, data):
    output_padding = data.draw(st.integers(0, stride - 1))
    x = image(data.draw, c_in, side_lo=2, side_hi=4)
    assume(min(x.shape[2:]) - 1 >= 2 * padding - k - output_padding + 1)   # output size (H − 1)s − 2p + k + op >= 1
    check_module(nn.ConvTranspose2d(c_in, c_out, k, stride, padding, output_padding),
                 torch.nn.ConvTranspose2d(c_in, c_out, k, stride, padding, output_padding), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(1, 3), st.integers(1, 3), st.data())
def test_group_norm(dtype, groups, per_group, data):
    C = groups * per_group
    x = well_spread(image(data.draw, C, side_lo=2))   # no (near-)constant group: well conditioned
    assume_spread_rows(x.reshape(x.shape[0] * groups, -1))
    ours, theirs = nn.GroupNorm(groups, C), torch.nn.GroupNorm(groups, C)
    ours.weight.data[...] = data.draw(arrays((C,)))    # away from the identity start
    check_module(ours, theirs, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(st.integers(2, 5), st.data())
def test_layer_norm(dtype, n, data):
    x = data.draw(arrays((data.draw(st.integers(1, 3)), n))) + np.linspace(-1, 1, n)
    assume_spread_rows(x)
    check_module(nn.LayerNorm(n), torch.nn.LayerNorm(n), x, dtype)


@pytest.mark.parametrize("ours, theirs", [(nn.SiLU, torch.nn.SiLU), (nn.ReLU, torch.nn.ReLU),
                                          (nn.GELU, torch.nn.GELU), (nn.Sigmoid, torch.nn.Sigmoid),
                                          (nn.Tanh, torch.nn.Tanh), (nn.Identity, torch.nn.Identity)])
@given(x=arrays((3, 4)).map(lambda a: a + 0.01 * (a == 0)))
def test_activations(ours, theirs, x):
    for dtype in DTYPES:
        check_module(ours(), theirs(), x, dtype)


@given(st.integers(2, 6), st.integers(1, 4), st.data())
def test_embedding(n, d, data):
    idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5)))
    ours, theirs = nn.Embedding(n, d, dtype=np.float64), torch.nn.Embedding(n, d).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    y, ty = ours(idx), theirs(torch.tensor(idx))
    y.sum().backward()
    ty.sum().backward()
    assert rel_err(y.numpy(), ty.detach().numpy()) < 1e-12
    assert rel_err(ours.weight.grad, theirs.weight.grad.numpy()) < 1e-12


@pytest.mark.parametrize("args, kwargs", [((5,), {}), (((3, 7),), {}), ((None, 2), {}), ((), {"scale_factor": 3}),
                                          ((), {"size": (4, 2)}), ((), {"scale_factor": (2, 1)})])
@given(st.data())
def test_upsample(args, kwargs, data):
    """The same positional and keyword arguments mean the same resize as torch.nn.Upsample's."""
    x = data.draw(arrays((data.draw(st.integers(1, 2)), 2, data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))))
    for dtype in DTYPES:
        check_module(nn.Upsample(*args, **kwargs), torch.nn.Upsample(*args, **kwargs), x, dtype)


class TorchSelfAttention2d(torch.nn.Module):
    """The same block written with torch primitives: x + proj(MHA(GroupNorm(x))) over H·W tokens."""

    def __init__(self, c, heads, groups):
        super().__init__()
        self.heads = heads
        self.norm = torch.nn.GroupNorm(groups, c) if groups else None
        self.qkv, self.proj = torch.nn.Linear(c, 3 * c), torch.nn.Linear(c, c)

    def forward(self, x):
        B, C, H, W = x.shape
        h = x if self.norm is None else self.norm(x)
        qkv = self.qkv(h.reshape(B, C, H * W).transpose(1, 2)).reshape(B, H * W, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        return x + self.proj(o).transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15)
@given(st.sampled_from([1, 2, 4]), st.sampled_from([0, 1, 2]), st.data())
def test_self_attention2d(dtype, heads, groups, data):
    C = 4
    x = well_spread(image(data.draw, C, side_hi=4))
    if groups:
        assume_spread_rows(x.reshape(x.shape[0] * groups, -1))
    check_module(nn.SelfAttention2d(C, heads, groups), TorchSelfAttention2d(C, heads, groups), x, dtype)


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=6), st.integers(2, 17))
def test_sinusoidal_time_embedding_formula(t, dim):
    """e(t)_i = sin(t ω_i), e(t)_{h+i} = cos(t ω_i), ω_i = 10000^(−i/h): written out in torch."""
    half = dim // 2
    tt = torch.tensor(t, dtype=torch.float64)
    omega = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    expected = torch.cat([torch.sin(tt[:, None] * omega), torch.cos(tt[:, None] * omega)], dim=1)
    if dim % 2:
        expected = torch.cat([expected, torch.zeros(len(t), 1, dtype=torch.float64)], dim=1)
    got = nn.SinusoidalTimeEmbedding(dim, dtype=np.float64)(np.array(t))
    assert got.shape == (len(t), dim)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


# torch names of our token-attention and transformer-block parameters
MHA_NAMES = {"qkv.weight": "in_proj_weight", "qkv.bias": "in_proj_bias", "proj.weight": "out_proj.weight",
             "proj.bias": "out_proj.bias"}
BLOCK_NAMES = {**{f"attn.{k}": f"self_attn.{v}" for k, v in MHA_NAMES.items()},
               **{f"{n}.{p}": f"{n}.{p}" for n in ("norm1", "norm2") for p in ("weight", "bias")},
               **{f"mlp.{i}.{p}": f"linear{j}.{p}" for i, j in ((0, 1), (2, 2)) for p in ("weight", "bias")}}


def check_renamed(ours, theirs, names, x, dtype, seed=0):
    """check_module for a torch twin whose parameters carry other names ({ours: theirs})."""
    ours.to(dtype)
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    theirs.load_state_dict({names[k]: torch.tensor(v) for k, v in ours.state_dict().items()}, strict=True)
    x = np.asarray(x, dtype=dtype)
    X, tX = md.Tensor(x.copy(), requires_grad=True), torch.tensor(x.copy(), requires_grad=True)
    y, ty = ours(X), theirs(tX)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    y.backward(g)
    ty.backward(torch.tensor(g))
    t_params = dict(theirs.named_parameters())
    errors = {"forward": rel_err(y.numpy(), ty.detach().numpy()), "input": rel_err(X.grad, tX.grad.numpy())}
    errors.update({k: rel_err(p.grad, t_params[names[k]].grad.numpy()) for k, p in ours.named_parameters()})
    bad = {k: e for k, e in errors.items() if not e < TOL[dtype]}
    assert not bad, f"{type(ours).__name__} disagrees with torch ({np.dtype(dtype).name}): {bad}"


class TorchSelfAttention(torch.nn.MultiheadAttention):
    def forward(self, x):
        return super().forward(x, x, x, need_weights=False)[0]


def tokens(draw, dim):
    B, N = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    return well_spread(draw(arrays((B, N, dim))))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15)
@given(st.sampled_from([1, 2, 4]), st.data())
def test_multihead_self_attention(dtype, heads, data):
    """MultiheadSelfAttention is torch.nn.MultiheadAttention(batch_first=True) with query = key = value."""
    C = 8
    check_renamed(nn.MultiheadSelfAttention(C, heads), TorchSelfAttention(C, heads, batch_first=True), MHA_NAMES,
                  tokens(data.draw, C), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10)
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.data())
def test_transformer_block(dtype, heads, mlp_ratio, data):
    """TransformerBlock is torch's pre-norm TransformerEncoderLayer with GELU and no dropout."""
    C = 4
    x = tokens(data.draw, C)
    assume_spread_rows(x.reshape(-1, C))
    theirs = torch.nn.TransformerEncoderLayer(C, heads, mlp_ratio * C, dropout=0.0, activation="gelu",
                                              batch_first=True, norm_first=True)
    check_renamed(nn.TransformerBlock(C, heads, mlp_ratio), theirs, BLOCK_NAMES, x, dtype)
