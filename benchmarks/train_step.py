"""U-Net training step, sampling step and memory: minidiff against the identical PyTorch U-Net.

    python benchmarks/train_step.py --config digits --json benchmarks/results/train_step_digits.json
    python benchmarks/train_step.py --config 32x32  --json benchmarks/results/train_step_32x32.json
    options: --rounds 5 (processes per framework) --steps 5 (timed steps per process) --threads 2
             --malloc default|tuned --no-sampling --baseline DIR (also time the minidiff checked out in DIR; repeatable)

Configs (float32, dropout 0.1, Adam lr 2e-3, loss = mean (eps_hat − eps)²):
  digits  the README main job's U-Net: 1×8×8, C = 32, mults 1-2, 1 res block, attention at 4×4, B = 64
  32x32   3×32×32, C = 64, mults 1-2-2, 2 res blocks, attention at 8×8, 4 heads, B = 16

Procedure. The parent process draws one set of weights (conv_out too, so the output is not 0) and one
batch, writes them to a scratch .npz, builds minidiff's UNet and minidiff.interop.torch_unet's mirror from
them in float64 and asserts their outputs agree to 1e-10 (and the parameter counts match) before timing
anything. Then it starts one worker process per measurement, alternating ours/torch/ours/torch... over
`--rounds` rounds (one process never runs both frameworks: OpenBLAS threads left spinning by one slow
the other). Each worker times, after 2 warm-up steps:
  step     a full training step: zero grads, forward, loss, backward, Adam (median of --steps), and its parts
  forward  a no-grad eval-mode forward of the same batch (one sampling step; median of --steps)
  peak     the peak resident-memory growth over one training step: free heap pages are returned first
           (malloc_trim), VmHWM is reset to VmRSS (/proc/self/clear_refs), one step runs, growth = VmHWM − VmRSS
  sampling (digits only) images/s for 64 images by 200-step DDPM and 50-step DDIM (clipped x0, one run each)
and prints one JSON line. Every time is taken as wall time and as the process's CPU time (`*_cpu_s`:
with one thread each, the work done, whatever the machine's load). Reported: the median over processes of
each worker's median; ratio = ours/torch (cpu_ratio, forward_cpu_ratio: the same in CPU time);
paired_ratios: ours/torch of each round's two processes (their spread is the load's effect).
With --baseline DIR (repeatable) each round also runs the ours worker on the minidiff package found in each DIR
(PYTHONPATH=DIR, e.g. an older commit unpacked by `git archive`), in the order baselines, ours, torch, and
reports `baselines` (per DIR: its medians and its ratios to torch) and `vs_baselines` (per DIR: ours/baseline,
median and per round): changes of our own code measured against the code before them in the same rounds.

FLOPs model (multiply-add = 2 FLOPs), counted on the PyTorch mirror with forward hooks: conv/conv-transpose
2·B·O·Ho·Wo·C·kh·kw (the transposed conv: that of the conv it is the adjoint of), linear 2·rows·in·out,
attention 2·2·B·heads·N²·d for QKᵀ and PV; a training step ≈ 3× the forward (two products per product in
backward). Bytes model: parameters (4 bytes each, read once and written by Adam with its two moments: 4×)
plus the forward activations written by the counted layers (4 bytes per output element).
"""
import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

CONFIGS = {
    "digits": dict(unet=dict(in_channels=1, image_size=8, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                             attention_resolutions=(4,), dropout=0.1, groups=8, heads=1), batch=64, sampling=True),
    "32x32": dict(unet=dict(in_channels=3, image_size=32, base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                            attention_resolutions=(8,), dropout=0.1, groups=8, heads=4), batch=16, sampling=False),
}
LR, SAMPLE_IMAGES, T_STEPS, DDIM_STEPS = 2e-3, 64, 200, 50
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824",
                "MALLOC_TOP_PAD_": "268435456"}


# ---------------------------------------------------------------- memory probes (Linux, glibc)

def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_growth_mib(fn):
    """Peak resident-set growth (MiB) while fn() runs, above the live memory before it."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                          # VmHWM := VmRSS
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def median_time(fn, repeats):
    return median_times(fn, repeats)[0]


def median_times(fn, repeats):
    """Medians over `repeats` calls of the wall time and of the process's CPU time (all its threads).

    With one thread per framework the CPU time is the work done, whatever the machine's load: a process
    descheduled by other jobs loses wall time but no CPU time (cache and memory-bus sharing still show)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


