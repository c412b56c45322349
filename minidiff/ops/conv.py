"""2-D convolution, transposed convolution and average pooling, by im2col (docs/layers.md §1-3).

Notation (NCHW): x (B, C, H, W), weight w (O, C, kh, kw), stride s, padding p, dilation d,
output (B, O, Ho, Wo) with Ho = ⌊(H + 2p − d(kh − 1) − 1)/s⌋ + 1 (likewise Wo), K = C·kh·kw.

im2col gathers, for every output position, the K input values its kernel touches:

    cols[(c, i, j), (b, u, v)] = x_pad[b, c, s·u + d·i, s·v + d·j]            (docs/layers.md eq. M1)

read through a strided *view* of the padded input and copied once into a (K, B·Ho·Wo) matrix,
so the convolution is ONE matrix product y = W cols, W = w.reshape(O, K) (eq. M2). Backward:

    ∂L/∂W = G colsᵀ,   ∂L/∂cols = Wᵀ G,   ∂L/∂x = col2im(∂L/∂cols)              (eq. M3-M4)

with G = ∂L/∂y as an (O, B·Ho·Wo) matrix. col2im is im2col's adjoint: it adds each kernel tap's
(B, C, Ho, Wo) slab of ∂L/∂cols into one strided slice of a zero (B, C, H + 2p, W + 2p) array
(kh·kw slice additions, no scatter), then crops the padding.

For stride 1 the input gradient is itself a convolution, of g with the flipped, transposed kernel
(eq. M20). The transposed convolution is the adjoint of the convolution, so its forward IS conv2d's
input gradient (`conv2d_input_grad`, written once, used by both), and its input gradient is conv2d
itself (eq. M5).

Two implementations of the same sums. The channel-major functions above (`im2col`, `col2im`,
`conv2d_from_cols`, `weight_grad`, `conv2d_input_grad_reference`, collected in `conv2d_reference`
and `conv2d_weight_grad_reference`) are the readable definition. The Functions run the channels-last
fast path (eq. M21): x is copied once into a padded (B, Hp, Wp, C) array, and its row matrix

    R[(b, u, v), (i, j, c)] = x_pad[b, c, s·u + d·i, s·v + d·j]        (eq. M21, R = colsᵀ with columns (i, j, c))

is one copy of a strided view whose innermost runs are kw·C contiguous numbers (NCHW's are Wo long),
4-8x faster to gather at the U-Net's sizes. Then y = R W_tᵀ, ∂W_t = Gᵀ R and ∂R = G W_t, with
W_t = w as (O, kh·kw·C) and G = g as (B·Ho·Wo, O): plain BLAS products, no transposed operand
copied. tests/test_layers_conv.py holds the two paths together (float64 and float32, forward and
both gradients). Everything here is array-module code (`xp`), so it runs on NumPy and CuPy.

Two more special cases skip the row matrix. A 1×1 stride-1 padding-0 convolution is y[b] = W x[b] on x read as
(B, C, H·W) (eq. M27, `uses_pointwise`): batched NCHW products with no layout copy for the forward, ∂x and ∂w,
the channels-last products staying their reference. A strided input gradient (the transposed convolution's
forward, the stride-2 downsampling's ∂x) on NumPy with dilation 1 is s² stride-1 convolutions of g, one per output
phase, written interleaved (eq. M28, `ops/conv_subpixel.py`) instead of col2im's kh·kw slice additions;
`conv2d_input_grad_col2im` is its reference.

On NumPy, 3×3 stride-1 padding-1 convolutions with enough channels (`uses_winograd`) run Winograd
F(4×4, 3×3) or F(2×2, 3×3) instead (eq. M30-M31, M23-M24, `ops/conv_winograd.py`, with the bias inside its
transforms, eq. M32): the forward, the stride-1 input gradient (eq. M20),
which is such a convolution of g, and the weight gradient. `conv2d_forward` and `conv2d_weight_grad` choose,
by that one rule; the channels-last products stay the reference, and tests/test_conv_winograd.py holds the
two together.
"""
import numpy as np

from minidiff import checks
from minidiff.autograd import Function
from minidiff.backend import xp_of
from minidiff.ops import conv_subpixel, conv_winograd
from minidiff.ops.attention import one_blas_thread


