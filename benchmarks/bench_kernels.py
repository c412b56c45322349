"""Fused diffusion kernels vs what a user would write: time, effective GB/s, fraction of a triad.

For x of shape (64,3,32,32), (16,3,128,128), (16,3,256,256) (float32) and each op
(q_sample, eps_loss, reverse_step, reverse_step with clip_x0) this times: the Numba kernel
(writing into a preallocated `out=`, and allocating its output), the unfused NumPy expression,
PyTorch eager on the CPU (same formula, 2 threads) and, on a machine with CuPy and a GPU, the
CUDA C kernel, the Numba CUDA kernel, the unfused CuPy expression and PyTorch CUDA.

Bytes model (docs/kernels.md): each input read once, each output written once, n elements of
4 bytes: q_sample and eps_loss 3·4n, reverse_step 4·4n; effective GB/s = bytes / time.
Attainable bandwidth is measured in the same run by a 2-thread Numba STREAM triad
a[i] = b[i] + s·c[i], counted as 3 arrays: (1) over arrays 4x the 32 MiB L3 (DRAM bandwidth),
(2) over the same number of bytes as the op (same cache state). Timings are interleaved in
rounds (each candidate once per round) and the median is reported, as the machine is noisy.

    python benchmarks/bench_kernels.py [--rounds 15] [--malloc default|tuned] [--quick]

--malloc tuned re-runs itself with glibc's MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/
MALLOC_TOP_PAD_ raised, so freed arrays are reused instead of page-faulted in again; the
allocator setting is recorded in the JSON. Results: benchmarks/results/kernels_cpu[_malloc-tuned].json
and kernels_cpu[...].png.
"""
import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result  # noqa: E402

SHAPES = [(64, 3, 32, 32), (16, 3, 128, 128), (16, 3, 256, 256)]
ARRAYS_MOVED = {"q_sample": 3, "eps_loss": 3, "reverse_step": 4, "reverse_step_clip": 4}
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824",
                "MALLOC_TOP_PAD_": "268435456"}
THREADS = 2


def _setup_threads():
    import numba
    numba.set_num_threads(THREADS)
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass


# ---------------------------------------------------------------- the triad (attainable bandwidth)

def _triad_kernel():
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def triad(a, b, c, s):
        for i in prange(a.size):
            a[i] = b[i] + s * c[i]
    return triad


def triad_candidate(n_elements):
    """A callable running the triad over three float32 arrays of n_elements, and its bytes (3 arrays)."""
    triad = _triad_kernel()
    a, b, c = np.zeros(n_elements, np.float32), np.ones(n_elements, np.float32), np.ones(n_elements, np.float32)
    s = np.float32(0.5)
    return (lambda: triad(a, b, c, s)), 3 * 4 * n_elements


# ---------------------------------------------------------------- candidates per op

def coefficient_tables(sched, to):
    """The schedule's float64 tables (reference.py derives them), converted once by `to` (e.g. to float32)."""
    from minidiff.kernels.reference import eps_mean_tables, sigma_table, x0_tables
    r, e = eps_mean_tables(sched)
    u, v = x0_tables(sched)
    named = {"a": sched.sqrt_alpha_bars, "s": sched.sqrt_one_minus_alpha_bars, "r": r, "e": e, "u": u, "v": v,
             "c1": sched.posterior_mean_coef1, "c2": sched.posterior_mean_coef2, "sigma": sigma_table(sched)}
    return {k: to(np.asarray(table, dtype=np.float32)) for k, table in named.items()}


def unfused(op, d, tab, mean=np.mean, clip=np.clip):
    """The array expression a user would write: gather coefficients by t, broadcast, combine.

    d: the data (x, eps, z, t) and tab: coefficient tables, both as arrays of one library
    (NumPy, CuPy or torch); mean and clip are that library's functions.
    """
    def c(name):
        return tab[name][d["t"]].reshape(-1, 1, 1, 1)
    x, eps, z = d["x"], d["eps"], d["z"]
    if op == "q_sample":
        return lambda: c("a") * x + c("s") * eps
    if op == "eps_loss":
        two_over_n = 2.0 / math.prod(x.shape)

        def loss():
            diff = x - eps
            return mean(diff * diff), two_over_n * diff
        return loss
    if op == "reverse_step":
        return lambda: c("r") * (x - c("e") * eps) + c("sigma") * z
    return lambda: c("c1") * clip(c("u") * x - c("v") * eps, -1, 1) + c("c2") * x + c("sigma") * z


