"""Classifier-free guidance (Ho & Salimans 2022), docs/guidance_variance.md §1.

One network ε_θ(x_t, t, y) is trained on labels y and, with probability p_uncond, on the null label ∅.
At sampling the two predictions are mixed with the guidance scale s:

    ε̃ = ε_θ(x_t, t, ∅) + s (ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅))                   eq. (G4)

s = 0: the unconditional model; s = 1: the conditional one; s > 1: past it, away from ∅. The paper's
w is s − 1 (ε̃ = (1 + w) ε_θ(x, y) − w ε_θ(x, ∅)); diffusers' `guidance_scale` is s itself.
`guided_model` wraps a labelled network as the `model(x_t, t)` callable every sampler of
diffusion.SAMPLERS and the VLB take, so guidance is applied once, at the model call, for all of them.
"""
from minidiff import checks
from minidiff.backend import xp_of


def guided_eps(eps_cond, eps_uncond, scale):
    """ε̃ = ε_uncond + s (ε_cond − ε_uncond), eq. (G4): s = 1 gives ε_cond, s = 0 gives ε_uncond.

    eps_cond, eps_uncond: ε_θ(x_t, t, y) and ε_θ(x_t, t, ∅), arrays or Tensors of one shape (B, ...);
    scale: the guidance scale s, a finite real number (diffusers' guidance_scale; the paper's w = s − 1).
    """
    checks.same_shape("guided_eps", eps_cond=eps_cond, eps_uncond=eps_uncond)
    s = checks.real("scale", scale, where="guided_eps")
    return eps_uncond + s * (eps_cond - eps_uncond)


def guided_model(network, labels, null_label, scale):
    """model(x_t, t) -> ε̃ of eq. (G4): both branches in one network call on the doubled batch.

    network(x, t, y) -> ε̂ of x's shape, or (ε̂, v) with the learned-variance output v (then v is the
    conditional branch's: guidance steers the mean, the variance stays that of the conditional model).
    labels: (B,) integer array, the requested class of each sample; null_label: the index of ∅.
    The call evaluates [x_t; x_t] at [t; t] with labels [y; ∅] and splits the result in two halves.
    """
    s = checks.real("scale", scale, where="guided_model")

    def model(x_t, t):
        xp = xp_of(x_t)
        B = x_t.shape[0]
        y = xp.asarray(labels)
        checks.shape("labels", y, (B,), "guided_model", because=" (one label per sample of x_t)")
        output = network(xp.concatenate([x_t, x_t]), xp.concatenate([xp.asarray(t), xp.asarray(t)]),
                         xp.concatenate([y, xp.full(B, null_label, dtype=y.dtype)]))
        eps, v = output if isinstance(output, tuple) else (output, None)
        eps_tilde = guided_eps(eps[:B], eps[B:], s)
        return eps_tilde if v is None else (eps_tilde, v[:B])

    return model

