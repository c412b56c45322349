"""The transposed convolution (conv2d's input gradient) by sub-pixel products: no col2im (docs/layers.md eq. M28).

conv2d_input_grad(g, w) with stride s, padding p, dilation 1, for g (B, O, Ho, Wo) and w (O, C, kh, kw), is
the transposed convolution y = Cᵀ g (eq. M5), y (B, C, H, W):

    y[b, c, h] = Σ_{o, u, i : s·u + i − p = h} g[b, o, u] w[o, c, i]                 (one spatial axis written)

Split the outputs by their phase modulo s, h = s·m + a (a = 0 .. s − 1). Only the taps i ≡ a + p (mod s)
reach phase a: i = r_a + s·t with r_a = (a + p) mod s, t = 0 .. T_a − 1, T_a = ⌈(k − r_a)/s⌉, and then
u = m + q_a − t with q_a = ⌊(a + p)/s⌋. So each phase is a stride-1 correlation of g with a T_a-tap
sub-kernel, taken in reverse (t̃ = T_a − 1 − t):

    y[b, c, s·m + a] = Σ_{o, t̃} g[b, o, m + q_a − T_a + 1 + t̃] · w[o, c, r_a + s(T_a − 1 − t̃)]   (eq. M28)

In two dimensions that is s² stride-1 convolutions of g, one per output phase (a, e), with T_a × T_e
sub-kernels: for the U-Net's upsampling (kernel 4, stride 2, padding 1) four 2×2 convolutions. Each is
one product in the channels-last layout of eq. M21, R_ae (B·M_a·N_e, T_a·T_e·O) times W_ae (T_a·T_e·O, C),
and its rows are the outputs of one phase, written into their interleaved places of y (NCHW) by a Numba
kernel. The multiply-adds are those of ∂R = G W_t (eq. M21): Σ_ae T_a·T_e = kh·kw taps per output
position of g; what goes away is col2im's kh·kw strided slice additions into a (B, H + 2p, W + 2p, C)
buffer and its transposing copy to NCHW (together 30% of the forward at the digits upsampling,
docs/benchmarks.md round 4). R_ae is gathered a slice of the batch at a time (`conv.batch_slices`).

`conv.conv2d_input_grad` chooses this path where `uses_subpixel` holds and keeps the channels-last col2im
(eq. M21, M4) as the reference; tests/test_layers_conv.py holds the two together. Runs unchanged (slowly)
under NUMBA_DISABLE_JIT=1.
"""
import numpy as np
from numba import njit

from minidiff.ops import conv                 # for batch_slices; conv imports this module (resolved at call time)
from minidiff.ops.attention import one_blas_thread


def uses_subpixel(g, w, stride, dilation):
    """Eq. M28 runs: NumPy float32/float64, stride > 1 on some axis, dilation 1 (stride 1 takes eq. M20)."""
    return (isinstance(g, np.ndarray) and g.dtype in (np.float32, np.float64)
            and tuple(dilation) == (1, 1) and max(stride) > 1)


def phase_taps(a, k, s, p):
    """(r_a, q_a, T_a) of eq. M28 for output phase a on one axis: first tap, offset into g, number of taps."""
    r = (a + p) % s
    return r, (a + p) // s, max(0, -(-(k - r) // s))


