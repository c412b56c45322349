"""Self-attention over tokens and feature-map positions, the pre-norm transformer block, and the sinusoidal
embedding (docs/layers.md §5, §7; the transformer block: docs/mae.md §2)."""
import math

import numpy as np

from minidiff import functional as F
from minidiff import checks, ops
from minidiff.autograd import Tensor, get_default_dtype, unwrap
from minidiff.backend import xp, xp_of
from minidiff.nn.layers import GELU, GroupNorm, LayerNorm, Linear
from minidiff.nn.module import Module, Sequential


def multihead_self_attention(tokens, qkv, proj, num_heads):
    """MHA(h) = concat_heads(softmax(Q Kᵀ/√d) V) W_projᵀ + b_proj, [Q, K, V] = h W_qkvᵀ + b_qkv (eq. M8 per head).

    tokens (B, N, C); qkv: Linear(C, 3C); proj: Linear(C, C); each of the `num_heads` heads gets
    d = C/num_heads channels of Q, K and V. Returns (B, N, C).
    """
    B, N, C = tokens.shape
    heads, d = num_heads, C // num_heads
    q_k_v = ops.transpose(ops.reshape(qkv(tokens), (B, N, 3, heads, d)), (2, 0, 3, 1, 4))   # (3, B, heads, N, d)
    q, k, v = (ops.getitem(q_k_v, i) for i in range(3))
    o = F.scaled_dot_product_attention(q, k, v)                                              # (B, heads, N, d)
    return proj(ops.reshape(ops.transpose(o, (0, 2, 1, 3)), (B, N, C)))


class MultiheadSelfAttention(Module):
    """y = MHA(x) over the N tokens of x (B, N, C) (multihead_self_attention); no mask, no dropout.

    Parameters qkv.{weight (3C, C), bias (3C,)} and proj.{weight (C, C), bias (C,)}: torch.nn.MultiheadAttention's
    in_proj_{weight,bias} and out_proj.{weight,bias} under other names (the same Q, K, V row order).
    """

    def __init__(self, embed_dim, num_heads=1, dtype=None):
        super().__init__()
        embed_dim = checks.integer("embed_dim", embed_dim, minimum=1, where="MultiheadSelfAttention")
        num_heads = checks.integer("num_heads", num_heads, minimum=1, where="MultiheadSelfAttention")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadSelfAttention: embed_dim {embed_dim} does not split into {num_heads} heads "
                             "(num_heads)")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.qkv = Linear(embed_dim, 3 * embed_dim, dtype=dtype)
        self.proj = Linear(embed_dim, embed_dim, dtype=dtype)

    def forward(self, x):
        checks.array_like("x", x, "MultiheadSelfAttention")
        if len(x.shape) != 3 or x.shape[2] != self.embed_dim:
            raise ValueError(f"MultiheadSelfAttention({self.embed_dim}): x of shape {tuple(x.shape)} must be "
                             f"(B, N, {self.embed_dim})")
        return multihead_self_attention(x, self.qkv, self.proj, self.num_heads)

    def extra_repr(self):
        return f"{self.embed_dim}, num_heads={self.num_heads}"


class TransformerBlock(Module):
    """The pre-norm transformer block on tokens x (B, N, C) (docs/mae.md eq. R3):

        h = x + MHA(LN₁(x)),   y = h + W₂ GELU(W₁ LN₂(h) + b₁) + b₂,   W₁ (mlp_ratio·C, C)

    torch.nn.TransformerEncoderLayer(C, heads, mlp_ratio·C, dropout=0, activation="gelu", norm_first=True,
    batch_first=True) computes the same function. Parameters: norm1, attn (qkv, proj), norm2, mlp.0, mlp.2.
    """

    def __init__(self, dim, num_heads=1, mlp_ratio=4, eps=1e-5, dtype=None):
        super().__init__()
        checks.integer("dim", dim, minimum=1, where="TransformerBlock")
        mlp_ratio = checks.integer("mlp_ratio", mlp_ratio, minimum=1, where="TransformerBlock")
        self.norm1 = LayerNorm(dim, eps, dtype=dtype)
        self.attn = MultiheadSelfAttention(dim, num_heads, dtype=dtype)
        self.norm2 = LayerNorm(dim, eps, dtype=dtype)
        self.mlp = Sequential(Linear(dim, mlp_ratio * dim, dtype=dtype), GELU(),
                              Linear(mlp_ratio * dim, dim, dtype=dtype))

    def forward(self, x):
        h = ops.add(x, self.attn(self.norm1(x)))
        return ops.add(h, self.mlp(self.norm2(h)))


