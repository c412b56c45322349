"""The original DDPM CIFAR-10 U-Net, in diffusers' configuration, imported into minidiff and timed.

    python benchmarks/bench_interop.py [--repeats 5] [--batch 1 8] [--name interop_cifar10]

No weights can be downloaded here, so diffusers builds the UNet2DModel of the DDPM CIFAR-10 model
(Ho et al. 2020: C = 128, multipliers (1, 2, 2, 2), two resnets per block, attention at 16×16,
35.7M parameters) at random initialisation (torch.manual_seed(0)) and writes it as a DDPMPipeline
folder with DDPMScheduler's defaults (linear 1e-4..0.02, T = 1000); minidiff reads it with
minidiff.interop.diffusers.import_pipeline, the path `python -m minidiff import` takes.

Measured, float32 on the CPU (the machine may be shared: see machine.load_average):
  agreement      max |eps_minidiff - eps_diffusers| / max |eps_diffusers| on one batch, t drawn in 1..T
  forward        seconds per image of one U-Net forward pass, minidiff (NumPy) and PyTorch (diffusers'
                 module under torch.no_grad), at each --batch; ours and PyTorch alternate within each
                 repeat and the medians are reported
  ddim50         seconds for one 32×32 image with DDIM, 50 steps (DDIMScheduler.set_timesteps(50)'s
                 steps, eta = 0, clipping x0_hat as the scheduler's clip_sample), in minidiff; and the
                 same chain with diffusers' DDIMScheduler and the PyTorch U-Net, for scale
Writes benchmarks/results/<name>.json.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from minidiff import backend  # noqa: E402
from minidiff.autograd import no_grad  # noqa: E402
from minidiff.interop import diffusers as interop  # noqa: E402

# diffusers' configuration of the DDPM CIFAR-10 model (the UNet2DModel config of its published port)
CIFAR10_UNET = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "norm_eps": 1e-6, "norm_num_groups": 32, "act_fn": "silu", "center_input_sample": False,
    "mid_block_scale_factor": 1, "time_embedding_type": "positional",
}


def build_pipeline(folder):
    """A randomly initialised CIFAR-10 DDPMPipeline written to `folder`; returns (unet, scheduler)."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(**CIFAR10_UNET).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              clip_sample=True, variance_type="fixed_small")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet, scheduler


def agreement(model, unet, batch, seed=0):
    """Relative max difference of eps_hat between minidiff and diffusers on one batch."""
    import torch
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    t = rng.integers(1, model.T + 1, batch)
    with no_grad():
        ours = model.eps_array(x, t)
    with torch.no_grad():
        theirs = unet(torch.from_numpy(x), torch.from_numpy(t - 1)).sample.numpy()   # diffusers counts t - 1
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def forward_times(model, unet, batch, repeats):
    """Median seconds per image of one forward pass, ours and PyTorch's, alternating within each repeat."""
    import torch
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    t = rng.integers(1, model.T + 1, batch)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t - 1)
    ours, theirs = [], []
    with no_grad(), torch.no_grad():
        model.eps_array(x, t), unet(xt, tt)                              # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model.eps_array(x, t)
            ours.append((time.perf_counter() - start) / batch)
            start = time.perf_counter()
            unet(xt, tt)
            theirs.append((time.perf_counter() - start) / batch)
    return {"batch": batch, "minidiff_s_per_image": float(np.median(ours)),
            "pytorch_s_per_image": float(np.median(theirs)), "ratio": float(np.median(ours) / np.median(theirs)),
            "repeats": repeats}


def ddim50_minidiff(model, config):
    steps = interop.ddim_timesteps(config, 50)
    start = time.perf_counter()
    image = model.sample(1, backend.default_rng(seed=0), sampler="ddim", steps=steps)
    seconds = time.perf_counter() - start
    assert image.shape == (1, 3, 32, 32) and np.all(np.isfinite(image))
    return seconds


def ddim50_pytorch(unet, scheduler_config):
    import torch
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(50)
    x = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        for t_d in scheduler.timesteps:
            x = scheduler.step(unet(x, t_d).sample, t_d, x, eta=0.0).prev_sample
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--name", default="interop_cifar10")
    args = p.parse_args()
    import torch
    with tempfile.TemporaryDirectory() as folder:
        unet, scheduler = build_pipeline(folder)
        model = interop.import_pipeline(folder)
        model.eval()
        config = dict(scheduler.config)
    params_diffusers = sum(p.numel() for p in unet.parameters())
    params_minidiff = sum(int(p.data.size) for p in model.unet.parameters())
    print(f"parameters: diffusers {params_diffusers:,}, minidiff {params_minidiff:,}", flush=True)
    result = {"config": CIFAR10_UNET, "parameters": params_diffusers, "parameters_minidiff": params_minidiff,
              "dtype": "float32", "torch_threads": torch.get_num_threads(),
              "load_average_before": list(os.getloadavg())}
    result["eps_relative_max_difference"] = agreement(model, unet, batch=4)
    print(f"eps agreement (float32, batch 4): {result['eps_relative_max_difference']:.2e}", flush=True)
    result["forward"] = []
    for batch in args.batch:
        row = forward_times(model, unet, batch, args.repeats)
        result["forward"].append(row)
        print(f"forward, batch {batch}: minidiff {row['minidiff_s_per_image']:.3f} s/image, PyTorch "
              f"{row['pytorch_s_per_image']:.3f} s/image, ratio {row['ratio']:.1f}", flush=True)
    result["ddim50_one_image_s"] = {"minidiff": ddim50_minidiff(model, config), "pytorch": ddim50_pytorch(unet, config)}
    print(f"DDIM-50, one 32x32 image: minidiff {result['ddim50_one_image_s']['minidiff']:.1f} s, PyTorch "
          f"{result['ddim50_one_image_s']['pytorch']:.1f} s", flush=True)
    result["load_average_after"] = list(os.getloadavg())
    print(f"wrote {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
