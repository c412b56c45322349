"""Models trained by minidiff.train.Trainer: each has loss(batch, rng) -> (loss, metrics), name, hparams.

    ae.py          MLP / conv autoencoder (+ denoising option) and nearest-neighbour retrieval
    dae.py         the denoising AE as an attractor: x <- x - eta (x - r(x)), r(x) - x ~ sigma^2 grad log p
    mae.py         the masked autoencoder: patches, 75% masked, a transformer encoder of the visible ones
    pca.py         PCA by SVD, the linear baseline (its recon-vs-latent sweep is in minidiff/experiments.py)
    vae.py         convolutional VAE (Gaussian or Bernoulli decoder, beta) and the conditional VAE
    unet.py        the DDPM noise-prediction U-Net
    ddpm.py        the DDPM: fused eps-loss training, VLB evaluation, DDPM / DDIM sampling
    klae.py        the KL-regularised conv autoencoder: latent diffusion's first stage (a latent grid)
    ldm.py         latent diffusion: the DDPM on the autoencoder's scaled codes (training: minidiff/latent.py)
    classifier.py  a digits classifier whose features score sample quality
    base.py        the registry (name -> class) and what every model shares (figures, sampling to images)
Derivations and architecture: docs/training.md.
"""
from minidiff import checkpoint
from minidiff.models.base import REGISTRY, build, register


def load(path, use_ema=True):
    """(model in eval mode, checkpoint state) from a training checkpoint; the EMA weights if it has them."""
    groups, state = checkpoint.load_checkpoint(path)
    if "model" not in state or "hparams" not in state:
        raise checkpoint.CheckpointError(f"{path}: the metadata names no model (need 'model' and 'hparams')")
    model = build(state["model"], state["hparams"])
    try:
        model.load_state_dict(groups["params"])
        if use_ema and groups["ema"]:
            model.load_state_dict(groups["ema"], strict=False)
    except (KeyError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path}: its tensors do not fit model {state['model']!r}: "
                                         f"{e.args[0]}") from None
    return model.eval(), state


def trained_on(state, default="digits"):
    """The data set a checkpoint's model was trained on (`train` records it in the metadata; `default` for a
    checkpoint written before it did)."""
    return state.get("dataset", default)


# Importing a model module registers its models: every module with a @register class is listed here
# (tests/test_registries.py checks that nothing registers only when imported by hand).
from minidiff.models import ae, classifier, dae, ddpm, klae, ldm, mae, vae  # noqa: E402,F401

__all__ = ["REGISTRY", "build", "register", "load", "trained_on"]
