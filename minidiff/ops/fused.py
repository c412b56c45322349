"""The fused eps-prediction loss as one autograd Function (docs/kernels.md eq. 2-3).

Forward runs `minidiff.kernels.eps_loss`, which computes the loss and its gradient in one pass
over memory; backward only scales that saved gradient. Compare the unfused composition
mean(w * (eps_hat - eps)**2), which records four nodes and re-reads eps_hat and eps in backward.
"""
import minidiff.kernels as kernels
from minidiff.autograd import Function, Tensor


class EpsLoss(Function):
    """L = (1/N) sum_{b,i} w_b (eps_hat_{b,i} - eps_{b,i})^2, a scalar (squared noise units, mean over all N).

    Inputs: eps_hat, eps (B, ...); params: weights (B,) or None (w_b = 1), impl.
    Saved for backward: G = dL/d eps_hat = (2/N) w_b (eps_hat - eps), from the same kernel pass.
    VJP: d eps_hat = g G, d eps = -g G (g the upstream scalar gradient).
    """

    def forward(self, eps_hat, eps, weights=None, impl="auto"):
        loss, self.grad_eps_hat = kernels.eps_loss(eps_hat, eps, weights, impl=impl)
        return loss

    def backward(self, g):
        d_eps_hat = g * self.grad_eps_hat if self.needs_grad[0] else None
        d_eps = -g * self.grad_eps_hat if self.needs_grad[1] else None
        return d_eps_hat, d_eps


def eps_loss(eps_hat, eps, weights=None, impl="auto"):
    """The (weighted) eps-loss L as a scalar Tensor whose backward is the fused gradient.

    eps_hat: the network's noise prediction (a Tensor, or an array); eps: the true noise;
    weights: per-sample w_b of shape (B,) (array or Tensor, treated as a constant) or None.
    With no Tensor among eps_hat and eps the result is a plain 0-d array, like every op.
    """
    if isinstance(weights, Tensor):
        weights = weights.data
    return EpsLoss.apply(eps_hat, eps, weights=weights, impl=impl)