# ---------------------------------------------------------------- shared set-up

def make_inputs(cfg, path, seed=0):
    """Weights of a freshly initialised minidiff UNet (conv_out drawn N(0, 0.02²)) and one batch, saved to path.

    cfg: a CONFIGS entry (its "unet" keyword arguments and "batch" size).
    """
    import minidiff
    from minidiff.models.unet import UNet
    minidiff.manual_seed(seed)
    model = UNet(**cfg["unet"])
    rng = np.random.default_rng(seed)
    for p in (model.conv_out.weight, model.conv_out.bias):
        p.data = (0.02 * rng.standard_normal(p.shape)).astype(np.float32)
    u, B = cfg["unet"], cfg["batch"]
    shape = (B, u["in_channels"], u["image_size"], u["image_size"])
    batch = {"x_t": rng.standard_normal(shape).astype(np.float32), "eps": rng.standard_normal(shape).astype(np.float32),
             "t": rng.integers(1, T_STEPS + 1, size=B)}
    np.savez(path, **{f"w.{k}": v for k, v in model.state_dict().items()}, **batch)
    return model


def load_inputs(path):
    with np.load(path) as f:
        weights = {k[2:]: f[k] for k in f.files if k.startswith("w.")}
        return weights, {k: f[k] for k in ("x_t", "eps", "t")}


def ours_in_process(cfg):
    """(model, Adam, batch) for timing minidiff's step inside this process: the U-Net of cfg with `make_inputs`'
    weights (written to a temporary file and read back) and batch, Adam at LR."""
    from minidiff import optim
    from minidiff.models.unet import UNet
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "inputs.npz")
        make_inputs(cfg, path)
        weights, batch = load_inputs(path)
    model = UNet(**cfg["unet"])
    model.load_state_dict(weights)
    return model, optim.Adam(list(model.parameters()), lr=LR), batch


def check_float64_agreement(cfg, path, tol=1e-10):
    """Assert the float64 outputs of both U-Nets agree to tol (eval mode, same weights); return facts.

    The error is max |ours − torch| / max(max |torch|, 1); the parameter counts must also be equal.
    """
    import torch

    import minidiff as md
    from minidiff.interop.torch_unet import torch_unet_from
    from minidiff.models.unet import UNet
    weights, batch = load_inputs(path)
    model = UNet(**cfg["unet"], dtype=np.float64)
    model.load_state_dict(weights)
    model.eval()
    net = torch_unet_from(model)
    x, t = batch["x_t"].astype(np.float64), batch["t"]
    ours = model(md.Tensor(x), t).numpy()
    with torch.no_grad():
        theirs = net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    err = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1.0))
    params, torch_params = model.num_parameters(), sum(p.numel() for p in net.parameters())
    if not err < tol or params != torch_params:
        raise AssertionError(f"the U-Nets differ: float64 relative error {err:.3g} (tolerance {tol:g}), "
                             f"parameters {params} vs {torch_params}")
    return {"float64_max_rel_err": err, "params": params, **flops_model(net.float(), batch)}


def flops_model(net, batch):
    """Forward FLOPs and bytes by forward hooks on the mirror's conv, linear and attention layers (docstring)."""
    import torch
    from torch import nn

    from minidiff.interop.torch_unet import SelfAttention2d
    count = {"flops": 0.0, "activation_elements": 0}

    def hook(module, inputs, out):
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            k = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
            count["flops"] += 2.0 * out.numel() * k
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
            count["flops"] += 2.0 * x.numel() * k
        elif isinstance(module, nn.Linear):
            count["flops"] += 2.0 * out.numel() * module.in_features
        elif isinstance(module, SelfAttention2d):
            B, C, H, W = x.shape
            count["flops"] += 4.0 * B * (H * W) ** 2 * C
        count["activation_elements"] += out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, SelfAttention2d))]
    with torch.no_grad():
        net.eval()(torch.from_numpy(batch["x_t"]), torch.from_numpy(batch["t"]))
    for h in handles:
        h.remove()
    params = sum(p.numel() for p in net.parameters())
    return {"forward_gflop": count["flops"] / 1e9, "step_gflop": 3 * count["flops"] / 1e9,
            "bytes_model": {"parameter_bytes_step": 4 * 4 * params,
                            "forward_activation_bytes": 4 * count["activation_elements"]}}


