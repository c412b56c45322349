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


def write_result(name, payload):
    """Write payload (plus machine info) to benchmarks/results/<name>.json and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
