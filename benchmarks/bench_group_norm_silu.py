"""SiLU fused into group norm (docs/layers.md eq. M25) against group norm then SiLU, at a U-Net's own shapes.

    python benchmarks/bench_group_norm_silu.py [--config digits] [--repeats 30] [--name group_norm_silu_cpu]

The shapes are not listed by hand: one forward of train_step.py's U-Net config (float32, its batch) runs with
nn.GroupNormSiLU.forward wrapped, which records each call's (x shape, groups); a shape met n times counts n
times in the per-step totals. For each shape, three ways of y = SiLU(GroupNorm(x; γ, β)) on Tensors that
require gradients (so the graph and autograd's bookkeeping are timed too, as in a training step):
  fused     F.group_norm_silu: one Function (Numba kernels; saved x, μ, r)
  composed  F.silu(F.group_norm(...)): two Functions (the GroupNorm kernels, then NumPy's SiLU; saved x and z)
  torch     torch.nn.functional.silu(group_norm(...)), for scale
each timed as forward (building the graph) and backward (y.backward(g) with a fixed g), on one thread (BLAS,
Numba, torch). The statistic is the minimum over --repeats of the process CPU time, the three ways
alternating within each repeat (the machine is shared: the minimum is the run least disturbed).
"""
import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import malloc_env, thread_settings, write_result  # noqa: E402
from train_step import CONFIGS, limit_threads  # noqa: E402


def unet_shapes(config):
    """{(x shape, groups): calls} of nn.GroupNormSiLU in one forward of the config's U-Net."""
    import minidiff as md
    from minidiff import nn
    from minidiff.models.unet import UNet
    cfg = CONFIGS[config]
    calls, forward = Counter(), nn.GroupNormSiLU.forward

    def recording(self, x):
        calls[(tuple(x.shape), self.num_groups)] += 1
        return forward(self, x)
    nn.GroupNormSiLU.forward = recording
    try:
        u = cfg["unet"]
        x = np.zeros((cfg["batch"], u["in_channels"], u["image_size"], u["image_size"]), np.float32)
        with md.no_grad():
            UNet(**u)(x, np.ones(cfg["batch"], dtype=np.int64))
    finally:
        nn.GroupNormSiLU.forward = forward
    return calls


def ways(torch):
    """name -> (make inputs from float32 arrays, y(inputs, groups))."""
    import minidiff as md
    import minidiff.functional as F
    tF = torch.nn.functional

    def ours(arrays):
        return [md.Tensor(a.copy(), requires_grad=True) for a in arrays]

    def theirs(arrays):
        return [torch.tensor(a, requires_grad=True) for a in arrays]
    return {"fused": (ours, lambda t, G: F.group_norm_silu(t[0], G, t[1], t[2])),
            "composed": (ours, lambda t, G: F.silu(F.group_norm(t[0], G, t[1], t[2]))),
            "torch": (theirs, lambda t, G: tF.silu(tF.group_norm(t[0], G, t[1], t[2])))}


def time_once(make, f, arrays, g, G):
    """(forward, backward) process CPU seconds of one y = f(inputs), y.backward(g)."""
    inputs = make(arrays)
    t0 = time.process_time()
    y = f(inputs, G)
    t1 = time.process_time()
    y.backward(g)
    t2 = time.process_time()
    return t1 - t0, t2 - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="digits")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--name", default="group_norm_silu_cpu")
    args = ap.parse_args()
    limit_threads(1)
    import torch
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows, totals = [], Counter()
    load_before = os.getloadavg()
    for (shape, G), count in sorted(unet_shapes(args.config).items()):
        C = shape[1]
        arrays = [rng.standard_normal(shape).astype(np.float32), (1 + 0.1 * rng.standard_normal(C)).astype(np.float32),
                  (0.1 * rng.standard_normal(C)).astype(np.float32)]
        g = rng.standard_normal(shape).astype(np.float32)
        best = {}
        for i in range(args.repeats + 1):                     # round 0 warms up (compiles, allocates)
            for name, (make, f) in ways(torch).items():
                grad = torch.tensor(g) if name == "torch" else g
                fwd, bwd = time_once(make, f, arrays, grad, G)
                if i > 0:
                    old = best.get(name, (np.inf, np.inf))
                    best[name] = (min(old[0], fwd), min(old[1], bwd))
        row = {"shape": list(shape), "groups": G, "count": count}
        for name, (fwd, bwd) in best.items():
            row[f"{name}_forward_cpu_s"], row[f"{name}_backward_cpu_s"] = fwd, bwd
            totals[(name, "forward")] += count * fwd
            totals[(name, "backward")] += count * bwd
        row["fused_over_composed"] = {p: row[f"fused_{p}_cpu_s"] / row[f"composed_{p}_cpu_s"]
                                      for p in ("forward", "backward")}
        rows.append(row)
        print(f"{str(shape):18s} G={G} x{count:<2d} " + "  ".join(
            f"{name} {1e3 * fwd:6.3f} + {1e3 * bwd:6.3f} ms" for name, (fwd, bwd) in best.items()), flush=True)
    per_step = {name: {p: 1e3 * totals[(name, p)] for p in ("forward", "backward")} for name in ways(torch)}
    ratios = {p: per_step["fused"][p] / per_step["composed"][p] for p in ("forward", "backward")}
    ratios["forward_backward"] = (sum(per_step["fused"].values()) / sum(per_step["composed"].values()))
    for name, v in per_step.items():
        print(f"per step  {name:8s} forward {v['forward']:6.2f} ms  backward {v['backward']:6.2f} ms")
    print("fused / composed: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    path = write_result(args.name, {
        "config": args.config, "dtype": "float32", "repeats": args.repeats,
        "statistic": "minimum over repeats of process CPU time, the three ways alternating",
        "threads": {**thread_settings(), "torch": torch.get_num_threads()}, "malloc_env": malloc_env(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rows": rows, "per_step_ms": per_step, "fused_over_composed": ratios})
    print(path)


if __name__ == "__main__":
    main()
