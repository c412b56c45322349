"""User-facing layer functions, named and laid out as torch.nn.functional (docs/layers.md).

Weight layouts as PyTorch's: linear (out, in); conv2d (O, C, kh, kw); conv_transpose2d
(Cin, Cout, kh, kw). Every function takes Tensors (recorded for backward) or plain arrays
(computed directly), like the primitive ops. The heavy layers are single Functions with a
closed-form backward in minidiff.ops.{conv,norm,attention}; the rest are compositions of primitives.
"""
import numpy as np

from minidiff import checks, ops
from minidiff.autograd import unwrap
from minidiff.backend import backend_name_of, default_rng, xp_of
from minidiff.ops.attention import scaled_dot_product_attention
from minidiff.ops.conv import avg_pool2d, conv2d, conv_transpose2d
from minidiff.ops.norm import group_norm, group_norm_silu, layer_norm

__all__ = ["linear", "conv2d", "conv_transpose2d", "group_norm", "group_norm_silu", "layer_norm",
           "scaled_dot_product_attention", "softmax", "log_softmax", "dropout", "interpolate", "avg_pool2d",
           "embedding", "silu", "gelu", "relu", "sigmoid", "tanh"]

silu, gelu, relu, sigmoid, tanh = ops.silu, ops.gelu, ops.relu, ops.sigmoid, ops.tanh


def linear(x, weight, bias=None):
    """y = x Wᵀ + b for x (..., in), W (out, in), b (out,). Autograd of matmul/add gives ∂x = g W, ∂W = gᵀ x."""
    checks.array_like("x", x, "linear")
    if len(x.shape) < 1:
        raise ValueError("linear: x must have shape (..., in), got a 0-d array")
    checks.shape("weight", weight, (None, x.shape[-1]), "linear",
                 because=f" = (out, in) for x of shape {tuple(x.shape)}")
    if bias is not None:
        checks.shape("bias", bias, (weight.shape[0],), "linear", because=" = (out,)")
    lead = tuple(x.shape[:-1])
    x2 = x if len(lead) == 1 else ops.reshape(x, (-1, x.shape[-1]))   # one 2-D product, not a batch of them
    y = ops.matmul(x2, ops.transpose(weight))
    y = y if bias is None else ops.add(y, bias)
    return y if len(lead) == 1 else ops.reshape(y, lead + (weight.shape[0],))


def softmax(x, dim=-1):
    """softmax along dim: y_i = e^{x_i} / Σ_j e^{x_j} (VJP y ⊙ (g − ⟨g, y⟩), docs/autograd.md eq. A6)."""
    return ops.softmax(x, _dim(x, dim, "softmax"))


def log_softmax(x, dim=-1):
    return ops.log_softmax(x, _dim(x, dim, "log_softmax"))


def _dim(x, dim, where):
    """dim as an int in [-n, n) for x of n >= 1 dimensions (a 0-d x takes 0 or -1, as PyTorch)."""
    dim = checks.integer("dim", dim, where=where)
    n = max(len(getattr(x, "shape", ())), 1)
    if not -n <= dim < n:
        raise ValueError(f"{where}: dim must lie in [{-n}, {n}) for x of shape {tuple(getattr(x, 'shape', ()))}, "
                         f"got {dim}")
    return dim


def dropout(x, p=0.5, training=True, rng=None):
    """Inverted dropout: y = x ⊙ m / (1 − p), m_i ~ Bernoulli(1 − p); the identity when not training.

    rng: a generator with .random(size) on x's backend (default: minidiff.backend.default_rng()).
    """
    p = checks.real("p", p, minimum=0.0, maximum=1.0, where="dropout")
    checks.boolean("training", training, "dropout")
    checks.floating("x", x, "dropout")
    if rng is not None:
        checks.generator("rng", rng, "dropout")
    if not training or p == 0.0:
        return x
    data = unwrap(x)
    if p == 1.0:
        return ops.mul(x, xp_of(data).zeros((), dtype=data.dtype))
    rng = default_rng(backend=backend_name_of(data)) if rng is None else rng
    keep = rng.random(data.shape) >= p
    scale = data.dtype.type(1.0 / (1.0 - p))           # 1/(1 − p) rounded once to x's dtype: no float64 mask
    return ops.mul(x, keep.astype(data.dtype) * scale)