class SelfAttention2d(Module):
    """The DDPM U-Net attention block: y = x + Proj(MHA(Norm(x))) over the N = H·W positions.

    x (B, C, H, W) is read as N tokens of C channels. With h = GroupNorm(x) (skipped when
    num_groups=0) as (B, N, C), [Q, K, V] = h W_qkvᵀ + b_qkv is split into `num_heads` heads of
    d = C/num_heads channels, each head attends with softmax(Q Kᵀ/√d) V (docs/layers.md eq. M8), the heads are
    concatenated and projected back, O W_projᵀ + b_proj, and added to x. Parameters:
    norm.{weight,bias} (C,), qkv.{weight (3C, C), bias (3C,)}, proj.{weight (C, C), bias (C,)}.
    """

    def __init__(self, channels, num_heads=1, num_groups=32, eps=1e-5, dtype=None):
        super().__init__()
        channels = checks.integer("channels", channels, minimum=1, where="SelfAttention2d")
        num_heads = checks.integer("num_heads", num_heads, minimum=1, where="SelfAttention2d")
        num_groups = checks.integer("num_groups", num_groups, minimum=0, where="SelfAttention2d")
        if channels % num_heads:
            raise ValueError(f"SelfAttention2d: {channels} channels do not split into {num_heads} heads (num_heads)")
        self.channels, self.num_heads = channels, num_heads
        self.norm = GroupNorm(num_groups, channels, eps, dtype=dtype) if num_groups else None
        self.qkv = Linear(channels, 3 * channels, dtype=dtype)
        self.proj = Linear(channels, channels, dtype=dtype)

    def forward(self, x):
        checks.array_like("x", x, "SelfAttention2d")
        if len(x.shape) != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SelfAttention2d({self.channels}): x of shape {tuple(x.shape)} must be "
                             f"(B, {self.channels}, H, W)")
        B, C, H, W = x.shape
        h = x if self.norm is None else self.norm(x)
        tokens = ops.transpose(ops.reshape(h, (B, C, H * W)), (0, 2, 1))               # (B, N, C)
        o = multihead_self_attention(tokens, self.qkv, self.proj, self.num_heads)       # (B, N, C)
        return ops.add(x, ops.reshape(ops.transpose(o, (0, 2, 1)), (B, C, H, W)))

    def extra_repr(self):
        return f"{self.channels}, num_heads={self.num_heads}"


def sinusoidal_embedding(t, embedding_dim, max_period=10000.0, dtype=None, freq_shift=0, flip_sin_to_cos=False):
    """e(t) = [sin(t ω_0), ..., sin(t ω_{h−1}), cos(t ω_0), ..., cos(t ω_{h−1})], ω_i = P^(−i/(h − s)) (eq. M13).

    h = ⌊embedding_dim/2⌋, s = freq_shift: with s = 0 the transformer positional encoding (frequencies
    P^(−2i/embedding_dim)) with its sin channels first; flip_sin_to_cos puts the cos channels first.
    (s, flip) = (1, False) is the original DDPM code's embedding and (0, True) diffusers' default
    (its `freq_shift`, `flip_sin_to_cos`). An odd embedding_dim gets a final zero column. t: (B,)
    timesteps (ints or floats). Returns (B, embedding_dim) in `dtype` (default: minidiff's default
    float dtype), computed in float64.
    """
    where = "sinusoidal_embedding"
    embedding_dim = checks.integer("embedding_dim", embedding_dim, minimum=2, where=where)
    max_period = checks.real("max_period", max_period, above=0.0, where=where)
    dtype = None if dtype is None else checks.dtype("dtype", dtype, "f", where)
    freq_shift = checks.integer("freq_shift", freq_shift, minimum=0, where=where)
    flip_sin_to_cos = checks.boolean("flip_sin_to_cos", flip_sin_to_cos, where)
    checks.shape("t", t, (None,), where, because=" (B,) timesteps")
    if np.dtype(t.dtype).kind not in "iuf":
        raise TypeError(f"{where}: t must hold real timesteps, got dtype {t.dtype}")
    checks.finite("t", t, where)
    a = xp_of(t).asarray(t, dtype=np.float64)
    half = embedding_dim // 2
    if half - freq_shift <= 0:
        raise ValueError(f"sinusoidal_embedding: freq_shift must be < embedding_dim // 2 = {half}, got {freq_shift}")
    omega = xp_of(a).exp(-math.log(max_period) * xp_of(a).arange(half) / (half - freq_shift))
    args = a[:, None] * omega[None, :]
    parts = [xp_of(a).sin(args), xp_of(a).cos(args)]
    if flip_sin_to_cos:
        parts.reverse()
    if embedding_dim % 2:
        parts.append(xp_of(a).zeros((len(a), 1)))
    return xp_of(a).concatenate(parts, axis=1).astype(get_default_dtype() if dtype is None else dtype)


class SinusoidalTimeEmbedding(Module):
    """t (B,) -> the constant (B, embedding_dim) sinusoidal embedding of the timesteps (no parameters)."""

    def __init__(self, embedding_dim, max_period=10000.0, dtype=None):
        super().__init__()
        embedding_dim = checks.integer("embedding_dim", embedding_dim, minimum=2, where="SinusoidalTimeEmbedding")
        max_period = checks.real("max_period", max_period, above=0.0, where="SinusoidalTimeEmbedding")
        dtype = None if dtype is None else checks.dtype("dtype", dtype, "f", "SinusoidalTimeEmbedding")
        self.embedding_dim, self.max_period, self.dtype = embedding_dim, max_period, dtype

    def forward(self, t):
        t = unwrap(t)
        t = t if hasattr(t, "dtype") else xp().asarray(t)
        return Tensor(sinusoidal_embedding(t, self.embedding_dim, self.max_period, self.dtype))

    def extra_repr(self):
        return f"{self.embedding_dim}"
