"""Training latent diffusion in two stages within one step budget (docs/latent.md §2).

    1. the KL autoencoder (models/klae.py), unless a trained one is given: `autoencoder_steps(S)` of the
       S steps, with its own defaults (batch, learning rate) and its own checkpoint in <out>/autoencoder/
    2. the training set encoded once by the posterior mean, s = 1 / std measured on it (eq. Z3, Z4);
       the rest of the steps train the latent DDPM on s z (the caller's Trainer, the LDM's own defaults)

`first_stage` does 1 and 2 and returns the Trainer config and data of stage 2. It lives here, not in
models/, because it runs a Trainer (models never import train).
"""
import dataclasses
import os

from minidiff.models.klae import KLAutoencoder
from minidiff.train import TrainConfig, Trainer

AUTOENCODER_SHARE = 0.25   # of --steps: the autoencoder converges in a few hundred steps, the DDPM needs more


def autoencoder_steps(steps):
    """The autoencoder's share of a budget of `steps` (>= 2): round(steps / 4), at least 1, leaving at least 1."""
    if steps < 2:
        raise ValueError(f"train ldm without --autoencoder needs --steps >= 2 (one per stage), got {steps}")
    return min(max(1, round(AUTOENCODER_SHARE * steps)), steps - 1)


def train_autoencoder(autoencoder, dataset, steps, seed, progress, out_dir=None):
    """Stage 1: fit the KL autoencoder for `steps` steps (its TRAIN_DEFAULTS otherwise); leaves its EMA weights
    in `autoencoder` and, given out_dir, its checkpoint in out_dir."""
    config = TrainConfig(**{**KLAutoencoder.TRAIN_DEFAULTS, "steps": steps, "seed": seed, "progress": progress,
                            "checkpoint_every": 0})
    trainer = Trainer(autoencoder, config, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test,
                      out_dir=out_dir, meta={"dataset": dataset.name})
    trainer.fit()
    if trainer.ema is not None:
        trainer.ema.copy_to(autoencoder)
    return trainer


def first_stage(model, dataset, config, autoencoder=None, out_dir=None, log=print):
    """(config of the diffusion stage, the scaled training codes) for LDM `model`.

    autoencoder: a trained KLAutoencoder whose hparams equal the model's (its weights are copied, and all
    of config.steps go to the diffusion stage); None: train one first on a share of config.steps.
    """
    if autoencoder is None:
        ae_steps = autoencoder_steps(config.steps)
        log(f"train ldm: the {config.steps} steps are split into {ae_steps} autoencoder steps, then "
            f"{config.steps - ae_steps} diffusion steps on its latents")
        train_autoencoder(model.autoencoder, dataset, ae_steps, config.seed, config.progress,
                          None if out_dir is None else os.path.join(out_dir, "autoencoder"))
    else:
        if autoencoder.hparams != model.autoencoder.hparams:
            raise ValueError(f"the autoencoder has hparams {autoencoder.hparams}, the ldm's first stage "
                             f"{model.autoencoder.hparams}")
        model.autoencoder.load_state_dict(autoencoder.state_dict())
        ae_steps = 0
        log(f"train ldm: a trained autoencoder given; all {config.steps} steps train the diffusion stage")
    codes = model.autoencoder.encode_mean(dataset.x_train)
    s = model.set_latent_scale(codes)
    log(f"train ldm: {len(codes)} training images encoded to {'x'.join(map(str, model.latent_shape))} codes; "
        f"latent scale s = 1/std = {s:.5g}")
    model.stages = {"autoencoder_steps": ae_steps, "diffusion_steps": config.steps - ae_steps}
    return dataclasses.replace(config, steps=config.steps - ae_steps), model.encode(dataset.x_train)