def _torch_eager(op, d, sched, device="cpu"):
    import torch

    def to(a):
        return torch.as_tensor(a).to(device)
    return unfused(op, {k: to(v) for k, v in d.items()}, coefficient_tables(sched, to), torch.mean, torch.clamp)


def _fused(op, d, sched, impl, out):
    import minidiff.kernels as K
    if op == "q_sample":
        return lambda: K.q_sample(d["x"], d["t"], d["eps"], sched, impl=impl, out=out)
    if op == "eps_loss":
        return lambda: K.eps_loss(d["x"], d["eps"], impl=impl, out=out)
    clip = op == "reverse_step_clip"
    return lambda: K.reverse_step(d["x"], d["t"], d["eps"], d["z"], sched, clip_x0=clip, impl=impl, out=out)


def fused_impls(backend):
    """The registered implementations for `backend` arrays other than the reference (impl="numpy")."""
    import minidiff.kernels as K
    return [name for name in K.serving(backend) if name != K.REFERENCE]


def cpu_candidates(op, d, sched):
    cands = {}
    for name in fused_impls("numpy"):
        cands[f"{name} (out=)"] = _fused(op, d, sched, name, np.empty_like(d["x"]))
        cands[f"{name} (new output)"] = _fused(op, d, sched, name, None)
    cands["numpy unfused"] = unfused(op, d, coefficient_tables(sched, np.asarray))
    try:
        cands["torch eager cpu"] = _torch_eager(op, d, sched)
    except ImportError:
        pass
    return cands


def gpu_candidates(op, d, sched):
    import cupy
    gd = {k: cupy.asarray(v) for k, v in d.items()}
    cands = {f"{name} (out=)": _fused(op, gd, sched, name, cupy.empty_like(gd["x"])) for name in fused_impls("cupy")}
    cands["cupy unfused"] = unfused(op, gd, coefficient_tables(sched, cupy.asarray), cupy.mean, cupy.clip)
    try:
        cands["torch eager cuda"] = _torch_eager(op, d, sched, device="cuda")
    except (ImportError, RuntimeError, AssertionError):
        pass
    return cands


def _as_numpy(result):
    if isinstance(result, tuple):  # eps_loss: (loss, grad)
        return [_as_numpy(r) for r in result]
    if hasattr(result, "detach"):
        return result.detach().cpu().numpy()
    return result.get() if hasattr(result, "get") else np.asarray(result)


def verify(op, cands, d, sched):
    """Every candidate computes the reference's result (float32 tolerance) before it is timed."""
    from minidiff.kernels import reference as R
    if op == "q_sample":
        ref = R.q_sample(d["x"], d["t"], d["eps"], sched)
    elif op == "eps_loss":
        ref = list(R.eps_loss(d["x"], d["eps"]))
    else:
        ref = R.reverse_step(d["x"], d["t"], d["eps"], d["z"], sched, clip_x0=op == "reverse_step_clip")
    for name, fn in cands.items():
        for got, want in zip(*[[a] if not isinstance(a, list) else a for a in (_as_numpy(fn()), ref)]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=f"{op} {name}")
    return cands


# ---------------------------------------------------------------- timing

def _calibrate(fn, sync, target_s=0.004):
    fn(), sync()
    t0 = time.perf_counter()
    fn(), sync()
    return max(1, math.ceil(target_s / max(time.perf_counter() - t0, 1e-7)))


def interleaved(cands, rounds, sync=lambda: None):
    """Median and min seconds per call of each candidate, timing each once per round in turn."""
    numbers = {name: _calibrate(fn, sync) for name, fn in cands.items()}
    samples = {name: [] for name in cands}
    for _ in range(rounds):
        for name, fn in cands.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / numbers[name])
    return {name: {"median_s": float(np.median(s)), "min_s": float(np.min(s)), "calls_per_sample": numbers[name]}
            for name, s in samples.items()}