def pair(v, name, minimum=0, where=""):
    """An int or a pair of ints, each >= minimum, as a pair of ints."""
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return tuple(checks.integer(name, a, minimum=minimum, where=where) for a in v)
    if isinstance(v, (tuple, list)):
        raise TypeError(f"{where}: {name} must be an int or a pair of ints, got {v!r}")
    v = checks.integer(name, v, minimum=minimum, where=where)
    return (v, v)


def _check_inputs(where, x, w, b, in_axis):
    """x (B, C, H, W) and w 4-D floating arrays with x's C on w's axis in_axis, b None or an array."""
    checks.floating("x", x, where)
    checks.floating("w", w, where)
    checks.shape("w", w, (None,) * 4, where)
    checks.shape("x", x, (None, w.shape[in_axis], None, None), where, because=f" (C = w.shape[{in_axis}])")
    if b is not None:
        checks.shape("b", b, (w.shape[1 - in_axis],), where, because=" (one per output channel)")


def conv_output_size(n, k, s, p, d):
    """Ho = ⌊(n + 2p − d(k − 1) − 1)/s⌋ + 1 for one spatial axis."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def pad2d(x, p):
    """x (B, C, H, W) with p = (ph, pw) zeros on both sides of H and W (x itself when p = 0)."""
    ph, pw = p
    if ph == 0 and pw == 0:
        return x
    B, C, H, W = x.shape
    out = xp_of(x).zeros((B, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    out[:, :, ph:ph + H, pw:pw + W] = x
    return out


def windows(x_pad, kernel, stride, dilation, out_hw):
    """Strided view v[b, c, i, j, u, v] = x_pad[b, c, s·u + d·i, s·v + d·j] (no copy), shape (B, C, kh, kw, Ho, Wo)."""
    xp = xp_of(x_pad)
    B, C = x_pad.shape[:2]
    sb, sc, sh, sw = x_pad.strides
    shape = (B, C) + tuple(kernel) + tuple(out_hw)
    strides = (sb, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1])
    return xp.lib.stride_tricks.as_strided(x_pad, shape=shape, strides=strides)


def im2col(x, kernel, stride, padding, dilation, out_hw):
    """The (K, B·Ho·Wo) matrix of eq. M1, rows ordered (c, i, j), columns (b, u, v)."""
    xp = xp_of(x)
    x_pad = xp.ascontiguousarray(pad2d(x, padding))
    view = windows(x_pad, kernel, stride, dilation, out_hw)   # (B, C, kh, kw, Ho, Wo)
    B, C = x.shape[:2]
    cols = xp.empty((C,) + tuple(kernel) + (B,) + tuple(out_hw), dtype=x.dtype)
    cols[...] = view.transpose(1, 2, 3, 0, 4, 5)                   # the one copy
    return cols.reshape(C * kernel[0] * kernel[1], -1)


def col2im(taps, x_shape, stride, padding, dilation):
    """Adjoint of im2col: Σ over taps (i, j) of taps[i, j] added at x_pad[:, :, s·u + d·i, s·v + d·j].

    taps: indexable as taps[i, j] -> (C, B, Ho, Wo), channel-major so that each tap of Wᵀ G is one
    contiguous slab; the sums are made in a (C, B, H + 2p, W + 2p) buffer (the slabs' own order,
    25% faster than adding transposed slabs into (B, C, ...)). Returns (B, C, H, W), padding cropped.
    """
    kh, kw = taps.shape[:2]
    Ho, Wo = taps.shape[-2:]
    B, C, H, W = x_shape
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    xp = xp_of(taps)
    dx = xp.zeros((C, B, H + 2 * ph, W + 2 * pw), dtype=taps.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, dh * i:dh * i + sh * (Ho - 1) + 1:sh, dw * j:dw * j + sw * (Wo - 1) + 1:sw] += taps[i, j]
    return dx[:, :, ph:ph + H, pw:pw + W].transpose(1, 0, 2, 3)


def conv2d_from_cols(cols, w, B, out_hw):
    """y = W cols (eq. M2) as (B, O, Ho, Wo)."""
    O = w.shape[0]
    y = w.reshape(O, -1) @ cols                                   # (O, B·Ho·Wo)
    return xp_of(y).ascontiguousarray(y.reshape((O, B) + tuple(out_hw)).transpose(1, 0, 2, 3))


def as_matrix(g):
    """G: (B, O, Ho, Wo) -> the (O, B·Ho·Wo) matrix."""
    return xp_of(g).ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(g.shape[1], -1)


def weight_grad(G, cols, shape):
    """∂L/∂W = G colsᵀ (eq. M3), computed as (cols Gᵀ)ᵀ: the same product, but OpenBLAS runs the
    (K × N)(N × O) form 10-20x faster than (O × N)(N × K) when N = B·Ho·Wo is the long axis."""
    return (cols @ G.T).T.reshape(shape)


def conv2d_input_grad(g, w, x_shape, stride, padding, dilation):
    """∂L/∂x of y = conv2d(x, w) for upstream g (B, O, Ho, Wo): ∂x[b] = Wᵀ g[b] for a 1×1 kernel (eq. M27),
    eq. M20 when stride is 1, the sub-pixel products of eq. M28 for larger strides on NumPy
    (`conv_subpixel.uses_subpixel`), else ∂R = G W_t and its col2im (eq. M21), the reference of the last.
    `conv2d_input_grad_reference` (eq. M4) is the readable definition, tested against all of them; they
    differ only in the order of the additions. Ho, Wo are read from g, so g may be shorter than the natural
    output (output_padding).
    """
    if uses_pointwise(w, stride, padding) and tuple(g.shape[2:]) == tuple(x_shape[2:]):
        return pointwise_input_grad(g, w)
    if _input_grad_is_a_conv(g, w, x_shape, stride, padding, dilation):
        return conv2d_input_grad_as_conv(g, w, x_shape, padding, dilation)
    if conv_subpixel.uses_subpixel(g, w, stride, dilation):
        return conv_subpixel.conv2d_input_grad_subpixel(g, w, x_shape, stride, padding)
    return conv2d_input_grad_col2im(g, w, x_shape, stride, padding, dilation)


def conv2d_input_grad_col2im(g, w, x_shape, stride, padding, dilation):
    """∂L/∂x = col2im(∂R), ∂R = G W_t (eq. M21, M4 channels last): the reference of eq. M28's sub-pixel products."""
    with one_blas_thread(xp_of(g)):
        d_rows = as_rows(g) @ taps_matrix(w)                              # ∂L/∂R: (B·Ho·Wo, kh·kw·C)
    return col2im_channels_last(d_rows, x_shape, w.shape[2:], stride, padding, dilation, g.shape[2:])


