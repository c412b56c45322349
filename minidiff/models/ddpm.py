"""The DDPM (Ho et al. 2020): a U-Net eps_theta trained with the fused eps-loss (docs/training.md §5).

Training step (Algorithm 1), with the fused kernels of minidiff.kernels:
    t ~ U{1..T}, eps ~ N(0, I)
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps        kernels.q_sample (fused, eq. F5)
    L   = mean over B x D of (eps_hat(x_t, t) - eps)^2             diffusion.fused_eps_loss (squared noise units)
Evaluation: the VLB of the test images in bits/dim by the full loop over t (diffusion.nll_bpd), with
the discretised decoder on the data's own grid of `levels` grey levels (the dataset's), beside the
log2(levels) bits/dim of a uniform guess over those levels.
Sampling: any sampler registered in diffusion.SAMPLERS ('ddpm': the fused reverse step; 'ddim'), on a
respaced chain if asked. The schedule is any name registered in diffusion.SCHEDULES (with its options).
The network is any U-Net of `UNETS` (`--set unet=diffusers`: diffusers' UNet2DModel layout, docs/interop.md),
or for points (B, D) the time-embedded MLP (`network="mlp"`, the toy 2-D sets, docs/score.md §4); it
predicts eps, x_0 or v (`prediction`), converted to eps_hat for the samplers and the VLB (eq. E2, E5).
"""
import math
import os

import numpy as np

import minidiff.kernels as kernels
from minidiff import checks, diffusion, nn, plots
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import to_numpy, xp_of
from minidiff.diffusion.process import PREDICTIONS
from minidiff.models.base import as_images, loss_figure, register
from minidiff.models.time_mlp import TimeMLP
from minidiff.models.unet import UNet
from minidiff.models.unet_diffusers import DiffusersUNet


def teaching_unet(image_shape, hp, dtype):
    """The teaching U-Net (models/unet.py) with the DDPM's widths."""
    c, h, _ = image_shape
    return UNet(c, h, hp["base_channels"], tuple(hp["channel_mults"]), hp["num_res_blocks"],
                tuple(hp["attention_resolutions"]), hp["dropout"], dtype=dtype)


