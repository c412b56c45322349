"""Winograd F(2×2, 3×3) against the channels-last product, at the U-Net's 3×3 stride-1 convolutions.

    python benchmarks/bench_winograd.py [--repeats 40] [--dtype float32] [--name winograd_cpu]

Same layer math, same process, one thread (BLAS, Numba): for every 3×3 stride-1 padding-1 convolution
of the two train_step.py configurations (digits: B = 64 at 8×8 and 4×4; 32x32: B = 16 at 32×32, 16×16,
8×8), as it runs in a training step:
  forward     y = conv2d(x, w): (B, C_in, H, W) -> (B, C_out, H, W)
  input grad  ∂L/∂x = conv2d(g, w̃) with w̃ the flipped, transposed kernel (docs/layers.md eq. M20):
              (B, C_out, H, W) -> (B, C_in, H, W); the first convolution's is never needed (its input is data)
  weight grad ∂L/∂w from x (B, C_in, H, W) and g (B, C_out, H, W)
each timed as `conv2d_channels_last` (the current path, eq. M21; for the weight gradient
`weight_grad_channels_last` of g's rows, as `Conv2d.backward` calls it) and `winograd_conv3x3` (eq. M23;
`winograd_weight_grad3x3`, eq. M24), the two
alternating inside every repeat; reported: the minimum over repeats of each (process CPU time and wall
time), the ratio winograd/current, and Winograd's parts (filter transform, input transform,
the 16 products, output transform). `count` is how many convolutions of that shape and role one training
step runs, so Σ count·time is the step's time on these convolutions by each path. Rows with role `probe`
(count 0) time C_in = 4, 8, 16 and C_out = 2, 4, 8 at each configuration's largest resolution: where the dispatch
threshold lies.
"""
import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

# (B, C_in, C_out, H, W) -> how many 3×3 stride-1 padding-1 convolutions of that shape each U-Net has
# (read off minidiff's UNet with train_step.py's configurations: a counting hook on the conv forward)
UNET_CONVS = {
    "digits": {(64, 1, 32, 8, 8): 1, (64, 32, 32, 8, 8): 3, (64, 32, 64, 4, 4): 1, (64, 64, 64, 4, 4): 6,
               (64, 128, 64, 4, 4): 1, (64, 96, 32, 8, 8): 1, (64, 32, 1, 8, 8): 1},
    "32x32": {(16, 3, 64, 32, 32): 1, (16, 64, 64, 32, 32): 7, (16, 64, 128, 16, 16): 1,
              (16, 128, 128, 16, 16): 6, (16, 128, 128, 8, 8): 11, (16, 256, 128, 8, 8): 1,
              (16, 256, 128, 16, 16): 1, (16, 192, 64, 32, 32): 1, (16, 64, 3, 32, 32): 1},
}

# few input or output channels, where a dispatch threshold lies (the first convolutions have C_in = 1 and 3,
# the last C_out = 1 and 3): C_in in PROBE_CHANNELS at the probe's C_out, C_out in PROBE_OUT_CHANNELS at its C_in
PROBE = {"digits": (64, 32, 32, 8, 8), "32x32": (16, 64, 64, 32, 32)}
PROBE_CHANNELS, PROBE_OUT_CHANNELS = (4, 8, 16), (2, 4, 8)


def cases():
    """(config, role, (B, C, O, H, W), count) for every forward and input-gradient convolution of a step."""
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
    return out


def min_times(fns, repeats):
    """Per function, the minimum CPU and wall seconds over `repeats` rounds in which the functions alternate."""
    best = [[float("inf"), float("inf")] for _ in fns]
    for fn in fns:
        fn()                                                    # warm-up (and Numba compilation)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            c1, w1 = time.process_time(), time.perf_counter()
            best[k][0] = min(best[k][0], c1 - c0)
            best[k][1] = min(best[k][1], w1 - w0)
    return best