def _input_grad_is_a_conv(g, w, x_shape, stride, padding, dilation):
    """Eq. M20 applies: stride 1, padding p <= d(k − 1), and g of the natural output size (no output_padding)."""
    return (tuple(stride) == (1, 1)
            and all(p <= d * (k - 1) for p, d, k in zip(padding, dilation, w.shape[2:]))
            and all(conv_output_size(n, k, 1, p, d) == m for n, k, p, d, m in
                    zip(x_shape[2:], w.shape[2:], padding, dilation, g.shape[2:])))


def conv2d_input_grad_as_conv(g, w, x_shape, padding, dilation):
    """∂L/∂x of a stride-1 convolution as a convolution of g (eq. M20):

        ∂L/∂x = conv2d(g, w̃, padding = d(k − 1) − p, dilation = d),   w̃[c, o, i, j] = w[o, c, kh − 1 − i, kw − 1 − j]

    i.e. the row matrix of g and one product, instead of ∂R = G W_t and col2im's kh·kw slice additions.
    """
    w_flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)                       # (C, O, kh, kw)
    full = tuple(d * (k - 1) - p for k, p, d in zip(w.shape[2:], padding, dilation))
    return conv2d_forward(g, w_flipped, (1, 1), full, dilation, tuple(x_shape[2:]))


# ---------------------------------------------------------------- which path runs a convolution

WINOGRAD_MIN_CHANNELS = 8
"""Winograd (eq. M23, M30) runs for 3×3 stride-1 padding-1 convolutions with at least this many input channels
(for the input gradient, a convolution of g: the layer's output channels), any number of output channels.
Measured (benchmarks/bench_winograd.py, float32, one thread, docs/benchmarks.md round 4), F(4×4, 3×3)'s time
over the channels-last product's: 0.36-0.61 at every convolution of the two benchmarked U-Nets with C_in >= 8,
0.72-0.74 at the one with C_out = 1; 0.56-0.76 at the C_in = 8 probes; 0.63-0.93 at C_in = 2-4, up to 1.20 in
another run of the same command (no margin); 1.8-2.5 at C_in = 1 (its 36 products then have an inner
dimension of 1)."""


