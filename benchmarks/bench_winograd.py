"""Winograd F(4×4, 3×3) and F(2×2, 3×3) against the channels-last product, at the U-Net's 3×3 stride-1 convolutions.

    python benchmarks/bench_winograd.py [--repeats 30] [--dtype float32] [--name winograd_cpu] [--baseline DIR]

Same layer math, same process, one thread (BLAS, Numba): for every 3×3 stride-1 padding-1 convolution
of the two train_step.py configurations (digits: B = 64 at 8×8 and 4×4; 32x32: B = 16 at 32×32, 16×16,
8×8), as it runs in a training step:
  forward     y = conv2d(x, w) + b: (B, C_in, H, W) -> (B, C_out, H, W)
  input grad  ∂L/∂x = conv2d(g, w̃) with w̃ the flipped, transposed kernel (docs/layers.md eq. M20):
              (B, C_out, H, W) -> (B, C_in, H, W), no bias; the first convolution's is never needed (its input is data)
  weight grad (∂L/∂w, ∂L/∂b) from x (B, C_in, H, W) and g (B, C_out, H, W)
each timed by three paths, alternating inside every repeat: `direct`, the channels-last product (eq. M21;
for the weight gradient `weight_grad_channels_last` of g's rows), with the bias as `Conv2d` adds it on that
path (y += b, ∂b = g.sum(axis=(0, 2, 3))); `f2`, Winograd F(2×2, 3×3) (eq. M23, M24); `f4`, Winograd
F(4×4, 3×3) (eq. M30, M31), both with the bias inside their transforms (eq. M32). Reported: the minimum
over repeats of each (process CPU time and wall time), the ratios f2/direct, f4/direct, f4/f2, each
Winograd's parts (filter transform, input transform, the α² products, output transform; forward roles),
and the float32 error of each path against the float64 direct product on the same numbers (max |error| /
max |y|). `count` is how many convolutions of that shape and role one training step runs, so Σ count·time
is the step's time on these convolutions by each path. Rows with role `probe` (count 0), forward only, time
C_in = 1, 2, 3, 4, 8, 16 and C_out = 1, 2, 4, 8 at each configuration's largest resolution, and H = W = 2, 3, 5,
6, 7, 12 (where F(4×4, 3×3)'s padded tiles cost more or fewer multiplications than F(2×2, 3×3)'s): where the
dispatch thresholds lie.

With --baseline DIR (a checkout of an earlier commit), DIR/minidiff/ops/conv_winograd.py's F(2×2, 3×3)
(no bias in its transforms) is timed as a fourth path `base`, with the bias added as `Conv2d` added it
(y += b; ∂b = g.sum(axis=(0, 2, 3))): `f2`/`base` is what moving the bias into the transforms saves.
`bias_passes_per_step` times those two passes alone, summed over each U-Net's layers; the forward rows also
time `f4_no_bias`, F(4×4, 3×3) without a bias: `f4` − `f4_no_bias` is what the bias costs inside the transform.
"""
import argparse
import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import malloc_env, min_times, thread_settings, write_result  # noqa: E402

# (B, C_in, C_out, H, W) -> how many 3×3 stride-1 padding-1 convolutions of that shape each U-Net has
# (read off minidiff's UNet with train_step.py's configurations: a counting hook on the conv forward)
UNET_CONVS = {
    "digits": {(64, 1, 32, 8, 8): 1, (64, 32, 32, 8, 8): 3, (64, 32, 64, 4, 4): 1, (64, 64, 64, 4, 4): 6,
               (64, 128, 64, 4, 4): 1, (64, 96, 32, 8, 8): 1, (64, 32, 1, 8, 8): 1},
    "32x32": {(16, 3, 64, 32, 32): 1, (16, 64, 64, 32, 32): 7, (16, 64, 128, 16, 16): 1,
              (16, 128, 128, 16, 16): 6, (16, 128, 128, 8, 8): 11, (16, 256, 128, 8, 8): 1,
              (16, 256, 128, 16, 16): 1, (16, 192, 64, 32, 32): 1, (16, 64, 3, 32, 32): 1},
}

# few input or output channels, or sizes that are not multiples of 4, where a dispatch threshold lies: C_in in
# PROBE_CHANNELS at the probe's C_out, C_out in PROBE_OUT_CHANNELS at its C_in, H = W in PROBE_SIZES at both
PROBE = {"digits": (64, 32, 32, 8, 8), "32x32": (16, 64, 64, 32, 32)}
PROBE_CHANNELS, PROBE_OUT_CHANNELS, PROBE_SIZES = (1, 2, 3, 4, 8, 16), (1, 2, 4, 8), (2, 3, 5, 6, 7, 12)
PATHS = ("direct", "f2", "f4")