def winograd_parts(x, w, repeats):
    """Minimum CPU seconds of each Winograd stage (filter, input, products, output) over the whole batch at once."""
    from minidiff.ops import conv_winograd as cw
    B, C, H, W = x.shape
    u = cw.filter_transform(w)
    v = np.empty((16, B * ((H + 1) // 2) * ((W + 1) // 2), C), dtype=x.dtype)
    cw._input_transform(x, v)
    m = np.matmul(v, u)
    y = np.empty((B, w.shape[0], H, W), dtype=x.dtype)
    stages = [lambda: cw.filter_transform(w), lambda: cw._input_transform(x, v),
              lambda: np.matmul(v, u), lambda: cw._output_transform(m, y)]
    return dict(zip(("filter_s", "input_s", "products_s", "output_s"), (t[0] for t in min_times(stages, repeats))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--name", default="winograd_cpu")
    args = ap.parse_args()

    import numba
    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(1)
    numba.set_num_threads(1)
    from minidiff.ops import conv as conv_ops
    from minidiff.ops import conv_winograd as cw

    rng = np.random.default_rng(0)
    rows, totals = [], Counter()
    load_before = os.getloadavg()
    for config, role, (B, C, O, H, W), count in cases():
        x = rng.standard_normal((B, C, H, W)).astype(args.dtype)
        w = rng.standard_normal((O, C, 3, 3)).astype(args.dtype)
        g = rng.standard_normal((B, O, H, W)).astype(args.dtype)
        if role == "weight grad":
            current = lambda: conv_ops.weight_grad_channels_last(                              # noqa: E731
                conv_ops.as_rows(g), x, w.shape, (1, 1), (1, 1), (1, 1), (H, W))
            winograd = lambda: cw.winograd_weight_grad3x3(g, x)                                # noqa: E731
        else:
            current = lambda: conv_ops.conv2d_channels_last(x, w, (1, 1), (1, 1), (1, 1), (H, W))  # noqa: E731
            winograd = lambda: cw.winograd_conv3x3(x, w)                                           # noqa: E731
        err = float(np.abs(winograd() - current()).max() / np.abs(current()).max())
        (cur_cpu, cur_wall), (win_cpu, win_wall) = min_times([current, winograd], args.repeats)
        row = {"config": config, "role": role, "B": B, "C_in": C, "C_out": O, "H": H, "W": W, "count": count,
               "current_cpu_s": cur_cpu, "winograd_cpu_s": win_cpu, "ratio_cpu": win_cpu / cur_cpu,
               "current_wall_s": cur_wall, "winograd_wall_s": win_wall, "ratio_wall": win_wall / cur_wall,
               "max_rel_diff": err}
        if role != "weight grad":
            row["winograd_parts_cpu"] = winograd_parts(x, w, max(5, args.repeats // 4))
        totals[(config, role, "current")] += count * cur_cpu
        totals[(config, role, "winograd")] += count * win_cpu
        rows.append(row)
        print(f"{config:6s} {role:10s} B={B:3d} C={C:3d} O={O:3d} {H:2d}x{W:<2d} x{count:<2d} "
              f"current {1e3 * cur_cpu:7.3f} ms  winograd {1e3 * win_cpu:7.3f} ms  "
              f"ratio {win_cpu / cur_cpu:5.2f}  (wall {win_wall / cur_wall:5.2f})",
              flush=True)
    summary = {f"{c}/{r}": {"current_ms": 1e3 * totals[(c, r, "current")],
                            "winograd_ms": 1e3 * totals[(c, r, "winograd")]}
               for c, r, k in totals if k == "current" and r != "probe"}
    for k, v in summary.items():
        print(f"{k:20s} Σ count·time: current {v['current_ms']:.2f} ms, winograd {v['winograd_ms']:.2f} ms")
    path = write_result(args.name, {
        "dtype": args.dtype, "repeats": args.repeats, "statistic": "minimum over repeats, the two paths alternating",
        "threads": {"blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "version")}
                             for i in threadpool_info()],
                    "numba": numba.get_num_threads(),
                    "env": {k: os.environ.get(k) for k in
                            ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}},
        "malloc_env": "glibc defaults" if not any(k.startswith("MALLOC_") for k in os.environ) else
                      {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rows": rows, "totals_per_step": summary})
    print(path)


if __name__ == "__main__":
    main()