def uses_winograd(x, w, stride, padding, dilation):
    """m of the Winograd F(m×m, 3×3) that runs this convolution, or 0 for the channels-last product (eq. M21).

    Winograd applies to NumPy float32/float64, 3×3, stride 1, padding 1, dilation 1, and was measured faster
    with C_in >= WINOGRAD_MIN_CHANNELS. Of m = 4 (eq. M30) and m = 2 (eq. M23) it takes the one whose padded
    tiles need fewer multiplications per channel pair, (m + 2)²·⌈H/m⌉·⌈W/m⌉, m = 2 on a tie: m = 4 for H, W
    multiples of 4 (all the U-Nets' sizes: 36·(H/4)(W/4) against 16·(H/2)(W/2)) and every other square size
    but 1, 2, 5, 6, where it takes m = 2. Measured (docs/benchmarks.md round 4), F(4×4, 3×3)'s time over
    F(2×2, 3×3)'s: 0.62-0.93 at every convolution of the two U-Nets it applies to (0.72 at C_out = 1),
    0.75-0.84 at 7×7 and 12×12, 0.80-0.97 at 3×3; 1.27-1.95 at 2×2, 5×5 and 6×6, where the rule takes m = 2.
    """
    H, W = x.shape[2:]
    applies = (xp_of(x) is np and x.dtype in (np.float32, np.float64) and tuple(w.shape[2:]) == (3, 3)
               and tuple(stride) == (1, 1) and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1)
               and x.shape[1] >= WINOGRAD_MIN_CHANNELS)
    if not applies:
        return 0
    return 4 if conv_winograd.multiplications(H, W, 4) < conv_winograd.multiplications(H, W, 2) else 2


def conv2d_forward(x, w, stride, padding, dilation, out_hw, b=None):
    """y = conv2d(x, w) + b (b (O,) or None), (B, O, Ho, Wo): by Winograd F(m×m, 3×3) (eq. M23 or M30, the bias
    added in its output transform, eq. M32) where `uses_winograd` gives m, else by the channels-last product
    (eq. M21) and y += b, which is the reference the Winograd path is tested against."""
    m = uses_winograd(x, w, stride, padding, dilation)
    if m:
        with one_blas_thread(np):
            return conv_winograd.winograd_conv3x3(x, w, b, m)
    y = conv2d_channels_last(x, w, stride, padding, dilation, out_hw)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)                                   # y is a fresh array
    return y


def conv2d_weight_grad(g, x, w, stride, padding, dilation, out_hw, bias=False):
    """(∂L/∂w, ∂L/∂bias or None) of y = conv2d(x, w) + bias for upstream g (B, O, Ho, Wo): by eq. M24 or M31
    (Winograd's adjoint, ∂bias summed in its gradient transform, eq. M32) where `uses_winograd` gives m, else
    ∂W_t = Gᵀ R (eq. M21) and ∂bias = Σ_{b,u,v} g, the reference. ∂bias is None unless `bias`."""
    m = uses_winograd(x, w, stride, padding, dilation)
    if m:
        with one_blas_thread(np):
            dw, db = conv_winograd.winograd_weight_grad3x3(g, x, m)
        return dw, (db if bias else None)
    dw = weight_grad_channels_last(as_rows(g), x, w.shape, stride, padding, dilation, out_hw)
    return dw, (g.sum(axis=(0, 2, 3)) if bias else None)


# ---------------------------------------------------------------- 1×1 convolutions: batched products, NCHW (eq. M27)

