"""Autograd engine overhead: the reverse pass over a chain of N small ops vs its forward pass.

A chain y_{k+1} = f_k(y_k) of N elementwise ops on a small tensor measures the per-node
cost of the engine (Function bookkeeping, topological sort, accumulation), not arithmetic.
Target: backward time < 2x forward time for N = 10,000.

    python benchmarks/bench_autograd.py [--n 10000] [--size 16]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minidiff as md  # noqa: E402
from common import timeit, write_result  # noqa: E402


def build_chain(x, n):
    """n ops cycling through mul, add, tanh, sub: every kind of VJP the engine routes."""
    y = x
    for k in range(n // 4):
        y = ((y * 0.9 + 0.1).tanh() - 0.05)
    return y.sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--name", default="autograd_chain", help="results file name (e.g. per machine)")
    args = ap.parse_args()

    x = md.Tensor(np.random.default_rng(0).standard_normal(args.size), requires_grad=True)
    forward = timeit(lambda: build_chain(x, args.n), repeats=args.repeats)

    def backward_only():  # build outside the timed region, time backward alone
        y = build_chain(x, args.n)
        t0 = __import__("time").perf_counter()
        y.backward()
        return __import__("time").perf_counter() - t0

    backward_only()
    samples = sorted(backward_only() for _ in range(args.repeats))
    backward = {"median_s": samples[len(samples) // 2], "min_s": samples[0], "repeats": args.repeats}
    with md.no_grad():
        no_graph = timeit(lambda: build_chain(x, args.n), repeats=args.repeats)

    ratio = backward["median_s"] / forward["median_s"]
    n_ops = 4 * (args.n // 4) + 1
    result = {
        "n_ops": n_ops, "tensor_size": args.size,
        "forward_with_graph": forward, "forward_no_grad": no_graph, "backward": backward,
        "backward_over_forward": ratio,
        "per_op_us": {"forward": 1e6 * forward["median_s"] / n_ops, "backward": 1e6 * backward["median_s"] / n_ops,
                      "forward_no_grad": 1e6 * no_graph["median_s"] / n_ops},
        "model": "per-op time is engine overhead: each op touches 2 x size x 8 bytes, negligible at size 16",
        "target": "backward_over_forward < 2",
    }
    path = write_result(args.name, result)
    print(f"{n_ops} ops on a ({args.size},) tensor: forward {1e3 * forward['median_s']:.1f} ms, "
          f"backward {1e3 * backward['median_s']:.1f} ms, ratio {ratio:.2f} (target < 2); "
          f"no_grad forward {1e3 * no_graph['median_s']:.1f} ms -> {path}")


if __name__ == "__main__":
    main()
