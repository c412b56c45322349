"""The transposed convolution (conv2d's input gradient) by sub-pixel products: no col2im (docs/layers.md eq. M28).

conv2d_input_grad(g, w) with stride s, padding p, dilation 1, for g (B, O, Ho, Wo) and w (O, C, kh, kw), is
the transposed convolution y = Cᵀ g (eq. M5), y (B, C, H, W):

    y[b, c, h] = Σ_{o, u, i : s·u + i − p = h} g[b, o, u] w[o, c, i]                 (one spatial axis written)

Split the outputs by their phase modulo s, h = s·m + a (a = 0 .. s − 1). Only the taps i ≡ a + p (mod s)
reach phase a: i = r_a + s·t with r_a = (a + p) mod s, t = 0 .. T_a − 1, T_a = ⌈(k − r_a)/s⌉, and then
u = m + q_a − t with q_a = ⌊(a + p)/s⌋. So each phase is a stride-1 correlation of g with a T_a-tap
sub-kernel, taken in reverse (t̃ = T_a − 1 − t):

    y[b, c, s·m + a] = Σ_{o, t̃} g[b, o, m + q_a − T_a + 1 + t̃] · w[o, c, r_a + s(T_a − 1 − t̃)]   (eq. M28)

In two dimensions that is s_h·s_w stride-1 convolutions of g, one per output phase (a, e), with T_a × T_e
sub-kernels: for the U-Net's upsampling (kernel 4, stride 2, padding 1) four 2×2 convolutions. Each is
one product in the channels-last layout of eq. M21, R_ae (B·M_a·N_e, T_a·T_e·O) times W_ae (T_a·T_e·O, C),
and its rows are the outputs of one phase (M_a = ⌈(H − a)/s⌉ of them per column), written into their
interleaved places of y (NCHW) by a Numba kernel. Since Σ_a T_a = k on each axis, the multiply-adds are
those of ∂R = G W_t (eq. M21) when H = s·Ho; what goes away is col2im's kh·kw strided slice additions into
a (B, H + 2p, W + 2p, C) buffer and its transposing copy to NCHW: the digits upsampling's forward takes 0.80
of the col2im path's time (docs/benchmarks.md round 4). R_ae is gathered a slice of the batch at a time
(`conv.batch_slices`).

`conv.conv2d_input_grad` chooses this path where `uses_subpixel` holds and keeps the channels-last col2im
(eq. M21, M4) as the reference; tests/test_layers_conv.py holds the two together. Runs unchanged (slowly)
under NUMBA_DISABLE_JIT=1.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from minidiff.ops import conv                 # its channels-last helpers; conv imports this module first
from minidiff.ops.attention import one_blas_thread


def uses_subpixel(g, w, stride, dilation):
    """Eq. M28 runs: NumPy float32/float64, stride > 1 on some axis, dilation 1 (stride 1 takes eq. M20)."""
    return (isinstance(g, np.ndarray) and g.dtype in (np.float32, np.float64)
            and tuple(dilation) == (1, 1) and max(stride) > 1)


class Phase(NamedTuple):
    """Output phase a of one axis (eq. M28): outputs h = s·m + a, m < count, read g[m + lo + t̃] for t̃ < taps
    with the weight taps first, first + s, …, taken in reverse."""
    a: int
    first: int        # r_a = (a + p) mod s
    lo: int           # q_a − T_a + 1, q_a = ⌊(a + p)/s⌋
    taps: int         # T_a = ⌈(k − r_a)/s⌉
    count: int        # M_a = ⌈(n − a)/s⌉ outputs


def phases(n_out, k, s, p):
    """The s phases of one axis with n_out outputs, kernel size k, stride s, padding p."""
    out = []
    for a in range(s):
        first, q = (a + p) % s, (a + p) // s
        taps = max(0, -(-(k - first) // s))
        out.append(Phase(a, first, q - taps + 1, taps, max(0, -(-(n_out - a) // s))))
    return out


def padding_for(axis_phases, n_in):
    """Zeros on each side of g's axis (n_in long) so that every phase's window lies inside:
    lo >= −pad and lo + count + taps − 2 <= n_in − 1 + pad."""
    return max([0] + [max(-ph.lo, ph.lo + ph.count + ph.taps - 1 - n_in) for ph in axis_phases if ph.taps and ph.count])


def phase_weights(w, r, stride):
    """W_ae of eq. M28 for first taps r = (r_a, r_e): (T_a·T_e·O, C), rows ordered (t̃_h, t̃_w, o) as R_ae's columns."""
    sub = w[:, :, r[0]::stride[0], r[1]::stride[1]][:, :, ::-1, ::-1]     # (O, C, T_a, T_e), taps reversed
    return np.ascontiguousarray(sub.transpose(2, 3, 0, 1).reshape(-1, w.shape[1]))


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

    Equal to `conv.conv2d_input_grad_col2im` (eq. M4, M21) up to the order of the additions.
    Ho, Wo are read from g, so g may be shorter than the natural output (output_padding).
    """
    B, C, H, W = x_shape
    phases_h, phases_w = phases(H, w.shape[2], stride[0], padding[0]), phases(W, w.shape[3], stride[1], padding[1])
    pad = (padding_for(phases_h, g.shape[2]), padding_for(phases_w, g.shape[3]))
    g_cl = conv.channels_last_padded(g, pad)                     # (B, Ho + 2·pad_h, Wo + 2·pad_w, O)
    y = np.empty((B, C, H, W), dtype=g.dtype)
    pairs = [(ph, pw) for ph in phases_h for pw in phases_w if ph.count and pw.count]
    for ph, pw in pairs:
        if not (ph.taps and pw.taps):                              # no tap reaches this phase
            y[:, :, ph.a::stride[0], pw.a::stride[1]] = 0
    pairs = [(ph, pw) for ph, pw in pairs if ph.taps and pw.taps]
    weights = [phase_weights(w, (ph.first, pw.first), stride) for ph, pw in pairs]
    largest = (max(ph.taps for ph in phases_h), max(pw.taps for pw in phases_w))
    with one_blas_thread(np):
        for batch in conv.batch_slices(g_cl, largest, (phases_h[0].count, phases_w[0].count)):
            for (ph, pw), w_ae in zip(pairs, weights):
                window = g_cl[batch, ph.lo + pad[0]:, pw.lo + pad[1]:]          # R_ae: (B·M_a·N_e, T_a·T_e·O)
                r = conv.rows_channels_last(window, (ph.taps, pw.taps), (1, 1), (1, 1), (ph.count, pw.count))
                _scatter_phase((r @ w_ae).reshape(-1, ph.count, pw.count, C), y[batch], ph.a, pw.a, *stride)
    return y