def cases():
    """(config, role, (B, C, O, H, W), count) for every forward, input- and weight-gradient convolution of a step."""
    out = []
    for config, convs in UNET_CONVS.items():
        roles = Counter()
        first = next(iter(convs))                              # conv_in: its input gradient is not computed
        for (B, C, O, H, W), n in convs.items():
            roles[("forward", (B, C, O, H, W))] += n
            roles[("weight grad", (B, C, O, H, W))] += n
            m = n - 1 if (B, C, O, H, W) == first else n
            if m:
                roles[("input grad", (B, O, C, H, W))] += m
        out += [(config, role, shape, n) for (role, shape), n in roles.items()]
        B, C, O, H, W = PROBE[config]
        out += [(config, "probe", (B, c, O, H, W), 0) for c in PROBE_CHANNELS]
        out += [(config, "probe", (B, C, o, H, W), 0) for o in PROBE_OUT_CHANNELS]
        out += [(config, "probe", (B, C, O, s, s), 0) for s in PROBE_SIZES]
    return out


def winograd_parts(x, w, b, m, repeats):
    """Minimum CPU seconds of each F(m×m, 3×3) stage (filter, input, products, output) over the whole batch."""
    from minidiff.ops import conv_winograd as cw
    B, C, H, W = x.shape
    nh, nw = cw.tile_grid(H, W, m)
    input_transform, output_transform, _ = cw.KERNELS[m]
    u = cw.filter_transform(w, m)
    v = np.empty(((m + 2) ** 2, B * nh * nw, C), dtype=x.dtype)
    input_transform(x, v)
    prod = np.matmul(v, u)
    y = np.empty((B, w.shape[0], H, W), dtype=x.dtype)
    stages = [lambda: cw.filter_transform(w, m), lambda: input_transform(x, v),
              lambda: np.matmul(v, u), lambda: output_transform(prod, b, y)]
    return dict(zip(("filter_s", "input_s", "products_s", "output_s"), (t[0] for t in min_times(stages, repeats))))