# ---------------------------------------------------------------- the two workers

def limit_threads(n):
    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(n)
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    return [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()]


def timed_step(parts, forward_loss, opt):
    """One training step after zero_grad, its three parts timed into `parts`: forward + loss, backward, the
    optimiser step (the same split for both frameworks: their losses have .backward(), optimisers .step())."""
    t0 = time.perf_counter()
    loss = forward_loss()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
        parts[key].append(dt)


def worker_ours(config, path, steps, threads):
    import minidiff as md
    from minidiff import diffusion, optim
    from minidiff.models.ddpm import DDPM
    from minidiff.models.unet import UNet
    blas = limit_threads(threads)
    weights, batch = load_inputs(path)
    cfg = CONFIGS[config]
    if cfg["sampling"]:
        ddpm = DDPM(image_shape=(cfg["unet"]["in_channels"],) + (cfg["unet"]["image_size"],) * 2, T=T_STEPS)
        model = ddpm.unet
        if model.config != UNet(**cfg["unet"]).config:
            raise AssertionError("the DDPM's default U-Net is not the benchmarked configuration")
    else:
        model = UNet(**cfg["unet"])
    model.load_state_dict(weights)
    opt = optim.Adam(list(model.parameters()), lr=LR)
    x_t, eps, t = batch["x_t"], batch["eps"], batch["t"]
    parts = {"forward_loss_s": [], "backward_s": [], "optimizer_s": []}

    def step():
        model.train()
        opt.zero_grad()
        timed_step(parts, lambda: diffusion.fused_eps_loss(model(md.Tensor(x_t), t), eps), opt)

    def forward():
        model.eval()
        with md.no_grad():
            model(md.Tensor(x_t), t)

    result = run_worker(step, forward, steps)
    result.update({k: statistics.median(v[2:2 + steps]) for k, v in parts.items()})   # the timed steps
    if cfg["sampling"]:
        rng = np.random.default_rng(0)
        result["ddpm200_images_per_s"] = SAMPLE_IMAGES / median_time(
            lambda: ddpm.sample(SAMPLE_IMAGES, rng, sampler="ddpm"), 1)
        result["ddim50_images_per_s"] = SAMPLE_IMAGES / median_time(
            lambda: ddpm.sample(SAMPLE_IMAGES, rng, sampler="ddim", steps=DDIM_STEPS), 1)
    return {**result, "blas": blas}


def worker_torch(config, path, steps, threads):
    import torch

    from minidiff import diffusion
    from minidiff.interop.torch_unet import TorchUNet
    torch.set_num_threads(threads)
    blas = limit_threads(threads)
    weights, batch = load_inputs(path)
    cfg = CONFIGS[config]
    net = TorchUNet(**cfg["unet"])
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x_t, eps, t = (torch.from_numpy(batch[k]) for k in ("x_t", "eps", "t"))
    parts = {"forward_loss_s": [], "backward_s": [], "optimizer_s": []}

    def step():
        net.train()
        opt.zero_grad(set_to_none=True)
        timed_step(parts, lambda: ((net(x_t, t) - eps) ** 2).mean(), opt)

    def forward():
        net.eval()
        with torch.no_grad():
            net(x_t, t)

    result = run_worker(step, forward, steps)
    result.update({k: statistics.median(v[2:2 + steps]) for k, v in parts.items()})   # the timed steps
    if cfg["sampling"]:
        schedule = diffusion.make_schedule("cosine", T_STEPS)
        shape = (SAMPLE_IMAGES,) + tuple(x_t.shape[1:])
        result["ddpm200_images_per_s"] = SAMPLE_IMAGES / median_time(
            lambda: torch_ddpm_sample(net, shape, schedule), 1)
        result["ddim50_images_per_s"] = SAMPLE_IMAGES / median_time(
            lambda: torch_ddim_sample(net, shape, schedule.respace(DDIM_STEPS)), 1)
    result["torch_threads"] = torch.get_num_threads()
    return {**result, "blas": blas}


