"""Studies that train several models and compare them; they sit above models and train in the
import order (models never import the trainer).

    recon_vs_latent   test reconstruction error against latent size d for PCA, the MLP AE and the
                      conv VAE on the digits (docs/training.md §2)
"""
import json
import os

from minidiff import data, plots
from minidiff.autograd import Tensor, no_grad
from minidiff.backend import manual_seed, xp
from minidiff.models.ae import AE
from minidiff.models.pca import PCA
from minidiff.models.vae import VAE
from minidiff.train import TrainConfig, Trainer


def recon_vs_latent(sizes=(2, 4, 8, 16, 32), steps=600, seed=0, progress=False):
    """Test MSE per pixel against latent size d for PCA, the MLP AE and the VAE (decoded posterior mean)."""
    ds = data.digits()
    results = {"PCA": [], "AE (MLP)": [], "VAE (conv)": []}
    for d in sizes:
        results["PCA"].append(PCA(d).fit(ds.x_train).reconstruction_mse(ds.x_test))
        for name, cls in (("AE (MLP)", AE), ("VAE (conv)", VAE)):
            manual_seed(seed)
            model = cls(ds.image_shape, latent_dim=d)
            config = TrainConfig(**{**cls.TRAIN_DEFAULTS, "steps": steps, "seed": seed, "progress": progress,
                                    "checkpoint_every": 0, "log_every": steps})
            trainer = Trainer(model, config, ds.x_train, ds.y_train).fit()
            with trainer.averaged_weights(), no_grad():
                model.eval()
                x = xp().asarray(ds.x_test)
                x_hat = model(Tensor(x)) if name.startswith("AE") else model.image_mean(
                    model.decode(model.posterior(Tensor(x)).mean))
                results[name].append(float(((x_hat.numpy() - ds.x_test) ** 2).mean()))
    return {name: (list(sizes), errors) for name, errors in results.items()}


def recon_vs_latent_figure(path, sizes=(2, 4, 8, 16, 32), steps=600, seed=0, progress=False):
    """The recon-error-vs-latent-size plot (PCA, AE, VAE on the digits test split) and its numbers
    as JSON beside it (same name, .json); returns the figure's path."""
    results = recon_vs_latent(sizes, steps, seed, progress)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump({name: dict(zip(map(str, s), e)) for name, (s, e) in results.items()}, f, indent=2)
    return plots.save_recon_vs_latent(results, path)
