"""1×1 convolutions and strided input gradients: the new paths against the channels-last ones they replace.

    python benchmarks/bench_conv_paths.py [--repeats 40] [--dtype float32] [--name conv_paths_cpu]

Same process, one thread (BLAS, Numba), the two paths alternating inside every repeat; reported per row:
the minimum over repeats of each (process CPU time and wall time), the ratio new/old and the largest
difference relative to max |old|. The layers are those of the two train_step.py U-Nets (read off their
forward with a counting hook on Conv2d and ConvTranspose2d), each in the roles it has in a training step:

  1×1 (skip projections), x (B, C_in, H, W), w (C_out, C_in, 1, 1), docs/layers.md eq. M27:
    forward      old `conv2d_channels_last` (eq. M21)            new `pointwise_conv`: y[b] = W x[b]
    input grad   old `conv2d_input_grad_as_conv` (eq. M20, M21)  new `pointwise_input_grad`: ∂x[b] = Wᵀ g[b]
    weight grad  old `weight_grad_channels_last` (Gᵀ R)          new `pointwise_weight_grad`: Σ_b g[b] x[b]ᵀ
  transposed 4×4 stride-2 padding-1 (upsampling), x (B, C, H, W) -> (B, C, 2H, 2W), eq. M28:
    forward      old `conv2d_input_grad_col2im` (∂R = G W_t, col2im)   new `conv2d_input_grad_subpixel`
    weight grad  (tried, not kept) old `weight_grad_channels_last` of g (Xᵀ R(g)) against the same sum by
                 output phase, ∂W_ae = R_ae(x)ᵀ G_ae (four products on x's 2×2 windows and g's phase planes)
  3×3 stride-2 padding-1 (downsampling), its input gradient (B, C, H/2, W/2) -> (B, C, H, W), eq. M28:
    input grad   old `conv2d_input_grad_col2im`   new `conv2d_input_grad_subpixel`
  bias: the transposed convolution's `y += b` pass alone (old only), what adding the bias inside the
    phase scatter could save at most.

`count` is how many layers of that shape and role a training step runs; Σ count·time per configuration
and role is printed and stored.

    python benchmarks/bench_conv_paths.py --train-step digits [--pairs 30] [--name conv_paths_step_digits]

times train_step.py's training step instead (same weights, batch, Adam, dropout), in one process on one
thread, alternating steps with the new paths switched on and off (the dispatch predicates `uses_pointwise`
and `uses_subpixel` made false: the code before them) and the order flipped every pair, so that both
see the same load, heap and caches; reported: the median and minimum CPU time of each (step, and its
forward + loss) and the median of the pairs' ratios new/old.
"""
import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import malloc_env, min_times, thread_settings, write_result  # noqa: E402

# (B, C_in, C_out, H, W) of each U-Net's 1×1 convolutions, one layer each (instrumented from train_step.py's
# configurations); the transposed and the strided convolutions keep C_in = C_out = C: (B, C, H, W) of their input
POINTWISE = {"digits": [(64, 32, 64, 4, 4), (64, 96, 32, 8, 8), (64, 128, 64, 4, 4)],
             "32x32": [(16, 64, 128, 16, 16), (16, 192, 64, 32, 32), (16, 256, 128, 8, 8), (16, 256, 128, 16, 16)]}
UPSAMPLE = {"digits": [(64, 64, 4, 4)], "32x32": [(16, 128, 8, 8), (16, 128, 16, 16)]}
DOWNSAMPLE = {"digits": [(64, 32, 8, 8)], "32x32": [(16, 64, 32, 32), (16, 128, 16, 16)]}


def weight_grad_by_phase(x, g):
    """∂w of the 4×4 stride-2 padding-1 transposed convolution as Σ over output phases (a, e) of R_ae(x)ᵀ G_ae:
    R_ae the 2×2 windows of x that eq. M28 reads for phase (a, e), G_ae g's phase plane as rows. Returns the
    (2, 2, 4·C_in, C_out) blocks, which hold every tap of ∂w once (the comparison checks that through `dense`)."""
    from minidiff.ops import conv as cv
    from minidiff.ops.attention import one_blas_thread
    B, C, H, W = x.shape
    O = g.shape[1]
    planes = np.empty((2, 2, B, H, W, O), dtype=g.dtype)
    planes[...] = g.reshape(B, O, H, 2, W, 2).transpose(3, 5, 0, 2, 4, 1)
    x_cl = cv.channels_last_padded(x, (1, 1))
    out = np.empty((2, 2, 4 * C, O), dtype=g.dtype)
    with one_blas_thread(np):
        for a in range(2):
            for e in range(2):
                rows = cv.rows_channels_last(x_cl[:, a:, e:], (2, 2), (1, 1), (1, 1), (H, W))
                np.matmul(rows.T, planes[a, e].reshape(-1, O), out=out[a, e])
    return out