def run_worker(step, forward, steps):
    for _ in range(2):
        step()
    step_s, step_cpu_s = median_times(step, steps)
    peak = peak_growth_mib(step)
    forward()
    forward_s, forward_cpu_s = median_times(forward, steps)
    return {"step_s": step_s, "forward_s": forward_s, "peak_mib": peak, "step_cpu_s": step_cpu_s,
            "forward_cpu_s": forward_cpu_s}


def torch_ddpm_sample(net, shape, schedule):
    """Ancestral sampling with clipped x0 and the fixed-small variance, as minidiff's DDPM.sample('ddpm')."""
    import torch
    from minidiff.kernels.reference import sigma_table
    net.eval()
    ab, c1, c2 = schedule.alpha_bars, schedule.posterior_mean_coef1, schedule.posterior_mean_coef2
    sigma = sigma_table(schedule, "fixed_small")
    x = torch.randn(shape)
    with torch.no_grad():
        for k in range(schedule.T, 0, -1):
            eps = net(x, torch.full((shape[0],), k))
            x0 = ((x - (1 - ab[k]) ** 0.5 * eps) / ab[k] ** 0.5).clamp(-1, 1)
            x = c1[k] * x0 + c2[k] * x + (sigma[k] * torch.randn(shape) if k > 1 else 0.0)
    return x


def torch_ddim_sample(net, shape, chain):
    """Deterministic DDIM (eta = 0) with clipped x0 on a respaced chain, as DDPM.sample('ddim', steps=K)."""
    import torch
    net.eval()
    ab = chain.alpha_bars
    x = torch.randn(shape)
    with torch.no_grad():
        for k in range(chain.T, 0, -1):
            eps = net(x, torch.full((shape[0],), int(chain.timesteps[k])))
            x0 = ((x - (1 - ab[k]) ** 0.5 * eps) / ab[k] ** 0.5).clamp(-1, 1)
            eps = (x - ab[k] ** 0.5 * x0) / (1 - ab[k]) ** 0.5
            x = ab[k - 1] ** 0.5 * x0 + (1 - ab[k - 1]) ** 0.5 * eps
    return x


WORKERS = {"ours": worker_ours, "torch": worker_torch}


# ---------------------------------------------------------------- the parent