def load_baseline(directory):
    """DIR/minidiff/ops/conv_winograd.py as a module of its own (it imports only NumPy and Numba), its Numba cache
    in DIR/.bench_winograd_numba: entries written under this module's name into DIR's own cache would break
    DIR's minidiff (train_step.py --baseline DIR) when it loads them."""
    import numba
    spec = importlib.util.spec_from_file_location("baseline_conv_winograd",
                                                  Path(directory) / "minidiff" / "ops" / "conv_winograd.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    cache_dir = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(Path(directory) / ".bench_winograd_numba")
    try:
        spec.loader.exec_module(module)
    finally:
        numba.config.CACHE_DIR = cache_dir
    return module


def role_paths(role, x, w, b, g, baseline):
    """name -> a call computing this role's result by that path (a tuple for the weight gradient: ∂w, ∂b)."""
    from minidiff.ops import conv as conv_ops
    from minidiff.ops import conv_winograd as cw
    H, W = x.shape[2:]
    if role == "weight grad":
        paths = {"direct": lambda: (conv_ops.weight_grad_channels_last(conv_ops.as_rows(g), x, w.shape, (1, 1), (1, 1),
                                                                       (1, 1), (H, W)), g.sum(axis=(0, 2, 3))),
                 "f2": lambda: cw.winograd_weight_grad3x3(g, x, 2), "f4": lambda: cw.winograd_weight_grad3x3(g, x, 4)}
        if baseline is not None:
            paths["base"] = lambda: (baseline.winograd_weight_grad3x3(g, x), g.sum(axis=(0, 2, 3)))
        return paths
    b = None if role == "input grad" else b

    def plus_bias(y):
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y
    paths = {"direct": lambda: plus_bias(conv_ops.conv2d_channels_last(x, w, (1, 1), (1, 1), (1, 1), (H, W))),
             "f2": lambda: cw.winograd_conv3x3(x, w, b, 2), "f4": lambda: cw.winograd_conv3x3(x, w, b, 4)}
    if b is not None:
        paths["f4_no_bias"] = lambda: cw.winograd_conv3x3(x, w, None, 4)             # what the bias costs inside
    if baseline is not None:
        paths["base"] = lambda: plus_bias(baseline.winograd_conv3x3(x, w))
    return paths


def float32_errors(paths, role, x, w, b, g):
    """Per path, max |result − float64 direct result| / max |float64 result| (∂w for the weight gradient)."""
    as64 = [None if a is None else a.astype(np.float64) for a in (x, w, b, g)]
    ref = role_paths(role, *as64, None)["direct"]()
    ref = ref[0] if role == "weight grad" else ref
    out = {}
    for name, fn in paths.items():
        r = fn()
        r = r[0] if role == "weight grad" else r
        out[name] = float(np.abs(r - ref).max() / np.abs(ref).max())
    return out


def bias_passes(dtype, repeats):
    """Per configuration, Σ count·time of the two passes the plain path spends on the bias: y += b over every
    forward output and g.sum(axis=(0, 2, 3)) over every upstream gradient (ms per step); the Winograd paths do
    both inside their transforms (eq. M32)."""
    rng = np.random.default_rng(1)
    out = {}
    for config, convs in UNET_CONVS.items():
        add = total = 0.0
        for (B, C, O, H, W), n in convs.items():
            y, b = rng.standard_normal((B, O, H, W)).astype(dtype), rng.standard_normal(O).astype(dtype)
            (t_add, _), (t_sum, _) = min_times([lambda: y.__iadd__(b.reshape(1, -1, 1, 1)),
                                                lambda: y.sum(axis=(0, 2, 3))], repeats)
            add, total = add + n * t_add, total + n * t_sum
        out[config] = {"y_plus_b_ms": 1e3 * add, "g_sum_ms": 1e3 * total}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--name", default="winograd_cpu")
    ap.add_argument("--baseline", default=None, help="a checkout whose F(2×2, 3×3) is timed as path `base`")
    args = ap.parse_args()

    import numba
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    numba.set_num_threads(1)
    baseline = load_baseline(args.baseline) if args.baseline else None

    rng = np.random.default_rng(0)
    rows, totals = [], Counter()
    load_before = os.getloadavg()
    for config, role, (B, C, O, H, W), count in cases():
        x = rng.standard_normal((B, C, H, W)).astype(args.dtype)
        w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(args.dtype)
        b = rng.standard_normal(O).astype(args.dtype)
        g = rng.standard_normal((B, O, H, W)).astype(args.dtype)
        paths = role_paths("forward" if role == "probe" else role, x, w, b, g, baseline)
        names = list(paths)
        times = dict(zip(names, min_times([paths[k] for k in names], args.repeats)))
        row = {"config": config, "role": role, "B": B, "C_in": C, "C_out": O, "H": H, "W": W, "count": count}
        row.update({f"{k}_cpu_s": t[0] for k, t in times.items()})
        row.update({f"{k}_wall_s": t[1] for k, t in times.items()})
        row.update({"ratio_f2_direct": times["f2"][0] / times["direct"][0],
                    "ratio_f4_direct": times["f4"][0] / times["direct"][0],
                    "ratio_f4_f2": times["f4"][0] / times["f2"][0]})
        if baseline is not None:
            row["ratio_f2_base"] = times["f2"][0] / times["base"][0]
        row["max_rel_error"] = float32_errors({k: paths[k] for k in PATHS}, "forward" if role == "probe" else role,
                                              x, w, b, g)
        if role in ("forward", "input grad"):
            bias = b if role == "forward" else np.zeros(O, dtype=args.dtype)
            row["parts_cpu"] = {f"f{m}": winograd_parts(x, w, bias, m, max(5, args.repeats // 4)) for m in (2, 4)}
        for k, t in times.items():
            totals[(config, role, k)] += count * t[0]
        rows.append(row)
        base = f"  base {1e3 * times['base'][0]:7.3f} ms" if baseline is not None else ""
        print(f"{config:6s} {role:11s} B={B:3d} C={C:3d} O={O:3d} {H:2d}x{W:<2d} x{count:<2d} "
              + "  ".join(f"{k} {1e3 * times[k][0]:7.3f}" for k in PATHS) + " ms"
              f"{base}  f4/direct {row['ratio_f4_direct']:4.2f}  f4/f2 {row['ratio_f4_f2']:4.2f}", flush=True)
    summary = {f"{c}/{r}": {f"{k}_ms": 1e3 * t for (c2, r2, k), t in totals.items() if (c2, r2) == (c, r)}
               for c, r, k in totals if k == "direct" and r != "probe"}
    for k, v in summary.items():
        print(f"{k:20s} Σ count·time: " + ", ".join(f"{p} {t:.2f}" for p, t in v.items()))
    passes = bias_passes(args.dtype, args.repeats)
    for k, v in passes.items():
        print(f"{k:20s} bias passes of the plain path: y += b {v['y_plus_b_ms']:.2f} ms, g.sum {v['g_sum_ms']:.2f} ms")
    path = write_result(args.name, {
        "dtype": args.dtype, "repeats": args.repeats, "statistic": "minimum over repeats, the paths alternating",
        "baseline": args.baseline,
        "threads": thread_settings(), "malloc_env": malloc_env(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rows": rows, "totals_per_step": summary, "bias_passes_per_step": passes})
    print(path)


if __name__ == "__main__":
    main()