def dense(blocks, C, O):
    """The (C, O, 4, 4) weight gradient from `weight_grad_by_phase`'s blocks (tap i = 3 − a − 2t̃, eq. M28)."""
    dw = np.empty((C, O, 4, 4), dtype=blocks.dtype)
    for a in range(2):
        for e in range(2):
            b = blocks[a, e].reshape(2, 2, C, O)
            for t in range(2):
                for u in range(2):
                    dw[:, :, 3 - a - 2 * t, 3 - e - 2 * u] = b[t, u]
    return dw


def cases(rng, dtype):
    """(config, layer, role, shape, count, old, new or None, compare) for every timed row."""
    from minidiff.ops import conv as cv, conv_subpixel as sp
    one, zero = (1, 1), (0, 0)
    out = []
    for config in POINTWISE:
        for (B, C, O, H, W) in POINTWISE[config]:
            x, g = rng.standard_normal((B, C, H, W)).astype(dtype), rng.standard_normal((B, O, H, W)).astype(dtype)
            w = rng.standard_normal((O, C, 1, 1)).astype(dtype)
            shape = (B, C, O, H, W)
            out += [(config, "1x1", "forward", shape, 1, lambda x=x, w=w: cv.conv2d_channels_last(x, w, one, zero, one,
                                                                                                   x.shape[2:]),
                     lambda x=x, w=w: cv.pointwise_conv(x, w), None),
                    (config, "1x1", "input grad", shape, 1,
                     lambda g=g, w=w, x=x: cv.conv2d_input_grad_as_conv(g, w, x.shape, zero, one),
                     lambda g=g, w=w: cv.pointwise_input_grad(g, w), None),
                    (config, "1x1", "weight grad", shape, 1,
                     lambda g=g, w=w, x=x: cv.weight_grad_channels_last(cv.as_rows(g), x, w.shape, one, zero, one,
                                                                        x.shape[2:]),
                     lambda g=g, x=x: cv.pointwise_weight_grad(g, x), None)]
        for (B, C, H, W) in UPSAMPLE[config]:
            x, w = rng.standard_normal((B, C, H, W)).astype(dtype), rng.standard_normal((C, C, 4, 4)).astype(dtype)
            g = rng.standard_normal((B, C, 2 * H, 2 * W)).astype(dtype)
            y_shape, shape = (B, C, 2 * H, 2 * W), (B, C, C, H, W)
            out += [(config, "transposed 4x4 s2", "forward", shape, 1,
                     lambda x=x, w=w, s=y_shape: cv.conv2d_input_grad_col2im(x, w, s, (2, 2), one, one),
                     lambda x=x, w=w, s=y_shape: sp.conv2d_input_grad_subpixel(x, w, s, (2, 2), one), None),
                    (config, "transposed 4x4 s2", "weight grad (tried)", shape, 1,
                     lambda x=x, g=g, w=w: cv.weight_grad_channels_last(cv.as_rows(x), g, w.shape, (2, 2), one, one,
                                                                        x.shape[2:]),
                     lambda x=x, g=g: weight_grad_by_phase(x, g), lambda new, C=C: dense(new, C, C)),
                    (config, "transposed 4x4 s2", "bias add", shape, 1,
                     lambda y=np.ones(y_shape, dtype), b=np.ones(C, dtype): y.__iadd__(b.reshape(1, -1, 1, 1)),
                     None, None)]
        for (B, C, H, W) in DOWNSAMPLE[config]:
            g = rng.standard_normal((B, C, H // 2, W // 2)).astype(dtype)
            w = rng.standard_normal((C, C, 3, 3)).astype(dtype)
            x_shape = (B, C, H, W)
            out.append((config, "3x3 s2 (downsample)", "input grad", (B, C, C, H, W), 1,
                        lambda g=g, w=w, s=x_shape: cv.conv2d_input_grad_col2im(g, w, s, (2, 2), one, one),
                        lambda g=g, w=w, s=x_shape: sp.conv2d_input_grad_subpixel(g, w, s, (2, 2), one), None))
    return out


def train_step_pairs(config, pairs):
    """[(new or old, step CPU s, forward + loss CPU s)] of 2·pairs training steps, the new paths on and off in turn."""
    import minidiff as md
    from minidiff import diffusion
    from minidiff.ops import conv as cv, conv_subpixel as sp
    from train_step import CONFIGS, ours_in_process
    model, opt, batch = ours_in_process(CONFIGS[config])
    paths = {"new": (cv.uses_pointwise, sp.uses_subpixel), "old": (lambda *a: False, lambda *a: False)}

    def step(which):
        cv.uses_pointwise, sp.uses_subpixel = paths[which]
        model.train()
        opt.zero_grad()
        c0 = time.process_time()
        loss = diffusion.fused_eps_loss(model(md.Tensor(batch["x_t"]), batch["t"]), batch["eps"])
        c1 = time.process_time()
        loss.backward()
        opt.step()
        return which, time.process_time() - c0, c1 - c0

    for which in ("new", "old", "new", "old"):                 # warm-up (and Numba compilation)
        step(which)
    out = []
    for k in range(pairs):
        out += [step(which) for which in (("new", "old") if k % 2 == 0 else ("old", "new"))]
    cv.uses_pointwise, sp.uses_subpixel = paths["new"]
    return out


def summarise_pairs(steps):
    """Median and minimum per path and the median paired ratio new/old, for the step and its forward."""
    import statistics
    out = {}
    for key, idx in (("step", 1), ("forward_loss", 2)):
        times = {w: [s[idx] for s in steps if s[0] == w] for w in ("new", "old")}
        ratios = [a[idx] / b[idx] if a[0] == "new" else b[idx] / a[idx] for a, b in zip(steps[::2], steps[1::2])]
        out[key] = {**{f"{w}_median_ms": 1e3 * statistics.median(t) for w, t in times.items()},
                    **{f"{w}_min_ms": 1e3 * min(t) for w, t in times.items()},
                    "paired_ratio_median": statistics.median(ratios),
                    "paired_ratio_quartiles": statistics.quantiles(ratios, n=4)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--name", default=None)
    ap.add_argument("--train-step", choices=("digits", "32x32"), default=None)
    ap.add_argument("--pairs", type=int, default=30)
    args = ap.parse_args()

    import numba
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    numba.set_num_threads(1)
    threads, malloc = thread_settings(), malloc_env()
    if args.train_step:
        load_before = os.getloadavg()
        steps = train_step_pairs(args.train_step, args.pairs)
        summary = summarise_pairs(steps)
        print(json.dumps(summary, indent=1))
        print(write_result(args.name or f"conv_paths_step_{args.train_step}", {
            "config": args.train_step, "pairs": args.pairs, "dtype": "float32", "threads": threads,
            "malloc_env": malloc, "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "summary": summary, "steps": [{"path": w, "step_cpu_s": a, "forward_loss_cpu_s": b} for w, a, b in steps]}))
        return

    rows, totals = [], Counter()
    load_before = os.getloadavg()
    for config, layer, role, (B, C, O, H, W), count, old, new, compare in cases(np.random.default_rng(0), args.dtype):
        row = {"config": config, "layer": layer, "role": role, "B": B, "C_in": C, "C_out": O, "H": H, "W": W,
               "count": count}
        if new is None:
            (old_cpu, old_wall), = min_times([old], args.repeats)
            row.update(old_cpu_s=old_cpu, old_wall_s=old_wall)
            print(f"{config:6s} {layer:20s} {role:20s} {str((B, C, O, H, W)):24s} old {1e3 * old_cpu:7.3f} ms")
        else:
            reference, result = old(), new()
            result = result if compare is None else compare(result)
            err = float(np.abs(result - reference).max() / np.abs(reference).max())
            (old_cpu, old_wall), (new_cpu, new_wall) = min_times([old, new], args.repeats)
            row.update(old_cpu_s=old_cpu, new_cpu_s=new_cpu, ratio_cpu=new_cpu / old_cpu, old_wall_s=old_wall,
                       new_wall_s=new_wall, ratio_wall=new_wall / old_wall, max_rel_diff=err)
            if "tried" not in role:
                totals[(config, layer, role, "old")] += count * old_cpu
                totals[(config, layer, role, "new")] += count * new_cpu
            print(f"{config:6s} {layer:20s} {role:20s} {str((B, C, O, H, W)):24s} old {1e3 * old_cpu:7.3f} ms  "
                  f"new {1e3 * new_cpu:7.3f} ms  ratio {new_cpu / old_cpu:5.2f} (wall {new_wall / old_wall:5.2f})  "
                  f"diff {err:.1e}", flush=True)
        rows.append(row)
    summary = {f"{c}/{layer}/{r}": {"old_ms": 1e3 * totals[(c, layer, r, "old")],
                                    "new_ms": 1e3 * totals[(c, layer, r, "new")]}
               for c, layer, r, k in totals if k == "old"}
    for k, v in summary.items():
        print(f"{k:45s} Σ count·time: old {v['old_ms']:.2f} ms, new {v['new_ms']:.2f} ms")
    path = write_result(args.name or "conv_paths_cpu", {
        "dtype": args.dtype, "repeats": args.repeats, "statistic": "minimum over repeats, the two paths alternating",
        "threads": threads, "malloc_env": malloc,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rows": rows, "totals_per_step": summary})
    print(path)


if __name__ == "__main__":
    main()
