"""Shared benchmark helpers: machine/version record, timing by median of repeats, JSON output."""
import datetime
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info():
    """What produced a result: machine, core count, library versions, date."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    for name in ("numpy", "numba", "torch", "cupy", "scipy"):
        try:
            info[name] = __import__(name).__version__
        except Exception:
            info[name] = None
    info.update(gpu_info())
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    return info


def gpu_info():
    """The CUDA device a GPU row ran on (name, memory, driver and runtime versions), or {} without one."""
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        return {"gpu": props["name"].decode(), "gpu_memory_GiB": round(props["totalGlobalMem"] / 2**30, 1),
                "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
                "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    except Exception:
        return {}


def timeit(fn, repeats=7, number=1, warmup=1):
    """Median and minimum seconds per call of fn over `repeats` runs of `number` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    samples.sort()
    return {"median_s": samples[len(samples) // 2], "min_s": samples[0], "repeats": repeats, "number": number}


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


THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_settings():
    """What a one-process benchmark ran with: the BLAS/OpenMP libraries' thread counts (threadpoolctl), Numba's,
    and the thread variables of the environment."""
    import numba
    from threadpoolctl import threadpool_info
    return {"blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()],
            "numba": numba.get_num_threads(), "env": {k: os.environ.get(k) for k in THREAD_ENV}}


def malloc_env():
    """The glibc malloc tunables set in the environment, or "glibc defaults"."""
    tuned = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return tuned or "glibc defaults"


def write_result(name, payload):
    """Write payload (plus machine info) to benchmarks/results/<name>.json and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