def uses_pointwise(w, stride, padding):
    """Eq. M27 applies: a 1×1 kernel, stride 1, padding 0 (a dilation then moves nothing)."""
    return tuple(w.shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def pointwise_conv(x, w):
    """y[b] = W x[b] (eq. M27): x (B, C, H, W) read as (B, C, H·W), W = w as (O, C); one batched product,
    no layout copy. Returns (B, O, H, W)."""
    B, C, H, W = x.shape
    with one_blas_thread(xp_of(x)):
        return xp_of(x).matmul(w.reshape(w.shape[0], C), x.reshape(B, C, H * W)).reshape(B, -1, H, W)


def pointwise_input_grad(g, w):
    """∂L/∂x[b] = Wᵀ g[b] (eq. M27) for upstream g (B, O, H, W): (B, C, H, W)."""
    B, O, H, W = g.shape
    with one_blas_thread(xp_of(g)):
        return xp_of(g).matmul(w.reshape(O, -1).T, g.reshape(B, O, H * W)).reshape(B, -1, H, W)


def pointwise_weight_grad(g, x):
    """∂L/∂w = Σ_b g[b] x[b]ᵀ (eq. M27) as (O, C, 1, 1): one batched product and a sum over b (measured as fast as
    Gᵀ R in sum at digits U-Net's 1×1 layers and 1.05-2.9x faster at the 32x32 one's, docs/benchmarks.md round 4)."""
    (B, O, H, W), C = g.shape, x.shape[1]
    with one_blas_thread(xp_of(g)):
        per_sample = xp_of(g).matmul(g.reshape(B, O, H * W), x.reshape(B, C, H * W).transpose(0, 2, 1))
    return per_sample.sum(axis=0).reshape(O, C, 1, 1)


# ---------------------------------------------------------------- the channels-last fast path (eq. M21)

def channels_last_padded(x, padding):
    """x (B, C, H, W) as a (B, H + 2ph, W + 2pw, C) array with zero borders: the path's one layout copy."""
    xp = xp_of(x)
    B, C, H, W = x.shape
    ph, pw = padding
    out = xp.empty((B, H + 2 * ph, W + 2 * pw, C), dtype=x.dtype)
    out[:, ph:ph + H, pw:pw + W, :] = x.transpose(0, 2, 3, 1)
    for border in (out[:, :ph], out[:, ph + H:], out[:, :, :pw], out[:, :, pw + W:]):
        border[...] = 0
    return out


def rows_channels_last(x_cl, kernel, stride, dilation, out_hw):
    """R[(b, u, v), (i, j, c)] = x_cl[b, s·u + d·i, s·v + d·j, c] (eq. M21): (B·Ho·Wo, kh·kw·C), one copy
    of a strided view (none when the view is already that matrix, as for a 1×1 stride-1 kernel)."""
    xp = xp_of(x_cl)
    B, C = x_cl.shape[0], x_cl.shape[3]
    sb, sh, sw, sc = x_cl.strides
    shape = (B,) + tuple(out_hw) + tuple(kernel) + (C,)
    strides = (sb, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc)
    view = xp.lib.stride_tricks.as_strided(x_cl, shape=shape, strides=strides)
    return view.reshape(B * out_hw[0] * out_hw[1], kernel[0] * kernel[1] * C)   # explicit: B = 0 is valid


def taps_matrix(w):
    """W_t: w (O, C, kh, kw) as (O, kh·kw·C), columns ordered (i, j, c) as R's."""
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def as_rows(g):
    """G: (B, O, Ho, Wo) -> the (B·Ho·Wo, O) matrix (one transposing copy)."""
    return g.transpose(0, 2, 3, 1).reshape(-1, g.shape[1])


def from_rows(y, B, out_hw):
    """(B·Ho·Wo, O) -> a contiguous (B, O, Ho, Wo) array."""
    return xp_of(y).ascontiguousarray(y.reshape((B,) + tuple(out_hw) + (y.shape[1],)).transpose(0, 3, 1, 2))


WORKSPACE_BYTES = 2 << 20
"""R is gathered for a slice of the batch at a time, at most this many bytes (at least one sample): a bounded
workspace instead of a kh·kw-times-x-sized array, and the slice stays in cache for its product (measured 0-30%
faster than the whole R at the U-Net's sizes, docs/benchmarks.md). The products run on one BLAS thread
(`one_blas_thread`): a multi-threaded BLAS hands each slice to its threads and waits for them, which on a
shared 2-core machine cost the digits training step 6x its wall time (docs/benchmarks.md)."""


def batch_slices(x_cl, kernel, out_hw):
    """Slices of the batch axis whose R fits in WORKSPACE_BYTES."""
    per_sample = out_hw[0] * out_hw[1] * kernel[0] * kernel[1] * x_cl.shape[3] * x_cl.itemsize
    step = max(1, WORKSPACE_BYTES // max(per_sample, 1))
    return [slice(lo, min(lo + step, x_cl.shape[0])) for lo in range(0, x_cl.shape[0], step)]


def conv2d_channels_last(x, w, stride, padding, dilation, out_hw):
    """y = R W_tᵀ (eq. M21, = eq. M2) as (B, O, Ho, Wo), R gathered slice by slice of the batch."""
    xp = xp_of(x)
    x_cl, kernel, n = channels_last_padded(x, padding), w.shape[2:], out_hw[0] * out_hw[1]
    w_t = taps_matrix(w)
    y = xp.empty((x.shape[0] * n, w.shape[0]), dtype=x.dtype)
    with one_blas_thread(xp):
        for b in batch_slices(x_cl, kernel, out_hw):
            xp.matmul(rows_channels_last(x_cl[b], kernel, stride, dilation, out_hw), w_t.T,
                      out=y[b.start * n:b.stop * n])
    return from_rows(y, x.shape[0], out_hw)


def weight_grad_channels_last(g_rows, x, w_shape, stride, padding, dilation, out_hw):
    """∂L/∂w = Gᵀ R (eq. M21, = eq. M3) summed slice by slice of the batch, back in (O, C, kh, kw) order.

    g_rows: G (B·Ho·Wo, O); x (B, C, H, W) the convolution's input, from which R is gathered.
    """
    O, C, kh, kw = w_shape
    xp = xp_of(x)
    x_cl, n = channels_last_padded(x, padding), out_hw[0] * out_hw[1]
    dw = xp.zeros((O, kh * kw * C), dtype=x.dtype)
    with one_blas_thread(xp):
        for b in batch_slices(x_cl, (kh, kw), out_hw):
            dw += g_rows[b.start * n:b.stop * n].T @ rows_channels_last(x_cl[b], (kh, kw), stride, dilation, out_hw)
    return xp.ascontiguousarray(dw.reshape(O, kh, kw, C).transpose(0, 3, 1, 2))


def col2im_channels_last(d_rows, x_shape, kernel, stride, padding, dilation, out_hw):
    """Adjoint of `rows_channels_last` (eq. M4 in this layout): each tap's (B, Ho, Wo, C) slab of ∂R
    added into one strided slice of a zero (B, H + 2p, W + 2p, C) array, then cropped, as (B, C, H, W)."""
    B, C, H, W = x_shape
    (kh, kw), (Ho, Wo) = kernel, out_hw
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    xp = xp_of(d_rows)
    taps = d_rows.reshape(B, Ho, Wo, kh, kw, C)
    dx = xp.zeros((B, H + 2 * ph, W + 2 * pw, C), dtype=d_rows.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, dh * i:dh * i + sh * (Ho - 1) + 1:sh, dw * j:dw * j + sw * (Wo - 1) + 1:sw] += taps[:, :, :, i, j]
    return xp.ascontiguousarray(dx[:, ph:ph + H, pw:pw + W].transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- the channel-major reference (eq. M1-M4)

def conv2d_reference(x, w, stride, padding, dilation):
    """y = W cols (eq. M1-M2) by the channel-major im2col, without bias."""
    out_hw = tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                   zip(x.shape[2:], w.shape[2:], stride, padding, dilation))
    return conv2d_from_cols(im2col(x, w.shape[2:], stride, padding, dilation, out_hw), w, x.shape[0], out_hw)


def conv2d_weight_grad_reference(g, x, w_shape, stride, padding, dilation):
    """∂L/∂w = G colsᵀ (eq. M3) by the channel-major im2col."""
    return weight_grad(as_matrix(g), im2col(x, w_shape[2:], stride, padding, dilation, g.shape[2:]), w_shape)


def conv2d_input_grad_reference(g, w, x_shape, stride, padding, dilation):
    """∂L/∂x of y = conv2d(x, w) for upstream g (B, O, Ho, Wo): col2im(Wᵀ G) (eq. M4).

    This one function is also the FORWARD of conv_transpose2d (eq. M5). Ho, Wo are read from g,
    so g may be shorter than the natural output (the transposed conv's output_padding case).
    """
    O, C, kh, kw = w.shape
    B = g.shape[0]
    w_tap_major = w.transpose(0, 2, 3, 1).reshape(O, -1)         # W with its K columns ordered (i, j, c)
    d_cols = w_tap_major.T @ as_matrix(g)                         # ∂L/∂cols, rows (i, j, c): (K, B·Ho·Wo)
    return col2im(d_cols.reshape((kh, kw, C, B) + g.shape[2:]), x_shape, stride, padding, dilation)


def _check_conv(name, x, w, b, in_axis):
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"{name}: input must be (B, C, H, W) and weight 4-D, got shapes {tuple(x.shape)} "
                         f"and {tuple(w.shape)}")
    if x.shape[1] != w.shape[in_axis]:
        raise ValueError(f"{name}: input has {x.shape[1]} channels but weight {tuple(w.shape)} expects "
                         f"{w.shape[in_axis]} (axis {in_axis})")
    out_ch = w.shape[1 - in_axis]
    if b is not None and tuple(b.shape) != (out_ch,):
        raise ValueError(f"{name}: bias shape {tuple(b.shape)} must be ({out_ch},)")
    if x.dtype != w.dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} differs from weight dtype {w.dtype}")