def diffusers_unet(image_shape, hp, dtype):
    """diffusers' UNet2DModel layout with the same widths, then any UNet2DModel argument in hp["unet_config"]."""
    c, h, _ = image_shape
    chans = [hp["base_channels"] * m for m in hp["channel_mults"]]
    attention = [h // 2 ** i in hp["attention_resolutions"] for i in range(len(chans))]
    config = {"sample_size": h, "in_channels": c, "out_channels": c, "block_out_channels": chans,
              "layers_per_block": hp["num_res_blocks"], "attention_head_dim": None, "dropout": hp["dropout"],
              "norm_num_groups": math.gcd(8, *chans),
              "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
              "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]}
    return DiffusersUNet(**{**config, **(hp["unet_config"] or {})}, dtype=dtype)


UNETS = {"teaching": teaching_unet, "diffusers": diffusers_unet}   # DDPM(unet=NAME), `--set unet=NAME`


def unet(image_shape, hp, dtype):
    """The U-Net of UNETS named by hp["unet"], for images (C, H, W) with H = W."""
    c, h, w = image_shape
    if h != w:
        raise ValueError(f"DDPM: square images only, got {h}x{w}")
    return UNETS[hp["unet"]](image_shape, hp, dtype)


def time_mlp(point_shape, hp, dtype):
    """The time-embedded MLP (models/time_mlp.py) for points (D,)."""
    return TimeMLP(point_shape[0], hp["hidden"], hp["depth"], dtype=dtype)


# The noise networks, DDPM(network=NAME): (builder(data shape, hparams, dtype), the data's rank, the hparams
# only it reads). The network sits in the attribute of its name (state-dict keys "unet.*" or "mlp.*").
NETWORKS = {"unet": (unet, 3, ("base_channels", "channel_mults", "num_res_blocks", "attention_resolutions",
                                "dropout", "unet", "unet_config")),
            "mlp": (time_mlp, 1, ("hidden", "depth"))}


@register
class DDPM(nn.Module):
    """network: "unet" (images (C, H, W), the default) or "mlp" (points (D,)), from NETWORKS.

    The hparams hold the chosen network's own keys only; "network" enters them only when it is not the
    U-Net, so U-Net checkpoints are written as before.
    """
    name = "ddpm"
    TAKES_POINTS = True   # `train ddpm --dataset two-moons` (the CLI's check)
    TRAIN_DEFAULTS = dict(steps=1500, batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=0.995)

    def __init__(self, image_shape=(1, 8, 8), T=200, schedule="cosine", base_channels=32, channel_mults=(1, 2),
                 num_res_blocks=1, attention_resolutions=(4,), dropout=0.1, eval_images=64, unet="teaching",
                 unet_config=None, schedule_options=None, prediction="eps", clip_x0=True, levels=256, network="unet",
                 hidden=128, depth=3, dtype=None):
        super().__init__()
        self.schedule = diffusion.make_schedule(schedule, T, **(schedule_options or {}))   # a diffusion.SCHEDULES name
        if network not in NETWORKS or unet not in UNETS or prediction not in PREDICTIONS:
            raise ValueError(f"DDPM: network must be one of {list(NETWORKS)}, unet one of {list(UNETS)} and "
                             f"prediction one of {PREDICTIONS}, got {network!r}, {unet!r}, {prediction!r}")
        build, rank, own = NETWORKS[network]
        if len(image_shape) != rank:
            raise ValueError(f"DDPM: network {network!r} takes data of shape {'(C, H, W)' if rank == 3 else '(D,)'}, "
                             f"got image_shape {tuple(image_shape)}")
        options = {"base_channels": base_channels, "channel_mults": list(channel_mults),
                   "num_res_blocks": num_res_blocks, "attention_resolutions": list(attention_resolutions),
                   "dropout": dropout, "unet": unet, "unet_config": unet_config, "hidden": hidden, "depth": depth}
        self.hparams = {"image_shape": list(image_shape), "T": T, "schedule": schedule,
                        **{key: options[key] for key in NETWORKS["unet"][2] if key in own},
                        "eval_images": eval_images, "schedule_options": schedule_options, "prediction": prediction,
                        "clip_x0": clip_x0, **({"levels": levels} if network == "unet" else {}),
                        **({} if network == "unet" else {"network": network, **{key: options[key] for key in own}})}
        if network == "unet":
            checks.integer("levels", levels, minimum=2, where="DDPM")   # the data's grey levels, K >= 2
        self.image_shape, self.T, self.network = tuple(image_shape), T, network
        setattr(self, network, build(self.image_shape, options, dtype))

    @property
    def is_points(self):
        """Point data (B, D) rather than images: no [-1, 1] grid, scatter figures, a Gaussian VLB decoder."""
        return self.network == "mlp"

    @classmethod
    def inapplicable_hparams(cls, hparams):
        """The keys of `hparams` that the network it names (hparams.get("network", "unet")) does not read."""
        network = hparams.get("network", "unet")
        own = NETWORKS[network][2] if network in NETWORKS else ()
        others = {key for name, (_, _, keys) in NETWORKS.items() if name != network for key in keys}
        return [key for key in hparams if key in others and key not in own]

    @classmethod
    def default_hparams(cls, dataset):
        """Images: the U-Net, the data's image shape and grey levels (the decoder's grid,
        docs/vlb_bits_per_dim.md §2). Points (D,): the MLP, without clipping x0_hat (points have no data range)."""
        if len(dataset.image_shape) == 1:
            return {"image_shape": dataset.image_shape, "network": "mlp", "clip_x0": False}
        return {"image_shape": dataset.image_shape, "levels": dataset.levels}

    def forward(self, x_t, t):
        """eps_hat = eps_theta(x_t, t) (a Tensor)."""
        return getattr(self, self.network)(x_t, t)

    def loss(self, batch, rng):
        """L_simple on a batch, through the fused q_sample and eps-loss kernels (squared noise units)."""
        x0 = batch[0]
        xp = xp_of(x0)
        t = xp.asarray(rng.integers(1, self.T + 1, size=x0.shape[0]))
        eps = rng.standard_normal(x0.shape, dtype=x0.dtype)
        x_t = kernels.q_sample(x0, t, eps, self.schedule)
        return diffusion.fused_eps_loss(self(Tensor(x_t), t), self.target(x0, eps, t)), {}

    def target(self, x0, eps, t):
        """The network's regression target: eps, x_0, or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (E3)."""
        prediction = self.hparams["prediction"]
        if prediction == "v":
            return diffusion.v_from_x0_eps(x0, eps, t, self.schedule)
        return eps if prediction == "eps" else x0

    def eps_array(self, x_t, t):
        """eps_theta on arrays, no graph: the `model(x_t, t)` callable the samplers and the VLB take."""
        with no_grad():
            output = self(Tensor(x_t), t).data
        prediction = self.hparams["prediction"]
        if prediction == "eps":
            return output
        convert = diffusion.eps_from_x0 if prediction == "x0" else diffusion.eps_from_v   # eq. (E2), (E5)
        return convert(x_t, xp_of(x_t).asarray(t), output, self.schedule)

    def evaluate(self, x, y, rng, progress=False):
        """Test VLB in bits/dim (full loop over t, a tqdm bar if `progress`) on the first `eval_images` images,
        and the test eps-loss.

        The decoder's bins are the data's `levels`; uniform_bits_per_dim = log2(levels) is what a guess
        that ignores the image scores on that grid (4.09 for the 17-level digits, 8 for 8-bit data).
        Points are on no grid: their VLB uses the Gaussian decoder, a density, in nats per point.
        """
        x = x[:self.hparams["eval_images"]]
        if self.is_points:
            vlb = diffusion.nll_bpd(self.eps_array, x, self.schedule, rng, decoder="gaussian", progress=progress)
            loss, _ = self.loss((x, y), rng)
            return {"test_vlb_nats": float(to_numpy(vlb["total_bpd"]).mean() * math.log(2.0) * x.shape[1]),
                    "test_eps_loss": float(to_numpy(loss.data))}
        levels = self.hparams["levels"]
        vlb = diffusion.nll_bpd(self.eps_array, x, self.schedule, rng, levels=levels, progress=progress)
        loss, _ = self.loss((x, y), rng)
        return {"test_bits_per_dim": float(to_numpy(vlb["total_bpd"]).mean()),
                "test_prior_bits_per_dim": float(to_numpy(vlb["prior_bpd"]).mean()),
                "uniform_bits_per_dim": math.log2(levels), "levels": levels,
                "test_eps_loss": float(to_numpy(loss.data))}

    def sample(self, n, rng, sampler="ddpm", steps=None, clip_x0=None, return_trajectory=False, progress=False,
               **options):
        """n images (n, C, H, W) from x_T ~ N(0, I) by a sampler of diffusion.SAMPLERS, on K steps if given.

        sampler: its registry name ('ddpm' ancestral, 'ddim', ...); options: its keyword-only options
        (eta=... for 'ddim'). clip_x0 clips the predicted x_0 to the data range [-1, 1] at every step
        (default: the hparam clip_x0, True unless a model imported from diffusers says clip_sample false).
        DDIM (eta = 0) needs it here: the cosine schedule's last step has beta_T = 0.999, so
        x0_hat = (x_T - sqrt(1 - alpha_bar_T) eps_hat) / sqrt(alpha_bar_T) multiplies the error of eps_hat
        by about 1/sqrt(alpha_bar_T), and without fresh noise DDIM never washes it out (docs/training.md §5).
        """
        self.eval()
        clip_x0 = self.hparams["clip_x0"] if clip_x0 is None else clip_x0
        chosen = diffusion.make_sampler(sampler, clip_x0=clip_x0, **options)
        return diffusion.sample(chosen, self.eps_array, (n,) + self.image_shape, self.schedule, rng, steps=steps,
                                return_trajectory=return_trajectory, progress=progress)

    def sample_images(self, n, rng, sampler="ddpm", steps=None, label=None, progress=False, **options):
        """n samples as a NumPy array, (n, C, H, W) in [-1, 1] or points (n, D); options go to the sampler
        (eta=... for 'ddim'); a tqdm bar over the steps if `progress`."""
        x = self.sample(n, rng, sampler, steps, progress=progress, **options)
        return to_numpy(x).astype(np.float32) if self.is_points else as_images(x)

    # ------------------------------------------------------------ figures
    def figures(self, out, dataset, trainer, rng, progress=False):
        """Samples, the forward-noising strip, the reverse trajectory, alpha_bar/SNR curves, the loss curve;
        a tqdm bar over the sampling steps if `progress`."""
        paths = [loss_figure(trainer, out, "eps-loss (squared noise units)")] if trainer else []
        if self.is_points:
            samples = {"data (test)": to_numpy(dataset.x_test),
                       "DDPM samples": to_numpy(self.sample(2000, rng, progress=progress))}
            return paths + [plots.save_point_clouds(samples, os.path.join(out, "samples.png"))]
        x0, trajectory = self.sample(64, rng, return_trajectory=True, progress=progress)
        paths.append(plots.save_sample_grid(as_images(x0), os.path.join(out, "samples.png"), nrow=8,
                                            title=f"DDPM samples (T={self.T}, {self.hparams['schedule']})"))
        keep = np.unique(np.linspace(0, self.T, 9).round().astype(int))     # trajectory[k] is x_{T-k}
        paths.append(plots.save_trajectory([as_images(trajectory[k][:6]) for k in keep], [self.T - k for k in keep],
                                           os.path.join(out, "reverse_process.png")))
        paths.append(plots.save_forward_strip(dataset.x_test[:6], self.schedule,
                                              os.path.join(out, "forward_process.png"), n_frames=9))
        paths.append(plots.save_schedule_curves(diffusion.schedules_at(self.T), os.path.join(out, "schedules.png")))
        if trainer and len(trainer.evals) > 1:
            curve = {"test VLB": ([e["step"] for e in trainer.evals], [e["test_bits_per_dim"] for e in trainer.evals])}
            paths.append(plots.save_curves(curve, os.path.join(out, "test_bits_per_dim.png"), ylabel="bits/dim"))
        return paths