def spawn(framework, config, path, args, env):
    if framework != "torch" and framework != "ours":                     # a --baseline checkout
        framework, env = "ours", dict(env, PYTHONPATH=os.pathsep.join(filter(None, [framework,
                                                                                  env.get("PYTHONPATH")])))
    cmd = [sys.executable, __file__, "--config", config, "--worker", framework, "--inputs", path,
           "--steps", str(args.steps), "--threads", str(args.threads)] + (["--no-sampling"] if args.no_sampling else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{framework} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def allocator_setting(env):
    import platform
    tuned = {k: env[k] for k in TUNED_MALLOC if k in env}
    return {"libc": "-".join(platform.libc_ver()), "malloc_env": tuned or "glibc defaults",
            "LD_PRELOAD": env.get("LD_PRELOAD")}


def summarise(runs, facts):
    med = {fw: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], float)}
           for fw, rs in runs.items()}
    ours, theirs = med["ours"], med["torch"]
    out = {"ours_step_s": ours["step_s"], "torch_step_s": theirs["step_s"], "ratio": ours["step_s"] / theirs["step_s"],
           "ours_forward_s": ours["forward_s"], "torch_forward_s": theirs["forward_s"],
           "forward_ratio": ours["forward_s"] / theirs["forward_s"],
           "ours_peak_mib": ours["peak_mib"], "torch_peak_mib": theirs["peak_mib"],
           "peak_ratio": ours["peak_mib"] / theirs["peak_mib"], "params": facts["params"],
           "step_parts_s": {fw: {k: m[k] for k in ("forward_loss_s", "backward_s", "optimizer_s")}
                            for fw, m in med.items()},
           # CPU time (one thread each): the load-independent comparison
           "ours_step_cpu_s": ours["step_cpu_s"], "torch_step_cpu_s": theirs["step_cpu_s"],
           "cpu_ratio": ours["step_cpu_s"] / theirs["step_cpu_s"],
           "forward_cpu_ratio": ours["forward_cpu_s"] / theirs["forward_cpu_s"],
           "step_gflops_per_s": {fw: facts["step_gflop"] / m["step_s"] for fw, m in med.items()},
           # ours_i / torch_i of the processes run back to back: on a shared machine the load changes between
           # rounds, and the spread of these says how far one ratio can be trusted
           "paired_ratios": {k: [a[k] / b[k] for a, b in zip(runs["ours"], runs["torch"])]
                             for k in ("step_s", "forward_s", "peak_mib", "step_cpu_s", "forward_cpu_s")}}
    if "ddpm200_images_per_s" in ours:
        out["sampling_images_per_s"] = {fw: {"ddpm200": m["ddpm200_images_per_s"], "ddim50": m["ddim50_images_per_s"]}
                                        for fw, m in med.items()}
        out["sampling_ratio"] = {k: theirs[f"{k}_images_per_s"] / ours[f"{k}_images_per_s"]
                                 for k in ("ddpm200", "ddim50")}         # time ours / time torch
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="digits")
    ap.add_argument("--json", help="where to write the results JSON")
    ap.add_argument("--rounds", type=int, default=5, help="worker processes per framework (alternating)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per worker")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--malloc", choices=["default", "tuned"], default="default")
    ap.add_argument("--no-sampling", action="store_true")
    ap.add_argument("--baseline", metavar="DIR", action="append", default=[],
                    help="a checkout of another minidiff version to time as well (repeatable)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.no_sampling:
        CONFIGS[args.config]["sampling"] = False
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.config, args.inputs, args.steps, args.threads)))
        return
    if args.rounds < 1 or args.steps < 1:
        ap.error("--rounds and --steps must be >= 1")
    env = dict(os.environ, **(TUNED_MALLOC if args.malloc == "tuned" else {}))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.npz")
        make_inputs(CONFIGS[args.config], path)
        facts = check_float64_agreement(CONFIGS[args.config], path)
        print(f"float64 outputs agree: max rel err {facts['float64_max_rel_err']:.2e}, {facts['params']} parameters")
        load_before = os.getloadavg()
        frameworks = tuple(os.path.abspath(d) for d in args.baseline) + ("ours", "torch")
        runs = {fw: [] for fw in frameworks}
        for r in range(args.rounds):
            for fw in frameworks:
                runs[fw].append(spawn(fw, args.config, path, args, env))
                last = runs[fw][-1]
                print(f"round {r + 1}/{args.rounds} {Path(fw).name:>8}: step {1e3 * last['step_s']:8.1f} ms, forward "
                      f"{1e3 * last['forward_s']:7.1f} ms, peak +{last['peak_mib']:6.0f} MiB, CPU step "
                      f"{1e3 * last['step_cpu_s']:7.1f} ms, forward {1e3 * last['forward_cpu_s']:6.1f} ms", flush=True)
    result = summarise({fw: runs[fw] for fw in ("ours", "torch")}, facts)
    keys = ("step_s", "forward_s", "peak_mib", "step_cpu_s", "forward_cpu_s")
    base_dirs = frameworks[:-2]
    shown = {d: os.path.relpath(d) for d in base_dirs}                 # keys as the user's tree names them
    result["baselines"] = {shown[d]: summarise({"ours": runs[d], "torch": runs["torch"]}, facts) for d in base_dirs}
    result["vs_baselines"] = {shown[d]: {k: {"median": statistics.median(r[k] for r in runs["ours"])
                                      / statistics.median(r[k] for r in runs[d]),
                                      "paired": [a[k] / b[k] for a, b in zip(runs["ours"], runs[d])]} for k in keys}
                              for d in base_dirs}
    result.update({"config": args.config, "unet": CONFIGS[args.config]["unet"],
                   "batch_size": CONFIGS[args.config]["batch"], "dtype": "float32", "optimizer": f"Adam(lr={LR})",
                   "rounds": args.rounds, "steps_per_process": args.steps, "threads": args.threads,
                   "blas": runs["ours"][0]["blas"], "torch_threads": runs["torch"][0]["torch_threads"],
                   "allocator": allocator_setting(env), "load_average_before_after": [load_before, os.getloadavg()],
                   "float64_max_rel_err": facts["float64_max_rel_err"], "forward_gflop": facts["forward_gflop"],
                   "step_gflop": facts["step_gflop"], "bytes_model": facts["bytes_model"],
                   "machine": machine_info(), "runs": {shown.get(fw, fw): r for fw, r in runs.items()}})
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "machine", "blas")}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
