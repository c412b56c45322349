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
Two extensions of the teaching U-Net, for any image shape (docs/guidance_variance.md):
  num_classes = K > 0   class conditioning: labels replaced by the null label K with probability p_uncond
                        in training; sampling with classifier-free guidance of scale s (eq. G4-G5)
  variance="learned"    the network also outputs r (one channel per image channel), v = (r + 1)/2 and
                        log Sigma_theta = v log beta_t + (1 - v) log beta_tilde_t (G6), trained by the hybrid
                        loss L_simple + vlb_weight L_vlb with the mean detached in L_vlb (G7)
"""
import functools
import math
import os

import numpy as np

import minidiff.kernels as kernels
from minidiff import checks, diffusion, nn, ops, plots
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import to_numpy, xp_of
from minidiff.diffusion.process import PREDICTIONS
from minidiff.models.base import as_images, loss_figure, register
from minidiff.models.time_mlp import TimeMLP
from minidiff.models.unet import UNet
from minidiff.models.unet_diffusers import DiffusersUNet


def teaching_unet(image_shape, hp, dtype):
    """The teaching U-Net (models/unet.py) with the DDPM's widths, labels and output channels."""
    c, h, _ = image_shape
    return UNet(c, h, hp["base_channels"], tuple(hp["channel_mults"]), hp["num_res_blocks"],
                tuple(hp["attention_resolutions"]), hp["dropout"], num_classes=hp["num_classes"],
                out_channels=hp["out_channels"], dtype=dtype)


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
VARIANCES = diffusion.REVERSE_VARIANCES   # DDPM(variance=NAME): sigma_t^2 for the VLB and the ddpm sampler


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
                 hidden=128, depth=3, num_classes=0, p_uncond=0.1, variance="fixed_small", vlb_weight=0.001,
                 dtype=None):
        super().__init__()
        self.schedule = diffusion.make_schedule(schedule, T, **(schedule_options or {}))   # a diffusion.SCHEDULES name
        if network not in NETWORKS or unet not in UNETS or prediction not in PREDICTIONS or variance not in VARIANCES:
            raise ValueError(f"DDPM: network must be one of {list(NETWORKS)}, unet one of {list(UNETS)}, "
                             f"prediction one of {PREDICTIONS} and variance one of {VARIANCES}, got {network!r}, "
                             f"{unet!r}, {prediction!r}, {variance!r}")
        self.num_classes = checks.integer("num_classes", num_classes, minimum=0, where="DDPM")
        extended = {**({"num_classes": num_classes, "p_uncond": checks.real("p_uncond", p_uncond, minimum=0.0,
                                                                            maximum=1.0, where="DDPM")}
                       if num_classes else {}),
                    **({"variance": variance} if variance != "fixed_small" else {}),
                    **({"vlb_weight": checks.real("vlb_weight", vlb_weight, minimum=0.0, where="DDPM")}
                       if variance == "learned" else {})}
        if (num_classes or variance == "learned") and (network, unet) != ("unet", "teaching"):
            raise ValueError(f"DDPM: num_classes > 0 and variance='learned' are built into the teaching U-Net "
                             f"(network='unet', unet='teaching'), got network={network!r}, unet={unet!r}")
        build, rank, own = NETWORKS[network]
        if len(image_shape) != rank:
            raise ValueError(f"DDPM: network {network!r} takes data of shape {'(C, H, W)' if rank == 3 else '(D,)'}, "
                             f"got image_shape {tuple(image_shape)}")
        options = {"base_channels": base_channels, "channel_mults": list(channel_mults),
                   "num_res_blocks": num_res_blocks, "attention_resolutions": list(attention_resolutions),
                   "dropout": dropout, "unet": unet, "unet_config": unet_config, "hidden": hidden, "depth": depth,
                   "num_classes": num_classes, "out_channels": image_shape[0] * (2 if variance == "learned" else 1)}
        self.hparams = {"image_shape": list(image_shape), "T": T, "schedule": schedule,
                        **{key: options[key] for key in NETWORKS["unet"][2] if key in own},
                        "eval_images": eval_images, "schedule_options": schedule_options, "prediction": prediction,
                        "clip_x0": clip_x0, **({"levels": levels} if network == "unet" else {}),
                        **({} if network == "unet" else {"network": network, **{key: options[key] for key in own}}),
                        **extended}   # the extensions' keys only where used: other checkpoints are written as before
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

    @property
    def learned_variance(self):
        return self.hparams.get("variance") == "learned"

    def forward(self, x_t, t, y=None):
        """The network's output (a Tensor): eps_hat (or x0_hat, v_hat: `prediction`), then r if the variance is learned.

        y: labels (B,) in 0..num_classes (num_classes: the null label), for a class-conditional model only.
        """
        if self.num_classes:
            return self.unet(x_t, t, y)
        if y is not None:
            raise ValueError("DDPM: labels y given to an unconditional model (num_classes = 0)")
        return getattr(self, self.network)(x_t, t)

    def split_output(self, output):
        """(prediction, v) from the network output: its first C channels, and v = (r + 1)/2 of the last C
        (improved DDPM's map: r = 0, the zero-initialised output, starts halfway between log beta_tilde_t and
        log beta_t, eq. G6); v is None unless the variance is learned."""
        if not self.learned_variance:
            return output, None
        c = self.image_shape[0]
        return output[:, :c], (output[:, c:] + 1.0) * 0.5

    def loss(self, batch, rng):
        """L_simple on a batch, through the fused q_sample and eps-loss kernels (squared noise units);
        + vlb_weight L_vlb (bits/dim) with a learned variance (eq. G7); labels dropped to the null label with
        probability p_uncond for a class-conditional model (eq. G5)."""
        x0 = batch[0]
        xp = xp_of(x0)
        t = xp.asarray(rng.integers(1, self.T + 1, size=x0.shape[0]))
        eps = rng.standard_normal(x0.shape, dtype=x0.dtype)
        x_t = kernels.q_sample(x0, t, eps, self.schedule)
        y = self.drop_labels(batch[1], rng) if self.num_classes else None
        prediction, v = self.split_output(self(Tensor(x_t), t, y))
        l_simple = diffusion.fused_eps_loss(prediction, self.target(x0, eps, t))
        if v is None:
            return l_simple, {}
        l_vlb = self.vlb_loss(x0, x_t, t, prediction, v)
        return l_simple + self.hparams["vlb_weight"] * l_vlb, {"l_simple": float(to_numpy(l_simple.data)),
                                                               "l_vlb": float(to_numpy(l_vlb.data))}

    def drop_labels(self, y, rng):
        """y with each label replaced by the null label num_classes with probability p_uncond, eq. (G5)."""
        xp = xp_of(y)
        dropped = xp.asarray(to_numpy(rng.random(y.shape[0])) < self.hparams["p_uncond"])
        return xp.where(dropped, self.num_classes, y).astype(np.int64)

    def vlb_loss(self, x0, x_t, t, prediction, v):
        """L_vlb = T E_t[L_{t-1}] in bits/dim: T times the batch mean of the VLB term at the drawn t (eq. G7).

        The mean's network output enters detached (a stop-gradient), so this term trains only Sigma_theta
        through v; L_simple alone trains the mean.
        """
        terms = diffusion.vb_terms_bpd(x0, x_t, t, prediction.detach(), self.schedule, "learned",
                                       prediction=self.hparams["prediction"], levels=self.hparams["levels"], v=v)
        return ops.mean(terms) * float(self.T)

    def target(self, x0, eps, t):
        """The network's regression target: eps, x_0, or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (E3)."""
        prediction = self.hparams["prediction"]
        if prediction == "v":
            return diffusion.v_from_x0_eps(x0, eps, t, self.schedule)
        return eps if prediction == "eps" else x0

    def network_arrays(self, x_t, t, y=None):
        """eps_hat on arrays, no graph, or (eps_hat, v) with a learned variance: a `model(x_t, t)` of the
        samplers and the VLB once y is fixed (labels (B,) for a class-conditional model)."""
        with no_grad():
            prediction, v = self.split_output(self(Tensor(x_t), t, y))
        prediction, v = prediction.data, (None if v is None else v.data)
        if self.hparams["prediction"] != "eps":
            convert = diffusion.eps_from_x0 if self.hparams["prediction"] == "x0" else diffusion.eps_from_v  # E2, E5
            prediction = convert(x_t, xp_of(x_t).asarray(t), prediction, self.schedule)
        return prediction if v is None else (prediction, v)

    def eps_array(self, x_t, t, y=None):
        """eps_theta(x_t, t[, y]) on arrays, no graph (the first output alone if the variance is learned)."""
        output = self.network_arrays(x_t, t, y)
        return output[0] if isinstance(output, tuple) else output

    def model_fn(self, labels=None, guidance=1.0):
        """The `model(x_t, t)` the samplers and the VLB call: `network_arrays` for an unconditional model; for a
        class-conditional one the guided eps of eq. (G4) for `labels` (B,) at scale s = `guidance`, both
        branches in one batched network call (diffusion.guided_model)."""
        if not self.num_classes:
            if labels is not None or guidance != 1.0:
                raise ValueError("DDPM: labels and guidance are for a class-conditional model (num_classes > 0)")
            return self.network_arrays
        if labels is None:
            raise ValueError(f"DDPM: a class-conditional model samples given labels in 0..{self.num_classes - 1}")
        return diffusion.guided_model(self.network_arrays, labels, self.num_classes, guidance)

    def evaluate(self, x, y, rng, progress=False):
        """Test VLB in bits/dim (full loop over t, a tqdm bar if `progress`) on the first `eval_images` images,
        and the test eps-loss (L_simple). The VLB uses the model's variance (Sigma_theta if learned); a
        class-conditional model is scored with the null label (a bound on -log p(x), comparable with an
        unconditional model's) and with the true labels (test_conditional_bits_per_dim, on -log p(x | y)).

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
        if self.num_classes and y is None:
            raise ValueError("DDPM.evaluate: a class-conditional model is scored with the test labels y")
        y = None if y is None else y[:x.shape[0]]
        levels, variance = self.hparams["levels"], self.hparams.get("variance", "fixed_small")
        unconditional = None if not self.num_classes else xp_of(x).full(x.shape[0], self.num_classes)
        vlb = diffusion.nll_bpd(functools.partial(self.network_arrays, y=unconditional), x, self.schedule, rng,
                                variance=variance, levels=levels, progress=progress)
        loss, metrics = self.loss((x, y), rng)
        result = {"test_bits_per_dim": float(to_numpy(vlb["total_bpd"]).mean()),
                  "test_prior_bits_per_dim": float(to_numpy(vlb["prior_bpd"]).mean()),
                  "uniform_bits_per_dim": math.log2(levels), "levels": levels,
                  "test_eps_loss": metrics.get("l_simple", float(to_numpy(loss.data)))}
        if self.num_classes:   # the bound on -log p(x | y) with the true labels, beside that on -log p(x) (label null)
            conditional = diffusion.nll_bpd(functools.partial(self.network_arrays, y=y), x,
                                            self.schedule, rng, variance=variance, levels=levels, progress=progress)
            result["test_conditional_bits_per_dim"] = float(to_numpy(conditional["total_bpd"]).mean())
        return result

    def sample(self, n, rng, sampler="ddpm", steps=None, clip_x0=None, return_trajectory=False, progress=False,
               label=None, guidance=1.0, **options):
        """n images (n, C, H, W) from x_T ~ N(0, I) by a sampler of diffusion.SAMPLERS, on K steps if given.

        sampler: its registry name ('ddpm' ancestral, 'ddim', ...); options: its keyword-only options
        (eta=... for 'ddim'; the ddpm sampler's variance defaults to the model's). clip_x0 clips the predicted
        x_0 to the data range [-1, 1] at every step
        (default: the hparam clip_x0, True unless a model imported from diffusers says clip_sample false).
        DDIM (eta = 0) needs it here: the cosine schedule's last step has beta_T = 0.999, so
        x0_hat = (x_T - sqrt(1 - alpha_bar_T) eps_hat) / sqrt(alpha_bar_T) multiplies the error of eps_hat
        by about 1/sqrt(alpha_bar_T), and without fresh noise DDIM never washes it out (docs/training.md §5).
        label, guidance: a class-conditional model's requested class (an int, or (n,) labels; default 0..K-1
        in turn) and guidance scale s (eq. G4: 1 the conditional model, 0 the unconditional one).
        """
        self.eval()
        clip_x0 = self.hparams["clip_x0"] if clip_x0 is None else clip_x0
        if sampler == "ddpm" and "variance" not in options:
            options["variance"] = self.hparams.get("variance", "fixed_small")
        chosen = diffusion.make_sampler(sampler, clip_x0=clip_x0, **options)
        labels = None
        if self.num_classes:
            labels = np.arange(n) % self.num_classes if label is None else np.broadcast_to(np.asarray(label), (n,))
        elif label is not None:
            raise ValueError("DDPM: label is for a class-conditional model (num_classes > 0)")
        return diffusion.sample(chosen, self.model_fn(labels, guidance), (n,) + self.image_shape, self.schedule, rng,
                                steps=steps, return_trajectory=return_trajectory, progress=progress)

    def sample_images(self, n, rng, sampler="ddpm", steps=None, label=None, progress=False, guidance=1.0, **options):
        """n samples as a NumPy array, (n, C, H, W) in [-1, 1] or points (n, D); options go to the sampler
        (eta=... for 'ddim'); a tqdm bar over the steps if `progress`; label and guidance as in `sample`."""
        x = self.sample(n, rng, sampler, steps, progress=progress, label=label, guidance=guidance, **options)
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