def _check_geometry(name, stride, padding, dilation):
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"{name}: need stride >= 1, dilation >= 1, padding >= 0; got stride {stride}, "
                         f"padding {padding}, dilation {dilation}")


class Conv2d(Function):
    """y[b, o] = Σ_{c,i,j} w[o, c, i, j] x_pad[b, c, s·u + d·i, s·v + d·j] + bias[o]  (eq. M1-M2).

    Inputs x (B, C, H, W), w (O, C, kh, kw), optional bias (O,). Computed channels last (eq. M21):
    y = R W_tᵀ, or by Winograd F(m×m, 3×3) (eq. M30, M23) where `uses_winograd`. Saved: x and w, not R: R is
    kh·kw times larger and is gathered again, a slice of the batch at a time, in backward (a fraction of
    one product's time). VJP (eq. M3-M4, M20): ∂w = Gᵀ R (by eq. M31/M24 where Winograd applies),
    ∂x = conv2d_input_grad(g, w) (itself by eq. M30/M23 where it applies, eq. M28 for strides), ∂bias = Σ_{b,u,v} g
    (summed in Winograd's gradient transform, eq. M32). 1×1 kernels with stride 1 and padding 0 run all three as
    batched NCHW products instead (eq. M27).
    """

    def forward(self, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        _check_conv("conv2d", x, w, b, in_axis=1)
        _check_geometry("conv2d", stride, padding, dilation)
        kernel = w.shape[2:]
        out_hw = tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                       zip(x.shape[2:], kernel, stride, padding, dilation))
        if min(out_hw) < 1:
            raise ValueError(f"conv2d: kernel {tuple(kernel)} (dilation {dilation}) does not fit the padded "
                             f"input {tuple(x.shape)} with padding {padding}")
        self.geometry, self.x, self.w, self.out_hw = (stride, padding, dilation), x, w, out_hw
        self.pointwise = uses_pointwise(w, stride, padding)
        if not self.pointwise:
            return conv2d_forward(x, w, stride, padding, dilation, out_hw, b)
        y = pointwise_conv(x, w)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)                               # y is a fresh array
        return y

    def backward(self, g):
        dx = conv2d_input_grad(g, self.w, self.x.shape, *self.geometry) if self.needs_grad[0] else None
        need_b = len(self.needs_grad) > 2 and self.needs_grad[2]
        dw, db = self._weight_grad(g, need_b) if self.needs_grad[1] else (None, None)
        if need_b and db is None:
            db = g.sum(axis=(0, 2, 3))
        return dx, dw, db

    def _weight_grad(self, g, bias):
        """(∂w, ∂bias or None): eq. M27 for 1×1 kernels (∂bias left to backward), else `conv2d_weight_grad`
        (which sums ∂bias inside Winograd's gradient transform where that runs, eq. M32)."""
        if self.pointwise:
            return pointwise_weight_grad(g, self.x), None
        return conv2d_weight_grad(g, self.x, self.w, *self.geometry, self.out_hw, bias=bias)


