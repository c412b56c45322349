"""impl="cupy": launchers for the CUDA C kernels in diffusion_ops.cu and philox.cu (compiled by cupy.RawModule).

Math and bytes model: the header of diffusion_ops.cu and docs/kernels.md eq. C1-C7. Each launch
picks the wide variant (W = 16 bytes / element size, one 128-bit access per array) when the
elements per sample are a multiple of W and every pointer is 16-byte aligned, else W = 1.
Arrays are CuPy arrays; coefficient tables go to the device in the data's dtype.
"""
import math
import re
from pathlib import Path

import numpy as np

from . import tables

NAME = "cupy"
BACKENDS = ("cupy",)
AUTO_RANK = {"cupy": 2}


def probe():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or a CUDA driver error without a GPU
        return False


HERE = Path(__file__).parent
THREADS = int(re.search(r"#define THREADS (\d+)", (HERE / "block_reduce.cuh").read_text()).group(1))
MAX_BLOCKS = 1024  # grid-stride loops cover the rest; a function of n only (the loss is deterministic)
_modules = {}


def _kernel(name, source="diffusion_ops.cu"):
    """The compiled entry point `name` of `source` (each module is built on first use and cached)."""
    if source not in _modules:
        import cupy
        _modules[source] = cupy.RawModule(code=(HERE / source).read_text(), options=("--std=c++17", f"-I{HERE}"))
    return _modules[source].get_function(name)


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


# ---------------------------------------------------------------- in-kernel noise (philox.cu)

def _philox_args(seed, offset, a):
    return np.uint64(seed), np.uint64(offset), np.int64(a.shape[0]), np.int64(a.size // a.shape[0])


def _kind(dtype):
    return "f32" if dtype == np.float32 else "f64"


def _philox_grid(a):
    return _grid(a.shape[0] * ((a.size // a.shape[0] + 3) // 4))


def normal(seed, shape, offset=0, dtype=np.float32):
    import cupy
    out = cupy.empty(shape, dtype)
    _kernel(f"philox_normal_{_kind(out.dtype)}", "philox.cu")(*_philox_grid(out),
                                                              (*_philox_args(seed, offset, out), out))
    return out


def q_sample_philox(x0, t, seed, schedule, offset=0, out=None):
    (x0,), out, _, _ = _prepare(out, x0)
    coefs = _tables(schedule, ("sqrt_alpha_bars", "sqrt_one_minus_alpha_bars"), x0.dtype)
    _kernel(f"philox_q_sample_{_kind(x0.dtype)}", "philox.cu")(
        *_philox_grid(x0), (x0, t.astype(np.int64), *coefs, *_philox_args(seed, offset, x0), out))
    return out


def eps_loss_philox(eps_hat, seed, offset=0, weights=None, out=None):
    import cupy
    (eps_hat,), grad, _, n = _prepare(out, eps_hat)
    dt = eps_hat.dtype
    w = cupy.ones(eps_hat.shape[0], dt) if weights is None else weights.astype(dt)
    blocks, threads = _philox_grid(eps_hat)
    partial, result = cupy.empty(blocks[0], np.float64), cupy.empty(1, np.float64)
    _kernel(f"philox_eps_loss_{_kind(dt)}", "philox.cu")(
        blocks, threads, (eps_hat, w, *_philox_args(seed, offset, eps_hat), dt.type(2.0 / n), grad, partial))
    _kernel("sum_partials", "philox.cu")((1,), (THREADS,), (partial, np.int64(blocks[0]), result))
    return (result[0] / n).astype(dt), grad
