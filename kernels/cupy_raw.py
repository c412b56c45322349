"""impl="cupy": launchers for the CUDA C kernels in diffusion_ops.cu (compiled once by cupy.RawModule).

Math and bytes model: the header of diffusion_ops.cu and docs/kernels.md eq. 1-7. Each launch
picks the wide variant (W = 16 bytes / element size, one 128-bit access per array) when the
elements per sample are a multiple of W and every pointer is 16-byte aligned, else W = 1.
Arrays are CuPy arrays; coefficient tables go to the device in the data's dtype.
"""
import math
from pathlib import Path

import numpy as np

from . import tables

SOURCE = Path(__file__).with_name("diffusion_ops.cu")
THREADS = 256      # must match #define THREADS in diffusion_ops.cu
MAX_BLOCKS = 1024  # grid-stride loops cover the rest; a function of n only (the loss is deterministic)
_module = {}


def _kernel(name):
    """The compiled entry point `name` (the module is built on first use and cached)."""
    if "module" not in _module:
        import cupy
        _module["module"] = cupy.RawModule(code=SOURCE.read_text(), options=("--std=c++17",))
    return _module["module"].get_function(name)


def _width(arrays, m):
    """Elements per 128-bit pack if every array allows it, else 1."""
    w = 16 // arrays[0].dtype.itemsize
    aligned = all(a.data.ptr % 16 == 0 for a in arrays)
    return w if aligned and m % w == 0 else 1


def _entry(op, arrays, m):
    """Kernel name and pack width for `op` on these arrays, e.g. ('q_sample_f32x4', 4)."""
    w = _width(arrays, m)
    kind = "f32" if arrays[0].dtype == np.float32 else "f64"
    return f"{op}_{kind}x{w}", w


def _grid(packs):
    return (max(1, min(MAX_BLOCKS, math.ceil(packs / THREADS))),), (THREADS,)


def _prepare(out, *arrays):
    """C-contiguous inputs and the output (allocated if None), plus m and n as int64 scalars."""
    import cupy
    arrays = [cupy.ascontiguousarray(a) for a in arrays]
    out = cupy.empty_like(arrays[0]) if out is None else out
    n = arrays[0].size
    return arrays, out, np.int64(n // arrays[0].shape[0]), np.int64(n)


def _tables(schedule, names, dtype):
    import cupy
    return tables.get(schedule, names, dtype, cupy)


def q_sample(x0, t, eps, schedule, out=None):
    (x0, eps), out, m, n = _prepare(out, x0, eps)
    name, w = _entry("q_sample", [x0, eps, out], int(m))
    coefs = _tables(schedule, ("sqrt_alpha_bars", "sqrt_one_minus_alpha_bars"), x0.dtype)
    _kernel(name)(*_grid(n // w), (x0, t.astype(np.int64), eps, *coefs, m, n, out))
    return out


def eps_loss(eps_hat, eps, weights=None, out=None):
    import cupy
    (eps_hat, eps), grad, m, n = _prepare(out, eps_hat, eps)
    dt = eps_hat.dtype
    w = cupy.ones(eps_hat.shape[0], dt) if weights is None else weights.astype(dt)
    name, width = _entry("eps_loss_partial", [eps_hat, eps, grad], int(m))
    blocks, threads = _grid(n // width)
    partial, result = cupy.empty(blocks[0], np.float64), cupy.empty(1, np.float64)
    _kernel(name)(blocks, threads, (eps_hat, eps, w, m, n, dt.type(2.0 / n), grad, partial))
    _kernel("sum_partials")((1,), (THREADS,), (partial, np.int64(blocks[0]), result))
    return (result[0] / n).astype(dt), grad


def reverse_step(x_t, t, eps_hat, z, schedule, variance="fixed_small", clip_x0=False, out=None):
    (x_t, eps_hat, z), out, m, n = _prepare(out, x_t, eps_hat, z)
    if clip_x0:
        op, names = "reverse_clip", ("recip_sqrt_alpha_bar", "recipm1_alpha_bar", "posterior_mean_coef1",
                                     "posterior_mean_coef2")
    else:
        op, names = "reverse_eps", ("recip_sqrt_alpha", "eps_coef")
    coefs = _tables(schedule, names + ("sigma_" + variance,), x_t.dtype)
    name, w = _entry(op, [x_t, eps_hat, z, out], int(m))
    _kernel(name)(*_grid(n // w), (x_t, t.astype(np.int64), eps_hat, z, *coefs, m, n, out))
    return out
