"""The masked autoencoder (He et al. 2022) on small images (docs/mae.md).

    patches    x (B, C, H, W) -> (B, N, p²C), N = (H/p)(W/p), row-major over the patch grid      eq. (R1)
    masking    per image a uniform random subset of n_keep = round((1 − r) N) patches stays visible eq. (R2)
    encoder    e_i = W_e x_i + pos_i for the visible i only; depth × TransformerBlock; LayerNorm     eq. (R3)
    decoder    the visible codes (W_d e) and a shared mask token m at the masked positions, each plus
               its position; TransformerBlocks; LayerNorm; Linear to p²C pixel values per patch    eq. (R4)
    loss       (1/Σ_n M_n) Σ_n M_n (1/p²C) ‖x̂_n − x_n‖², M_n = 1 on masked patches               eq. (R5)

The loss is a mean squared error per pixel over the masked patches only (data in [−1, 1]). The
encoder's features for a linear probe: the mean of its outputs with every patch visible.
"""
import os

import numpy as np

from minidiff import checks, nn, ops, plots
from minidiff.autograd import Tensor, get_default_dtype, no_grad, unwrap
from minidiff.backend import to_numpy, xp, xp_of
from minidiff.models.base import as_images, loss_figure, register, smooth


def patchify(x, p):
    """(B, C, H, W) -> (B, N, p·p·C): patch n = (row i, column j) of the (H/p) × (W/p) grid, n = i·(W/p) + j,
    its pixels in (dy, dx, c) order, eq. (R1)."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"patchify: {H}x{W} images do not split into {p}x{p} patches")
    grid = ops.reshape(x, (B, C, H // p, p, W // p, p))
    return ops.reshape(ops.transpose(grid, (0, 2, 4, 3, 5, 1)), (B, (H // p) * (W // p), p * p * C))


def unpatchify(patches, p, image_shape):
    """The inverse of patchify: (B, N, p·p·C) -> (B, C, H, W)."""
    C, H, W = image_shape
    B = patches.shape[0]
    grid = ops.reshape(patches, (B, H // p, W // p, p, p, C))
    return ops.reshape(ops.transpose(grid, (0, 5, 1, 3, 2, 4)), (B, C, H, W))


def random_masking(batch, num_patches, num_visible, rng):
    """Eq. (R2): per image a uniformly random set of `num_visible` patches stays visible.

    Returns (ids_keep (B, n_keep) the visible patch indices, ids_restore (B, N), mask (B, N) with
    1 = masked): a random permutation σ of 0..N−1 per image (argsort of uniform noise), the first
    n_keep of it visible; ids_restore = σ⁻¹ puts a list in σ order back into patch order.
    """
    ids_shuffle = xp().argsort(rng.random((batch, num_patches)), axis=1)
    ids_restore = xp().argsort(ids_shuffle, axis=1)
    mask = (ids_restore >= num_visible).astype(np.float64)
    return ids_shuffle[:, :num_visible], ids_restore, mask


def gather_tokens(tokens, ids):
    """tokens (B, N, D) -> (B, n, D) with row b the tokens ids[b] (a differentiable gather)."""
    rows = xp_of(unwrap(tokens)).arange(tokens.shape[0])[:, None]
    return ops.getitem(tokens, (rows, ids))


def masked_patch_mse(pred, target, mask):
    """Eq. (R5): (1/Σ M) Σ_{b,n} M_bn mean_j (pred − target)²_bnj, pred/target (B, N, P), mask (B, N) in {0, 1}.

    Squared error per pixel averaged over the patches with M = 1 (pass 1 − M for the visible ones).
    """
    checks.same_shape("masked_patch_mse", pred=pred, target=target)
    checks.shape("mask", mask, tuple(pred.shape[:2]), "masked_patch_mse", because=" (pred's (B, N))")
    per_patch = ops.mean((pred - target) ** 2, axis=2)                                     # (B, N)
    weights = xp_of(unwrap(mask)).asarray(mask, dtype=unwrap(per_patch).dtype)
    return ops.sum(per_patch * weights) / float(weights.sum())


def position_embedding(grid_h, grid_w, dim, dtype):
    """Fixed 2-D sin-cos positions (N, dim): the sinusoidal embedding (eq. M13) of the patch row in the
    first dim/2 channels and of its column in the last dim/2."""
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    half = dim // 2
    return np.concatenate([nn.sinusoidal_embedding(rows.ravel(), half, dtype=dtype),
                           nn.sinusoidal_embedding(cols.ravel(), dim - half, dtype=dtype)], axis=1)


@register
class MAE(nn.Module):
    name = "mae"
    TRAIN_DEFAULTS = dict(steps=1500, batch_size=128, lr=1e-3, optimizer="adamw", weight_decay=0.05,
                          warmup_steps=100, ema_decay=0.995)

    def __init__(self, image_shape=(1, 8, 8), patch_size=2, mask_ratio=0.75, dim=64, depth=3, num_heads=4,
                 decoder_dim=64, decoder_depth=1, mlp_ratio=2, dtype=None):
        super().__init__()
        C, H, W = image_shape
        checks.integer("patch_size", patch_size, minimum=1, where="MAE")
        if H % patch_size or W % patch_size:
            raise ValueError(f"MAE: {H}x{W} images do not split into patch_size {patch_size} patches")
        checks.real("mask_ratio", mask_ratio, above=0.0, below=1.0, where="MAE")
        if (H // patch_size) * (W // patch_size) < 2:
            raise ValueError(f"MAE: patch_size {patch_size} leaves one patch of the {H}x{W} image; masking needs >= 2")
        self.hparams = {"image_shape": list(image_shape), "patch_size": patch_size, "mask_ratio": mask_ratio,
                        "dim": dim, "depth": depth, "num_heads": num_heads, "decoder_dim": decoder_dim,
                        "decoder_depth": decoder_depth, "mlp_ratio": mlp_ratio}
        self.image_shape, self.patch_size, self.mask_ratio = tuple(image_shape), patch_size, mask_ratio
        self.num_patches, patch_dim = (H // patch_size) * (W // patch_size), patch_size * patch_size * C
        self.num_visible = min(self.num_patches - 1, max(1, int(round((1.0 - mask_ratio) * self.num_patches))))
        dtype = dtype or get_default_dtype()
        grid = (H // patch_size, W // patch_size)
        self.encoder_pos, self.decoder_pos = position_embedding(*grid, dim, dtype), \
            position_embedding(*grid, decoder_dim, dtype)
        self.patch_embed = nn.Linear(patch_dim, dim, dtype=dtype)
        self.encoder = nn.Sequential(*[nn.TransformerBlock(dim, num_heads, mlp_ratio, dtype=dtype)
                                       for _ in range(depth)], nn.LayerNorm(dim, dtype=dtype))
        self.to_decoder = nn.Linear(dim, decoder_dim, dtype=dtype)
        self.mask_token = nn.init.normal_(nn.Parameter(xp().zeros(decoder_dim, dtype=dtype)), std=0.02)
        self.decoder = nn.Sequential(*[nn.TransformerBlock(decoder_dim, num_heads, mlp_ratio, dtype=dtype)
                                       for _ in range(decoder_depth)], nn.LayerNorm(decoder_dim, dtype=dtype))
        self.to_pixels = nn.Linear(decoder_dim, patch_dim, dtype=dtype)

    @classmethod
    def default_hparams(cls, dataset):
        return {"image_shape": dataset.image_shape}

    # ------------------------------------------------------------ the two networks
    def encode(self, x, ids_keep):
        """Eq. (R3): codes (B, n_keep, dim) of the visible patches ids_keep (B, n_keep) of images x (B, C, H, W).

        Only the gathered visible patches enter the network, so the codes do not depend on the others.
        """
        visible = gather_tokens(patchify(x, self.patch_size), ids_keep)                     # (B, n_keep, p²C)
        pos = xp().asarray(self.encoder_pos, dtype=unwrap(visible).dtype)[ids_keep]
        return self.encoder(self.patch_embed(visible) + pos)

    def decode(self, codes, ids_restore):
        """Eq. (R4): predicted pixels (B, N, p²C) of every patch from the visible codes (B, n_keep, dim)."""
        B, n_keep = codes.shape[:2]
        h = self.to_decoder(codes)                                                          # (B, n_keep, D_d)
        masked = ops.broadcast_to(self.mask_token, (B, self.num_patches - n_keep, self.mask_token.shape[0]))
        h = gather_tokens(ops.concatenate([h, masked], axis=1), ids_restore)                # patch order
        h = h + xp().asarray(self.decoder_pos, dtype=unwrap(h).dtype)
        return self.to_pixels(self.decoder(h))

    def forward(self, x, ids_keep, ids_restore):
        return self.decode(self.encode(x, ids_keep), ids_restore)

    def sample_mask(self, batch, rng):
        return random_masking(batch, self.num_patches, self.num_visible, rng)

    # ------------------------------------------------------------ objective
    def loss(self, batch, rng):
        """Eq. (R5) on a fresh random mask per image; metrics: the same MSE on the visible patches (no gradient)."""
        x = batch[0]
        ids_keep, ids_restore, mask = self.sample_mask(x.shape[0], rng)
        pred = self(Tensor(x), ids_keep, ids_restore)
        target = patchify(x, self.patch_size)
        loss = masked_patch_mse(pred, target, mask)
        visible = masked_patch_mse(pred.data, target, 1.0 - mask)
        return loss, {"masked_mse": float(to_numpy(loss.data)), "visible_mse": float(to_numpy(visible))}

    def evaluate(self, x, y, rng, batch_size=512):
        """Test MSE per pixel on the masked and on the visible patches (one random mask per image)."""
        sums = np.zeros(2)
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            ids_keep, ids_restore, mask = self.sample_mask(batch.shape[0], rng)
            with no_grad():
                pred = self(Tensor(batch), ids_keep, ids_restore).data
            target = patchify(batch, self.patch_size)
            sums += [float(to_numpy(masked_patch_mse(pred, target, m))) * float(m.sum()) for m in (mask, 1.0 - mask)]
        masked = len(x) * (self.num_patches - self.num_visible)
        return {"test_masked_mse": float(sums[0] / masked),
                "test_visible_mse": float(sums[1] / (len(x) * self.num_visible))}

    # ------------------------------------------------------------ features and figures
    def features(self, x, batch_size=512):
        """Linear-probe features (N, dim): the mean over patches of the encoder's output, every patch visible."""
        every = xp().broadcast_to(xp().arange(self.num_patches), (min(batch_size, len(x)), self.num_patches))
        out = []
        with no_grad():
            for i in range(0, len(x), batch_size):
                batch = xp().asarray(x[i:i + batch_size])
                out.append(to_numpy(self.encode(Tensor(batch), every[:len(batch)]).data.mean(axis=1)))
        return np.concatenate(out)

    def reconstruct(self, x, rng):
        """(masked input with masked patches at 0, prediction with the visible patches pasted back, prediction)."""
        ids_keep, ids_restore, mask = self.sample_mask(len(x), rng)
        with no_grad():
            pred = self(Tensor(xp().asarray(x)), ids_keep, ids_restore).data
        patches, m = patchify(xp().asarray(x), self.patch_size), mask[:, :, None]
        shape = self.image_shape
        return tuple(as_images(unpatchify(a, self.patch_size, shape))
                     for a in (patches * (1 - m), patches * (1 - m) + pred * m, pred))

    def figures(self, out, dataset, trainer, rng):
        paths = [loss_figure(trainer, out, "masked-patch MSE per pixel")] if trainer else []
        if trainer and "visible_mse" in trainer.history:
            steps, window = trainer.history["step"], max(1, len(trainer.history["step"]) // 50)
            curves = {f"{k} patches (running mean, {window} steps)":
                      (steps, smooth(trainer.history[f"{k}_mse"], window)) for k in ("masked", "visible")}
            paths.append(plots.save_curves(curves, os.path.join(out, "masked_vs_visible.png"),
                                           ylabel="MSE per pixel", title="MAE loss on masked vs visible patches",
                                           logy=True))
        x = dataset.x_test[:8]
        masked, pasted, pred = self.reconstruct(x, rng)
        paths.append(plots.save_strip([masked, pasted, pred, x],
                                      ["input", "pasted", "output", "x"],
                                      os.path.join(out, "reconstructions.png"),
                                      title=f"MAE: {self.num_patches - self.num_visible} of {self.num_patches} "
                                            "patches masked (grey);\nvisible + predicted, prediction, original"))
        return paths