class ConvTranspose2d(Function):
    """y = conv2d_input_grad(x, w) + bias: the adjoint of conv2d applied to x (eq. M5).

    Inputs x (B, Cin, H, W), w (Cin, Cout, kh, kw) (PyTorch's layout), optional bias (Cout,).
    Output (B, Cout, Hout, Wout), Hout = (H − 1)s − 2p + d(kh − 1) + output_padding + 1.
    As conv2d with weight w maps (B, Cout, Hout, Wout) -> (B, Cin, H, W), this forward is that
    conv's input gradient (for strides > 1 by the sub-pixel products of eq. M28), and the VJP is conv2d again:
    ∂x = conv2d(g, w) (cropped to H, W),
    ∂w = Xᵀ R(g) with X the (B·H·W, Cin) rows of x and R(g) g's row matrix (eq. M21), ∂bias = Σ_{b,u,v} g.
    """

    def forward(self, x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), dilation=(1, 1)):
        _check_conv("conv_transpose2d", x, w, b, in_axis=0)
        _check_geometry("conv_transpose2d", stride, padding, dilation)
        if any(op < 0 or (op >= s and op >= d) for op, s, d in zip(output_padding, stride, dilation)):
            raise ValueError(f"conv_transpose2d: output_padding {output_padding} must be smaller than stride "
                             f"{stride} or dilation {dilation}")
        kernel = w.shape[2:]
        out_hw = tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, d, op in
                       zip(x.shape[2:], kernel, stride, padding, dilation, output_padding))
        if min(out_hw) < 1:
            raise ValueError(f"conv_transpose2d: output size {out_hw} is not positive for input {tuple(x.shape)}")
        self.geometry, self.x, self.w = (stride, padding, dilation), x, w
        y = conv2d_input_grad(x, w, (x.shape[0], w.shape[1]) + out_hw, stride, padding, dilation)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y

    def backward(self, g):
        x, w = self.x, self.w
        dx = conv2d_channels_last(g, w, *self.geometry, out_hw=x.shape[2:]) if self.needs_grad[0] else None
        dw = weight_grad_channels_last(as_rows(x), g, w.shape, *self.geometry,
                                       out_hw=x.shape[2:]) if self.needs_grad[1] else None
        db = g.sum(axis=(0, 2, 3)) if len(self.needs_grad) > 2 and self.needs_grad[2] else None
        return dx, dw, db