def phase_count(a, n, s):
    """M_a: how many of the n outputs h < n have h ≡ a (mod s)."""
    return max(0, -(-(n - a) // s))


def phases(n_out, k, s, p):
    """Per phase a of one axis: (a, r_a, lo_a, T_a, M_a), lo_a = q_a − T_a + 1 the first g index the phase reads."""
    out = []
    for a in range(s):
        r, q, taps = phase_taps(a, k, s, p)
        out.append((a, r, q - taps + 1, taps, phase_count(a, n_out, s)))
    return out


def phase_weights(w, r, stride):
    """W_ae of eq. M28 for first taps r = (r_a, r_e): (T_a·T_e·O, C), rows ordered (t̃_h, t̃_w, o) as R_ae's columns."""
    sub = w[:, :, r[0]::stride[0], r[1]::stride[1]][:, :, ::-1, ::-1]     # (O, C, T_a, T_e), taps reversed
    return np.ascontiguousarray(sub.transpose(2, 3, 0, 1).reshape(-1, w.shape[1]))


def padded_channels_last(g, pad_h, pad_w):
    """g (B, O, Ho, Wo) as (B, Ho + 2·pad_h, Wo + 2·pad_w, O) with zero borders."""
    B, O, Ho, Wo = g.shape
    out = np.zeros((B, Ho + 2 * pad_h, Wo + 2 * pad_w, O), dtype=g.dtype)
    out[:, pad_h:pad_h + Ho, pad_w:pad_w + Wo, :] = g.transpose(0, 2, 3, 1)
    return out


def phase_rows(g_cl, start_h, start_w, taps, count):
    """R_ae[(b, m, n), (t̃_h, t̃_w, o)] = g_cl[b, start_h + m + t̃_h, start_w + n + t̃_w, o]: (B·M_a·N_e, T_a·T_e·O)."""
    B, O = g_cl.shape[0], g_cl.shape[3]
    sb, sh, sw, so = g_cl.strides
    base = g_cl[:, start_h:, start_w:]
    view = np.lib.stride_tricks.as_strided(base, shape=(B,) + tuple(count) + tuple(taps) + (O,),
                                           strides=(sb, sh, sw, sh, sw, so))
    return view.reshape(B * count[0] * count[1], taps[0] * taps[1] * O)


@njit(cache=True)
def _scatter_phase(rows, y, a, e, sh, sw):
    """y[b, c, sh·m + a, sw·n + e] = rows[b, m, n, c] for rows (B, M, N, C) and y (B, C, H, W)."""
    B, M, N, C = rows.shape
    for b in range(B):
        for c in range(C):
            for m in range(M):
                for n in range(N):
                    y[b, c, sh * m + a, sw * n + e] = rows[b, m, n, c]


def conv2d_input_grad_subpixel(g, w, x_shape, stride, padding):
    """∂L/∂x of y = conv2d(x, w) (stride s, padding p, dilation 1) for upstream g, by eq. M28: (B, C, H, W).

    Equal to `conv.conv2d_input_grad`'s col2im form (eq. M4, M21) up to the order of the additions.
    Ho, Wo are read from g, so g may be shorter than the natural output (output_padding).
    """
    B, C, H, W = x_shape
    kh, kw = w.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    rows_h, rows_w = phases(H, kh, sh, ph), phases(W, kw, sw, pw)
    # pad g so that every phase's window fits: lo_a >= −pad, lo_a + M_a − 1 + T_a − 1 <= Ho − 1 + pad
    pad_h = max([0] + [max(-lo, lo + m + t - 1 - g.shape[2]) for _, _, lo, t, m in rows_h if t and m])
    pad_w = max([0] + [max(-lo, lo + m + t - 1 - g.shape[3]) for _, _, lo, t, m in rows_w if t and m])
    g_cl = padded_channels_last(g, pad_h, pad_w)
    y = np.empty((B, C, H, W), dtype=g.dtype)
    weights = {(a, e): phase_weights(w, (r_a, r_e), stride)
               for a, r_a, _, t_a, _ in rows_h for e, r_e, _, t_e, _ in rows_w if t_a and t_e}
    biggest = (max(m for *_, m in rows_h), max(n for *_, n in rows_w))
    with one_blas_thread(np):
        for batch in conv.batch_slices(g_cl, (max(t for *_, t, _ in rows_h), max(t for *_, t, _ in rows_w)), biggest):
            for a, _, lo_a, t_a, m_a in rows_h:
                for e, _, lo_e, t_e, n_e in rows_w:
                    if m_a == 0 or n_e == 0:
                        continue
                    if t_a == 0 or t_e == 0:                              # no tap reaches this phase
                        y[batch, :, a::sh, e::sw] = 0
                        continue
                    r = phase_rows(g_cl[batch], lo_a + pad_h, lo_e + pad_w, (t_a, t_e), (m_a, n_e))
                    out = (r @ weights[a, e]).reshape(-1, m_a, n_e, C)
                    _scatter_phase(out, y[batch], a, e, sh, sw)
    return y
