"""Self-attention over feature-map positions and the sinusoidal timestep embedding (docs/layers.md §5, §7)."""
import math

import numpy as np

from minidiff import functional as F
from minidiff import ops
from minidiff.autograd import Tensor, get_default_dtype, unwrap
from minidiff.backend import xp, xp_of
from minidiff.nn.layers import GroupNorm, Linear
from minidiff.nn.module import Module


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
        if channels % num_heads:
            raise ValueError(f"SelfAttention2d: {channels} channels do not split into {num_heads} heads")
        self.channels, self.num_heads = channels, num_heads
        self.norm = GroupNorm(num_groups, channels, eps, dtype=dtype) if num_groups else None
        self.qkv = Linear(channels, 3 * channels, dtype=dtype)
        self.proj = Linear(channels, channels, dtype=dtype)

    def forward(self, x):
        if len(x.shape) != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SelfAttention2d({self.channels}): input shape {tuple(x.shape)} must be "
                             f"(B, {self.channels}, H, W)")
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        h = x if self.norm is None else self.norm(x)
        tokens = ops.transpose(ops.reshape(h, (B, C, H * W)), (0, 2, 1))               # (B, N, C)
        qkv = ops.reshape(self.qkv(tokens), (B, H * W, 3, heads, d))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))                                        # (3, B, heads, N, d)
        q, k, v = (ops.getitem(qkv, i) for i in range(3))
        o = F.scaled_dot_product_attention(q, k, v)                                      # (B, heads, N, d)
        o = ops.reshape(ops.transpose(o, (0, 2, 1, 3)), (B, H * W, C))
        o = ops.transpose(self.proj(o), (0, 2, 1))                                       # (B, C, N)
        return ops.add(x, ops.reshape(o, (B, C, H, W)))

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
    a = xp_of(t).asarray(t, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"sinusoidal_embedding: timesteps must be 1-D (B,), got shape {tuple(a.shape)}")
    if embedding_dim < 2:
        raise ValueError(f"sinusoidal_embedding: embedding_dim must be >= 2, got {embedding_dim}")
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
        self.embedding_dim, self.max_period, self.dtype = embedding_dim, max_period, dtype

    def forward(self, t):
        t = unwrap(t)
        t = t if hasattr(t, "dtype") else xp().asarray(t)
        return Tensor(sinusoidal_embedding(t, self.embedding_dim, self.max_period, self.dtype))

    def extra_repr(self):
        return f"{self.embedding_dim}"
