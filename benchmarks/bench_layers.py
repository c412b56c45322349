"""Layer benchmark: minidiff vs PyTorch CPU, forward and forward+backward, at DDPM sizes.

    python benchmarks/bench_layers.py [--repeats 7] [--threads N] [--name layers_cpu]

Cases (float32, the layer sizes of a 32x32 U-Net, plus the small-image U-Net size used on 8x8 digits):
  conv2d          3x3 pad 1, (16, 64, 32, 32) -> (16, 64, 32, 32)
  conv2d_8x8      3x3 pad 1, (128, 64, 8, 8)  -> (128, 64, 8, 8)
  conv_transpose  4x4 stride 2 pad 1, (16, 64, 16, 16) -> (16, 64, 32, 32)
  group_norm      32 groups on (16, 64, 32, 32)
  attention       scaled_dot_product_attention, 4 heads over the 16x16 positions of (16, 64, 16, 16),
                  i.e. q, k, v of shape (16, 4, 256, 16)
  self_attention  the whole SelfAttention2d block (GroupNorm, qkv and output projections, residual)

FLOPs model (multiply-add = 2 FLOPs), used for GFLOP/s:
  conv / conv_transpose: F = 2·B·O·Ho·Wo·C·kh·kw forward (for the transposed conv, the conv it is
    the adjoint of); backward = two products of the same size (input and weight gradients) -> 3F total.
  attention: F = 2·BH·L·S·(E + Ev) for the two products, + 5·BH·L·S for the softmax; backward four
    products (2F matmul) + 4·BH·L·S -> about 3F total.
  group_norm: memory-bound; bytes model = 4 bytes × (read x + write y) forward, × (x, g, y, dx) f+b,
    reported as GB/s instead of GFLOP/s.
Timing: ours and PyTorch alternate within each repeat (this machine is shared and noisy), the
median of each is reported, and the ratio is ours/PyTorch of the medians.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import minidiff as md  # noqa: E402
import minidiff.functional as F  # noqa: E402
import minidiff.nn as nn  # noqa: E402
from minidiff.ops.attention import attention_reference  # noqa: E402
from minidiff.ops.norm import group_norm_reference  # noqa: E402

# the primitive-op compositions the fused Functions are tested against, timed beside them
REFERENCES = {"group_norm": lambda x, w, b: group_norm_reference(x, 32, w, b), "attention": attention_reference}


def conv_flops(B, C, O, Ho, Wo, kh, kw):
    return 2.0 * B * O * Ho * Wo * C * kh * kw


def attention_flops(BH, L, S, E, Ev):
    return 2.0 * BH * L * S * (E + Ev) + 5.0 * BH * L * S


def cases(torch):
    """name -> (ours(*tensors), theirs(*tensors), input shapes, forward FLOPs or None, forward bytes)."""
    tF = torch.nn.functional
    md.manual_seed(0)
    block = nn.SelfAttention2d(64, num_heads=4, num_groups=32)
    t_block = torch_self_attention(torch, block)
    return {
        "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding=1), lambda x, w, b: tF.conv2d(x, w, b, padding=1),
                   [(16, 64, 32, 32), (64, 64, 3, 3), (64,)], conv_flops(16, 64, 64, 32, 32, 3, 3), None),
        "conv2d_8x8": (lambda x, w, b: F.conv2d(x, w, b, padding=1), lambda x, w, b: tF.conv2d(x, w, b, padding=1),
                       [(128, 64, 8, 8), (64, 64, 3, 3), (64,)], conv_flops(128, 64, 64, 8, 8, 3, 3), None),
        "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1),
                             lambda x, w, b: tF.conv_transpose2d(x, w, b, stride=2, padding=1),
                             [(16, 64, 16, 16), (64, 64, 4, 4), (64,)], conv_flops(16, 64, 64, 16, 16, 4, 4), None),
        "group_norm": (lambda x, w, b: F.group_norm(x, 32, w, b), lambda x, w, b: tF.group_norm(x, 32, w, b),
                       [(16, 64, 32, 32), (64,), (64,)], None, 2 * 4 * 16 * 64 * 32 * 32),
        "attention": (F.scaled_dot_product_attention, tF.scaled_dot_product_attention,
                      [(16, 4, 256, 16)] * 3, attention_flops(64, 256, 256, 16, 16), None),
        "self_attention_block": (block, t_block, [(16, 64, 16, 16)],
                                 attention_flops(64, 256, 256, 16, 16) + 2.0 * 16 * 256 * 64 * 256, None),
    }


def torch_self_attention(torch, block):
    """The SelfAttention2d block in torch primitives, with block's weights."""
    w = {k: torch.tensor(v) for k, v in block.state_dict().items()}
    tF = torch.nn.functional

    def forward(x):
        B, C, H, W = x.shape
        h = tF.group_norm(x, 32, w["norm.weight"], w["norm.bias"]).reshape(B, C, H * W).transpose(1, 2)
        qkv = tF.linear(h, w["qkv.weight"], w["qkv.bias"]).reshape(B, H * W, 3, 4, C // 4).permute(2, 0, 3, 1, 4)
        o = tF.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, H * W, C)
        return x + tF.linear(o, w["proj.weight"], w["proj.bias"]).transpose(1, 2).reshape(B, C, H, W)
    return forward


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(ours, theirs, shapes, torch, repeats, reference=None):
    """Median seconds of forward (no graph) and forward+backward for ours and PyTorch, alternating
    (and of our primitive-op composition's forward+backward when `reference` is given)."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    upstream = {}

    def ours_fwd():
        with md.no_grad():
            ours(*arrays)

    def ours_fb():
        y = ours(*[md.Tensor(a, requires_grad=True) for a in arrays])
        y.backward(upstream.setdefault("ours", np.ones(y.shape, np.float32)))

    def torch_fwd():
        with torch.no_grad():
            theirs(*[torch.from_numpy(a) for a in arrays])

    def torch_fb():
        y = theirs(*[torch.from_numpy(a).requires_grad_() for a in arrays])
        y.backward(upstream.setdefault("torch", torch.ones_like(y)))

    def reference_fb():
        y = reference(*[md.Tensor(a, requires_grad=True) for a in arrays])
        y.backward(upstream["ours"])

    fns = {"ours_fwd": ours_fwd, "torch_fwd": torch_fwd, "ours_fb": ours_fb, "torch_fb": torch_fb}
    if reference is not None:
        fns["composition_fb"] = reference_fb
    for fn in fns.values():
        fn()  # warm-up
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(_time(fn))
    return {k: float(np.median(v)) for k, v in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="BLAS and torch threads (default: as found)")
    parser.add_argument("--name", default="layers_cpu")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    import torch
    limits = None
    if args.threads:
        torch.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(args.threads)
    rows, load_before = {}, os.getloadavg()
    print(f"{'layer':22s} {'fwd ours':>9s} {'torch':>8s} {'ratio':>6s} | {'f+b ours':>9s} {'torch':>8s} "
          f"{'ratio':>6s} | ours GFLOP/s (f+b) or GB/s")
    for name, (ours, theirs, shapes, flops, nbytes) in cases(torch).items():
        if args.only and name not in args.only:
            continue
        t = measure(ours, theirs, shapes, torch, args.repeats, REFERENCES.get(name))
        row = {"shapes": shapes, "seconds": t, "fwd_ratio": t["ours_fwd"] / t["torch_fwd"],
               "fwd_bwd_ratio": t["ours_fb"] / t["torch_fb"], "forward_flops": flops, "forward_bytes": nbytes}
        if flops:
            row.update(ours_gflops_fwd=flops / t["ours_fwd"] / 1e9, torch_gflops_fwd=flops / t["torch_fwd"] / 1e9,
                       ours_gflops_fwd_bwd=3 * flops / t["ours_fb"] / 1e9,
                       torch_gflops_fwd_bwd=3 * flops / t["torch_fb"] / 1e9)
            rate = f"{row['ours_gflops_fwd_bwd']:.1f} (torch {row['torch_gflops_fwd_bwd']:.1f}) GFLOP/s"
        else:
            row.update(ours_gbps_fwd=nbytes / t["ours_fwd"] / 1e9, ours_gbps_fwd_bwd=2 * nbytes / t["ours_fb"] / 1e9,
                       torch_gbps_fwd_bwd=2 * nbytes / t["torch_fb"] / 1e9)
            rate = f"{row['ours_gbps_fwd_bwd']:.1f} (torch {row['torch_gbps_fwd_bwd']:.1f}) GB/s"
        if "composition_fb" in t:
            row["fused_speedup_over_composition_fwd_bwd"] = t["composition_fb"] / t["ours_fb"]
            rate += f"; fused {row['fused_speedup_over_composition_fwd_bwd']:.1f}x faster than the composition"
        rows[name] = row
        print(f"{name:22s} {t['ours_fwd'] * 1e3:8.2f}m {t['torch_fwd'] * 1e3:7.2f}m {row['fwd_ratio']:6.2f} | "
              f"{t['ours_fb'] * 1e3:8.2f}m {t['torch_fb'] * 1e3:7.2f}m {row['fwd_bwd_ratio']:6.2f} | {rate}",
              flush=True)
    threads = {"torch_threads": torch.get_num_threads()}
    try:
        from threadpoolctl import threadpool_info
        threads["blas"] = [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()]
    except ImportError:
        pass
    if limits is not None:
        limits.restore_original_limits()
    load = {"before": load_before, "after": os.getloadavg(), "note": "1/5/15-minute load averages; "
            "above the core count, other processes competed for the CPU during the run"}
    path = write_result(args.name, {"dtype": "float32", "repeats": args.repeats, "threads": threads,
                                    "load_average": load,
                                    "target": "forward+backward within 3x of PyTorch CPU", "layers": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