def _nearest_index(n_in, n_out, scale_factor):
    """PyTorch's nearest source index src = min(⌊dst · s⌋, n_in − 1), s = 1/scale_factor or n_in/n_out."""
    s = 1.0 / scale_factor if scale_factor is not None else n_in / n_out
    return np.minimum(np.floor(np.arange(n_out) * s).astype(np.int64), n_in - 1)


def _select_matrix(idx, n_in, like):
    """R (n_out, n_in) with R[o, idx[o]] = 1, so R x picks rows idx of x."""
    xp = xp_of(like)
    r = np.zeros((len(idx), n_in))
    r[np.arange(len(idx)), idx] = 1.0
    return xp.asarray(r, dtype=like.dtype)


def resize_arguments(size, scale_factor, mode, where):
    """(size, scale_factor) with exactly one given: size ints >= 1, scale_factor numbers > 0 (each or a pair)."""
    checks.one_of("mode", mode, ("nearest",), where)
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{where}: give exactly one of size and scale_factor, got size={size!r}, "
                         f"scale_factor={scale_factor!r}")
    if size is not None:
        return tuple(checks.integer("size", n, minimum=1, where=where)
                     for n in (size if isinstance(size, (tuple, list)) and len(size) == 2 else (size, size))), None
    if isinstance(scale_factor, (tuple, list)) and len(scale_factor) == 2:
        return None, tuple(checks.real("scale_factor", f, above=0.0, where=where) for f in scale_factor)
    return None, checks.real("scale_factor", scale_factor, above=0.0, where=where)


def interpolate(x, size=None, scale_factor=None, mode="nearest"):
    """Nearest-neighbour resize of x (B, C, H, W): y[b, c, u, v] = x[b, c, src_h(u), src_w(v)].

    An integer scale factor f repeats each pixel f×f times: a reshape to (B, C, H, 1, W, 1),
    a broadcast and a reshape, whose VJP (autograd) sums g over each f×f block. Any other size
    selects rows and columns by one-hot matrices, y = R_h x R_wᵀ, whose VJP is R_hᵀ g R_w.
    """
    checks.floating("x", x, "interpolate")
    checks.shape("x", x, (None,) * 4, "interpolate", because=" (B, C, H, W)")
    size, scale_factor = resize_arguments(size, scale_factor, mode, "interpolate")
    B, C, H, W = x.shape
    factors = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
    if factors is not None and all(float(f).is_integer() and f >= 1 for f in factors):
        fh, fw = int(factors[0]), int(factors[1])
        blocks = ops.broadcast_to(ops.reshape(x, (B, C, H, 1, W, 1)), (B, C, H, fh, W, fw))
        return ops.reshape(blocks, (B, C, H * fh, W * fw))
    if factors is not None:
        size = (int(np.floor(H * factors[0])), int(np.floor(W * factors[1])))
    size = (size, size) if isinstance(size, int) else tuple(size)
    if min(size) < 1:
        raise ValueError(f"interpolate: scale_factor {scale_factor} makes the output size {size} zero")
    fh, fw = (None, None) if factors is None else factors
    r_h = _select_matrix(_nearest_index(H, size[0], fh), H, unwrap(x))
    r_w = _select_matrix(_nearest_index(W, size[1], fw), W, unwrap(x))
    return ops.matmul(ops.matmul(r_h, x), ops.transpose(r_w))


def embedding(indices, weight):
    """y[...] = W[indices[...]]: rows of W (num_embeddings, dim) picked by integer indices.

    VJP: each picked row's gradient is added into ∂L/∂W (repeated indices accumulate), via getitem.
    """
    checks.floating("weight", weight, "embedding")
    checks.shape("weight", weight, (None, None), "embedding", because=" (num_embeddings, dim)")
    checks.array_like("indices", indices, "embedding")
    idx = xp_of(unwrap(weight)).asarray(unwrap(indices))
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    n = weight.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"embedding: indices must lie in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]")
    return ops.getitem(weight, idx)
