"""Where minidiff's U-Net training step goes: CPU time per Function (forward and backward), per step.

    python benchmarks/profile_step.py [--config digits] [--steps 8] [--batch B] [--json PATH]

Builds train_step.py's configuration (same weights and batch as its `make_inputs`, float32, Adam, dropout
0.1), runs 2 warm-up steps, then `--steps` training steps on one thread (BLAS, Numba), with every
Function subclass's forward and backward wrapped by a process-CPU-time accumulator. Reported per step
(the mean over the timed steps): each Function's forward and backward milliseconds, Adam's step, and the
rest of the step (graph building, the backward loop, gradient accumulation, Python): the step's CPU time
minus the Functions' and Adam's. The wrappers cost a few µs per call (≈ 175 calls per step). With
--by-layer, Conv2d's forward and backward are reported per layer shape (C_in, C_out, H×W, kernel, stride),
per step (a shape that occurs n times in the U-Net counts n calls). Also per step: the system CPU time and
the minor page faults (`getrusage`), which the allocator's state moves (docs/benchmarks.md round 4).
"""
import argparse
import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402
from train_step import CONFIGS, limit_threads, ours_in_process  # noqa: E402


def all_functions():
    from minidiff.autograd import Function
    out, todo = [], [Function]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


def conv_layer(fn, kind, args, kwargs):
    """' (C_in, C_out, H×W, k×k, stride s)' of the Conv2d a forward or backward call belongs to."""
    x, w = (args[0], args[1]) if kind == "forward" else (fn.x, fn.w)
    stride = kwargs.get("stride", (1, 1)) if kind == "forward" else fn.geometry[0]
    return f" ({x.shape[1]}, {w.shape[0]}, {x.shape[2]}×{x.shape[3]}, {w.shape[2]}×{w.shape[3]}, stride {stride[0]})"


def instrument(totals, by_layer=False):
    """Wrap forward and backward of every Function subclass that defines them, adding CPU seconds to totals
    (Conv2d's split by layer shape when by_layer)."""
    def timed(cls, kind, method):
        def wrapper(self, *args, **kwargs):
            c0 = time.process_time()
            try:
                return method(self, *args, **kwargs)
            finally:
                name = f"{cls.__name__}.{kind}"
                if by_layer and cls.__name__ == "Conv2d":
                    name += conv_layer(self, kind, args, kwargs)
                totals[name] += time.process_time() - c0
        return wrapper

    for cls in all_functions():
        for kind in ("forward", "backward"):
            if kind in vars(cls):
                setattr(cls, kind, timed(cls, kind, vars(cls)[kind]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="digits")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--by-layer", action="store_true", help="split Conv2d's time by layer shape")
    ap.add_argument("--batch", type=int, help="batch size (default: the config's); --batch 1 shows the step's "
                                              "fixed cost, what does not grow with the data")
    ap.add_argument("--json")
    args = ap.parse_args()
    limit_threads(1)
    import minidiff as md
    from minidiff import diffusion

    cfg = dict(CONFIGS[args.config], **({} if args.batch is None else {"batch": args.batch}))
    model, opt, batch = ours_in_process(cfg)
    totals = defaultdict(float)

    def step():
        model.train()
        opt.zero_grad()
        diffusion.fused_eps_loss(model(md.Tensor(batch["x_t"]), batch["t"]), batch["eps"]).backward()
        c0 = time.process_time()
        opt.step()
        totals["Adam.step"] += time.process_time() - c0

    for _ in range(2):
        step()
    instrument(totals, args.by_layer)
    totals.clear()
    c0, r0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.steps):
        step()
    step_ms = 1e3 * (time.process_time() - c0) / args.steps
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    # page faults cost system time inside the Functions that touch fresh memory (the allocator's state)
    kernel = {"system_cpu_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / args.steps,
              "minor_page_faults": (r1.ru_minflt - r0.ru_minflt) / args.steps}
    per_step = {k: 1e3 * v / args.steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    per_step["rest (graph, backward loop, Python)"] = step_ms - sum(per_step.values())
    for k, v in per_step.items():
        print(f"{v:8.2f} ms  {k}")
    print(f"{step_ms:8.2f} ms  step (CPU), of which {kernel['system_cpu_ms']:.2f} ms system time; "
          f"{kernel['minor_page_faults']:.0f} page faults per step")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "batch": cfg["batch"], "steps": args.steps,
                                               "by_layer": args.by_layer, "step_cpu_ms": step_ms,
                                               "per_step_kernel": kernel,
                                               "per_step_cpu_ms": per_step, "load_average": os.getloadavg(),
                                               "machine": machine_info()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