class AvgPool2d(Function):
    """y[b, c, u, v] = (1/(kh·kw)) Σ_{i,j} x_pad[b, c, s·u + i, s·v + j] (zero padding counted, as PyTorch).

    VJP: col2im of g/(kh·kw) broadcast to every tap.
    """

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0)):
        if x.ndim != 4:
            raise ValueError(f"avg_pool2d: input must be (B, C, H, W), got shape {tuple(x.shape)}")
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise ValueError(f"avg_pool2d: padding {padding} must be at most half the kernel {kernel}")
        _check_geometry("avg_pool2d", stride, padding, (1, 1))
        out_hw = tuple(conv_output_size(n, k, s, p, 1) for n, k, s, p in zip(x.shape[2:], kernel, stride, padding))
        if min(out_hw) < 1:
            raise ValueError(f"avg_pool2d: kernel {kernel} does not fit input {tuple(x.shape)}")
        self.x_shape, self.kernel, self.stride, self.padding = x.shape, kernel, stride, padding
        view = windows(pad2d(x, padding), kernel, stride, (1, 1), out_hw)
        return view.mean(axis=(2, 3))

    def backward(self, g):
        kh, kw = self.kernel
        share = (g / (kh * kw)).transpose(1, 0, 2, 3)                # (C, B, Ho, Wo), as col2im takes it
        taps = xp_of(g).broadcast_to(share, (kh, kw) + share.shape)
        return (col2im(taps, self.x_shape, self.stride, self.padding, (1, 1)),)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1):
    _check_inputs("conv2d", x, w, b, 1)
    geometry = dict(stride=pair(stride, "stride", 1, "conv2d"), padding=pair(padding, "padding", 0, "conv2d"),
                    dilation=pair(dilation, "dilation", 1, "conv2d"))
    return Conv2d.apply(x, w, **geometry) if b is None else Conv2d.apply(x, w, b, **geometry)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
    where = "conv_transpose2d"
    _check_inputs(where, x, w, b, 0)
    geometry = dict(stride=pair(stride, "stride", 1, where), padding=pair(padding, "padding", 0, where),
                    output_padding=pair(output_padding, "output_padding", 0, where),
                    dilation=pair(dilation, "dilation", 1, where))
    return ConvTranspose2d.apply(x, w, **geometry) if b is None else ConvTranspose2d.apply(x, w, b, **geometry)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    checks.floating("x", x, "avg_pool2d")
    checks.shape("x", x, (None,) * 4, "avg_pool2d", because=" (B, C, H, W)")
    kernel = pair(kernel_size, "kernel_size", 1, "avg_pool2d")
    stride = kernel if stride is None else pair(stride, "stride", 1, "avg_pool2d")
    padding = pair(padding, "padding", 0, "avg_pool2d")
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"avg_pool2d: padding {padding} must be at most half the kernel_size {kernel}")
    if any(k > n + 2 * p for k, n, p in zip(kernel, x.shape[2:], padding)):
        raise ValueError(f"avg_pool2d: kernel_size {kernel} does not fit x of shape {tuple(x.shape)} padded by "
                         f"{padding}")
    return AvgPool2d.apply(x, kernel=kernel, stride=stride, padding=padding)