# ---------------------------------------------------------------- one shape

def make_data(shape, T, seed=0):
    rng = np.random.default_rng(seed)
    data = {k: rng.standard_normal(shape, dtype=np.float32) for k in ("x", "eps", "z")}
    data["x"] = np.clip(data["x"], -1, 1)
    data["t"] = rng.integers(1, T + 1, shape[0])
    return data


def bench_shape(shape, sched, rounds, stream_triad, gpu):
    d = make_data(shape, sched.T)
    n = int(np.prod(shape))
    triads = {f"triad same bytes ({k}n)": triad_candidate(k * n // 3) for k in (3, 4)}
    cands = {name: fn for name, (fn, _) in triads.items()}
    cands["STREAM triad (4x L3)"] = stream_triad[0]
    for op in ARRAYS_MOVED:
        cands.update({(op, name): fn for name, fn in verify(op, cpu_candidates(op, d, sched), d, sched).items()})
    times = interleaved(cands, rounds)
    bw = {name: triads[name][1] / times[name]["median_s"] for name in triads}
    bw["STREAM triad (4x L3)"] = stream_triad[1] / times["STREAM triad (4x L3)"]["median_s"]
    rows = _rows(shape, n, times, bw, [op for op in ARRAYS_MOVED])
    if gpu:
        rows += _gpu_rows(shape, n, d, sched, rounds)
    return {"shape": list(shape), "elements": n, "triad_GBps": {k: v / 1e9 for k, v in bw.items()}, "rows": rows}


def _rows(shape, n, times, bw, ops):
    rows = []
    for op in ops:
        nbytes = ARRAYS_MOVED[op] * 4 * n
        same = bw[f"triad same bytes ({ARRAYS_MOVED[op]}n)"]
        entries = {name: tm for key, tm in times.items() if isinstance(key, tuple) and key[0] == op
                   for name in [key[1]]}
        for name, tm in entries.items():
            gbps = nbytes / tm["median_s"]
            rows.append({"op": op, "impl": name, "shape": list(shape), "bytes": nbytes, **tm, "GBps": gbps / 1e9,
                         "frac_stream_triad": gbps / bw["STREAM triad (4x L3)"], "frac_same_bytes_triad": gbps / same,
                         "speedup_vs_numpy_unfused": entries["numpy unfused"]["median_s"] / tm["median_s"],
                         "speedup_vs_torch_eager": (entries["torch eager cpu"]["median_s"] / tm["median_s"]
                                                    if "torch eager cpu" in entries else None)})
    return rows


def _gpu_rows(shape, n, d, sched, rounds):
    import cupy
    sync = cupy.cuda.Device().synchronize
    a, b = cupy.zeros(64 * 2**20, np.float32), cupy.ones(64 * 2**20, np.float32)
    cands = {"device copy": lambda: cupy.copyto(a, b)}
    for op in ARRAYS_MOVED:
        cands.update({(op, name): fn for name, fn in verify(op, gpu_candidates(op, d, sched), d, sched).items()})
    times = interleaved(cands, rounds, sync)
    copy_bw = 2 * a.nbytes / times.pop("device copy")["median_s"]
    rows = []
    for op in ARRAYS_MOVED:
        nbytes = ARRAYS_MOVED[op] * 4 * n
        for (o, name), tm in times.items():
            if o == op:
                rows.append({"op": op, "impl": name, "shape": list(shape), "bytes": nbytes, **tm,
                             "GBps": nbytes / tm["median_s"] / 1e9,
                             "frac_device_copy": nbytes / tm["median_s"] / copy_bw,
                             "device_copy_GBps": copy_bw / 1e9})
    return rows


# ---------------------------------------------------------------- in-kernel noise (the moonshot)

def philox_rows(shape, sched, rounds):
    """What drawing eps inside the kernels saves: the training step's noise path, eps stored vs regenerated.

    Stored: eps = Generator.standard_normal (NumPy, 1 thread) written once, read by q_sample and by
    eps_loss: 7 arrays moved. Regenerated: q_sample_philox and eps_loss_philox compute eps twice
    from (seed, offset): 4 arrays moved, but Philox + Box-Muller per element.
    """
    import minidiff.kernels as K
    d = make_data(shape, sched.T)
    x, t = d["x"], d["t"]
    out, grad, eps = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    rng = np.random.default_rng(0)

    def draw():
        return rng.standard_normal(out=eps, dtype=np.float32)

    def stored():
        draw()
        K.q_sample(x, t, eps, sched, out=out)
        return K.eps_loss(x, eps, out=grad)  # x stands in for the network's eps_hat

    def regenerated():
        K.q_sample_philox(x, t, 7, sched, out=out)
        return K.eps_loss_philox(x, 7, out=grad)
    cands = {"noise: numpy Generator.standard_normal": (draw, 1),
             "noise: Philox (numba normal)": (lambda: K.normal(7, shape), 1),
             "q_sample, eps read": (lambda: K.q_sample(x, t, eps, sched, out=out), 3),
             "q_sample_philox, eps drawn in the kernel": (lambda: K.q_sample_philox(x, t, 7, sched, out=out), 2),
             "eps_loss, eps read": (lambda: K.eps_loss(x, eps, out=grad), 3),
             "eps_loss_philox, eps regenerated": (lambda: K.eps_loss_philox(x, 7, out=grad), 2),
             "noise path, eps stored (draw + q_sample + eps_loss)": (stored, 7),
             "noise path, eps regenerated (q_sample_philox + eps_loss_philox)": (regenerated, 4)}
    times = interleaved({name: fn for name, (fn, _) in cands.items()}, rounds)
    return [{"impl": name, "shape": list(shape), "bytes": k * 4 * x.size, **times[name],
             "GBps": k * 4 * x.size / times[name]["median_s"] / 1e9,
             "ns_per_element": 1e9 * times[name]["median_s"] / x.size} for name, (_, k) in cands.items()]


# ---------------------------------------------------------------- report

def allocator_setting():
    glibc = "-".join(platform.libc_ver())
    tuned = {k: os.environ[k] for k in TUNED_MALLOC if k in os.environ}
    return {"libc": glibc, "malloc_env": tuned or "glibc defaults",
            "LD_PRELOAD": os.environ.get("LD_PRELOAD")}


def summary(shapes):
    """Targets at the largest shape: fused CPU kernels (writing into out=) >= 80% of the triad, faster than torch."""
    largest = shapes[-1]
    lines = []
    for row in largest["rows"]:
        if not row["impl"].endswith("(out=)"):
            continue
        lines.append(f"{row['op']:>18}: {row['GBps']:5.1f} GB/s = {row['frac_stream_triad']:.2f} of STREAM triad, "
                     f"{row['frac_same_bytes_triad']:.2f} of same-bytes triad; x{row['speedup_vs_numpy_unfused']:.1f} "
                     f"vs numpy unfused, x{row['speedup_vs_torch_eager'] or float('nan'):.1f} vs torch eager")
    return lines


def markdown_table(shapes):
    """The CPU rows as a Markdown table (pasted into docs/kernels.md)."""
    lines = ["| shape | op | impl | ms | GB/s | / STREAM triad | / same-bytes triad | vs numpy unfused "
             "| vs torch eager |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in shapes:
        for r in s["rows"]:
            if "frac_stream_triad" not in r:
                continue
            torch_ratio = "" if r["speedup_vs_torch_eager"] is None else f"{r['speedup_vs_torch_eager']:.2f}x"
            lines.append(f"| {'x'.join(map(str, s['shape']))} | {r['op']} | {r['impl']} | {1e3 * r['median_s']:.3f} | "
                         f"{r['GBps']:.1f} | {r['frac_stream_triad']:.2f} | {r['frac_same_bytes_triad']:.2f} | "
                         f"{r['speedup_vs_numpy_unfused']:.2f}x | {torch_ratio} |")
    triads = [f"{'x'.join(map(str, s['shape']))}: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in s["triad_GBps"].items())
              for s in shapes]
    return "\n".join(lines + [""] + triads)


def plot(shapes, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ops = list(ARRAYS_MOVED)
    impls = list(dict.fromkeys(r["impl"] for s in shapes for r in s["rows"] if "frac_stream_triad" in r))
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 4), sharey=True)
    width = 0.8 / len(impls)
    for ax, op in zip(axes, ops):
        for k, impl in enumerate(impls):
            gbps = [next((r["GBps"] for r in s["rows"] if r["op"] == op and r["impl"] == impl), 0) for s in shapes]
            ax.bar(np.arange(len(shapes)) + k * width, gbps, width, label=impl)
        ax.plot(np.arange(len(shapes)) + 0.4 - width / 2, [s["triad_GBps"]["STREAM triad (4x L3)"] for s in shapes],
                "k--", label="STREAM triad (DRAM)")
        key = f"triad same bytes ({ARRAYS_MOVED[op]}n)"
        ax.plot(np.arange(len(shapes)) + 0.4 - width / 2, [s["triad_GBps"][key] for s in shapes], "k:",
                marker="o", label="triad, same bytes")
        ax.set_xticks(np.arange(len(shapes)) + 0.4 - width / 2)
        ax.set_xticklabels(["x".join(map(str, s["shape"])) for s in shapes], fontsize=7)
        ax.set_title(op)
    axes[0].set_ylabel("effective GB/s")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"fused kernels, float32, {THREADS} threads ({platform.processor() or platform.machine()})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--malloc", choices=["default", "tuned"], default="default")
    ap.add_argument("--quick", action="store_true", help="smallest shape, 3 rounds (a smoke test)")
    ap.add_argument("--name", default="kernels_cpu", help="results file stem (e.g. per machine)")
    args = ap.parse_args()
    if args.malloc == "tuned" and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                  {**os.environ, **TUNED_MALLOC})
    _setup_threads()
    import minidiff.kernels as K
    from minidiff.diffusion import Schedule

    sched = Schedule.linear(1000)
    shapes = SHAPES[:1] if args.quick else SHAPES
    rounds = 3 if args.quick else args.rounds
    stream = triad_candidate(32 * 2**20)  # float32 arrays of 128 MiB: each 4x the 32 MiB L3
    gpu = "cupy" in K.available()
    results = [bench_shape(s, sched, rounds, stream, gpu) for s in shapes]
    for s in results:
        print(f"shape {tuple(s['shape'])}: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in s["triad_GBps"].items()))
        for r in s["rows"]:
            extra = (f"{r['frac_stream_triad']:.2f} STREAM  {r['frac_same_bytes_triad']:.2f} same-bytes  "
                     f"x{r['speedup_vs_numpy_unfused']:.2f} vs numpy" if "frac_stream_triad" in r
                     else f"{r['frac_device_copy']:.2f} of device copy")
            print(f"  {r['op']:>18} {r['impl']:>20}: {1e3 * r['median_s']:8.3f} ms {r['GBps']:6.1f} GB/s  {extra}")
    philox = [row for s in shapes for row in philox_rows(s, sched, rounds)]
    for r in philox:
        print(f"  {'x'.join(map(str, r['shape']))} {r['impl']:>66}: {1e3 * r['median_s']:8.3f} ms "
              f"{r['GBps']:6.1f} GB/s {r['ns_per_element']:6.2f} ns/element")
    lines = summary(results)
    print("\n".join(["largest shape:"] + lines))
    print(markdown_table(results))
    name = args.name + ("_quick" if args.quick else "") + ("_malloc-tuned" if args.malloc == "tuned" else "")
    payload = {"dtype": "float32", "threads": THREADS, "rounds": rounds, "allocator": allocator_setting(),
               "gpu": gpu and "measured" or "no GPU on this machine: GPU rows not measured",
               "bytes_model": {op: f"{k} arrays x 4 bytes x n (inputs read once, outputs written once)"
                               for op, k in ARRAYS_MOVED.items()},
               "attainable_bandwidth": "2-thread Numba triad a = b + s c counted as 3 arrays; 'STREAM' over "
                                       "3 x 128 MiB (4x L3), 'same bytes' over the op's byte count",
               "targets": "largest shape: numba >= 0.8 of triad and faster than torch eager cpu",
               "summary_largest": lines, "shapes": results, "philox": philox}
    print("wrote", write_result(name, payload))
    plot(results, RESULTS / f"{name}.png")


if __name__ == "__main__":
    main()
