"""Optimisers, parameter EMA, gradient clipping and the warm-up + cosine learning rate (docs/layers.md §8).

Updates follow torch.optim's formulas step for step (so trajectories match PyTorch's), written
with θ the parameters, g_t = ∂L/∂θ at step t = 1, 2, ..., η the learning rate, λ the weight decay:

    SGD:   d = g + λθ;  b ← μ b + d (b₁ = d);  θ ← θ − η (d + μ b if nesterov else b)   (μ = momentum)
    Adam:  d = g + λθ;  m ← β₁m + (1 − β₁)d;  v ← β₂v + (1 − β₂)d²;
           θ ← θ − (η/(1 − β₁ᵗ)) m / (√v/√(1 − β₂ᵗ) + ε)
    AdamW: θ ← θ(1 − ηλ), then the Adam step with d = g (decoupled weight decay).

State dicts hold only numbers and arrays ({"step": int, "lr": float, "m.0": array, ...}), so a
checkpoint never needs pickle.

Adam's update on NumPy arrays runs as one Numba loop per parameter (`_adam_kernel`): the same arithmetic,
element by element and in the same order, as the array expressions of `Adam.update_reference` (which CuPy
and non-contiguous parameters run), so the two give identical bits (tests/test_optim.py). The array form
makes about 12 NumPy calls and 8 temporaries per parameter, each a pass over it: 2.7 ms of the digits
U-Net's 84 ms training step (98 parameters, 572k numbers), the loop 1.3 ms (docs/benchmarks.md, round 4).
"""
import math

import numpy as np
from numba import njit

from minidiff import checks
from minidiff.autograd import Tensor
from minidiff.backend import to_numpy, xp_of


def _param_list(params, where="optimizer"):
    if isinstance(params, (str, bytes, Tensor)) or not hasattr(params, "__iter__"):
        raise TypeError(f"{where}: params must be an iterable of Parameters, got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError(f"{where}: params is an empty parameter list")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise TypeError(f"{where}: params[{i}] is not a Tensor with requires_grad=True ({type(p).__name__})")
    return params


def _check_schedule(where, base_lr, warmup_steps, total_steps, min_lr):
    """The warm-up/cosine arguments: base_lr > 0, 0 <= min_lr <= base_lr, 0 <= warmup_steps <= total_steps >= 1."""
    base_lr = checks.real("base_lr", base_lr, above=0.0, where=where)
    min_lr = checks.real("min_lr", min_lr, minimum=0.0, maximum=base_lr, where=where)
    total_steps = checks.integer("total_steps", total_steps, minimum=1, where=where)
    warmup_steps = checks.integer("warmup_steps", warmup_steps, minimum=0, maximum=total_steps, where=where)
    return base_lr, warmup_steps, total_steps, min_lr


class Optimizer:
    """Holds the parameters, the learning rate `lr`, the step count and per-parameter state arrays."""

    state_names = ()

    def __init__(self, params, lr):
        lr = checks.real("lr", lr, minimum=0.0, where=type(self).__name__)
        self.params, self.lr, self.step_count = _param_list(params, type(self).__name__), lr, 0
        self.state = {name: [None] * len(self.params) for name in self.state_names}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.update(i, p.data, p.grad)

    def update(self, i, theta, grad):
        raise NotImplementedError

    def state_dict(self):
        out = {"step": self.step_count, "lr": self.lr}
        for name, arrays in self.state.items():
            out.update({f"{name}.{i}": to_numpy(a).copy() for i, a in enumerate(arrays) if a is not None})
        return out

    def load_state_dict(self, state):
        self.step_count, self.lr = int(state["step"]), float(state["lr"])
        for name, arrays in self.state.items():
            for i, p in enumerate(self.params):
                key = f"{name}.{i}"
                if key not in state:
                    arrays[i] = None
                    continue
                if tuple(np.shape(state[key])) != tuple(p.shape):
                    raise ValueError(f"optimizer load_state_dict: {key!r} has shape {tuple(np.shape(state[key]))}, "
                                     f"parameter {i} has shape {tuple(p.shape)}")
                arrays[i] = xp_of(p.data).asarray(to_numpy(state[key]), dtype=p.dtype).copy()


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        momentum = checks.real("momentum", momentum, minimum=0.0, where="SGD")
        weight_decay = checks.real("weight_decay", weight_decay, minimum=0.0, where="SGD")
        if checks.boolean("nesterov", nesterov, where="SGD") and momentum <= 0:
            raise ValueError(f"SGD: Nesterov momentum needs momentum > 0, got momentum {momentum}")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def update(self, i, theta, grad):
        d = grad + self.weight_decay * theta if self.weight_decay else grad
        if self.momentum:
            b = self.state["momentum_buffer"]
            b[i] = d.copy() if b[i] is None else self.momentum * b[i] + d
            d = d + self.momentum * b[i] if self.nesterov else b[i]
        theta -= self.lr * d


class Adam(Optimizer):
    """Adam with bias correction; weight_decay adds λθ to the gradient (L2, as torch.optim.Adam)."""

    state_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        where = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {betas!r}")
        betas = tuple(checks.real(f"betas[{i}]", b, minimum=0.0, below=1.0, where=where) for i, b in enumerate(betas))
        eps = checks.real("eps", eps, above=0.0, where=where)
        weight_decay = checks.real("weight_decay", weight_decay, minimum=0.0, where=where)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self._constants = (None, ())

    def update(self, i, theta, grad):
        """One step of parameter i in place: `_adam_kernel` on contiguous NumPy arrays, else the reference."""
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        if m[i] is None:                                  # m₀ = v₀ = 0
            m[i], v[i] = xp_of(theta).zeros_like(theta), xp_of(theta).zeros_like(theta)
        if not _runs_kernel(theta, grad, m[i], v[i]):
            return self.update_reference(theta, grad, m[i], v[i])
        _adam_kernel(theta.reshape(-1), np.ascontiguousarray(grad).reshape(-1), m[i].reshape(-1), v[i].reshape(-1),
                     *self.kernel_constants(theta.dtype))

    def kernel_constants(self, dtype):
        """`_adam_kernel`'s scalars (decay, l2, β₁, 1 − β₁, β₂, 1 − β₂, η/(1 − β₁ᵗ), √(1 − β₂ᵗ), ε) for this step,
        each rounded to dtype as NumPy rounds a Python float that meets an array; made once per step and dtype."""
        key = (dtype, self.step_count, self.lr, self.betas, self.eps, self.weight_decay)
        if self._constants[0] != key:
            dt = dtype.type
            (beta1, beta2), t = self.betas, self.step_count
            decay = 1 - self.lr * self.weight_decay if self.decoupled else 1
            l2 = 0 if self.decoupled else self.weight_decay
            values = (decay, l2, beta1, 1 - beta1, beta2, 1 - beta2, self.lr / (1 - beta1 ** t),
                      math.sqrt(1 - beta2 ** t), self.eps)
            self._constants = (key, tuple(dt(c) for c in values))
        return self._constants[1]

    def update_reference(self, theta, grad, m, v):
        """The Adam step as array expressions, m and v updated in place (the module docstring's formulas)."""
        (beta1, beta2), t = self.betas, self.step_count
        if self.decoupled:
            theta *= 1 - self.lr * self.weight_decay
            d = grad
        else:
            d = grad + self.weight_decay * theta if self.weight_decay else grad
        m[...] = beta1 * m + (1 - beta1) * d
        v[...] = beta2 * v + (1 - beta2) * d * d
        step_size = self.lr / (1 - beta1 ** t)
        denom = xp_of(theta).sqrt(v) / math.sqrt(1 - beta2 ** t) + self.eps
        theta -= step_size * (m / denom)


def _runs_kernel(theta, grad, m, v):
    """`_adam_kernel` applies: NumPy float32/float64 arrays of one dtype and shape, θ, m, v contiguous (updated
    through flat views). Plain tests, no loops: this runs for every parameter at every step."""
    return (type(theta) is np.ndarray and type(grad) is np.ndarray and type(m) is np.ndarray
            and type(v) is np.ndarray and theta.dtype.char in "fd"
            and grad.dtype == theta.dtype and m.dtype == theta.dtype and v.dtype == theta.dtype
            and grad.shape == theta.shape and theta.flags.c_contiguous and m.flags.c_contiguous
            and v.flags.c_contiguous)


@njit(cache=True, error_model="numpy")
def _adam_kernel(theta, grad, m, v, decay, l2, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                 bias2_sqrt, eps):
    """θ, m, v updated in place, element by element, as `Adam.update_reference` computes them (same operations,
    same order, scalars rounded to θ's dtype first, as NumPy does for Python floats):

        θ ← decay · θ (AdamW);  d = g + l2 · θ;  m ← β₁m + (1 − β₁)d;  v ← β₂v + ((1 − β₂)d)d;
        θ ← θ − step_size · (m / (√v / √(1 − β₂ᵗ) + ε)),   step_size = η/(1 − β₁ᵗ).

    error_model="numpy": a division by zero gives inf/nan as NumPy's does instead of raising, which also lets
    LLVM vectorise the loop (the zero check Python's model adds before every division kept it scalar:
    3.6x slower, 2.3 ms → 0.63 ms for the U-Net's 572k float32 parameters).
    """
    for k in range(theta.size):
        th = theta[k] * decay
        d = grad[k] + l2 * th
        mk = beta1 * m[k] + one_minus_beta1 * d
        vk = beta2 * v[k] + one_minus_beta2 * d * d
        m[k], v[k] = mk, vk
        theta[k] = th - step_size * (mk / (np.sqrt(vk) / bias2_sqrt + eps))


class AdamW(Adam):
    """Adam with decoupled weight decay: θ ← θ(1 − ηλ) before the Adam step (Loshchilov & Hutter)."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm(params, max_norm):
    """Scale all gradients by min(1, max_norm/(‖g‖ + 1e-6)), ‖g‖ the global L2 norm; return ‖g‖ (a float)."""
    max_norm = checks.real("max_norm", max_norm, minimum=0.0, finite=False, where="clip_grad_norm")
    params = _param_list(params, "clip_grad_norm")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * p.grad.dtype.type(coef)
    return total


class EMA:
    """Exponential moving average of a module's parameters: θ̄ ← δ θ̄ + (1 − δ) θ after every update.

    `update(module)` folds in the current weights; `copy_to(module)` writes θ̄ into a module (for
    sampling); `state_dict()` / `load_state_dict()` hold θ̄ by parameter name, as Module.state_dict.
    """

    def __init__(self, module, decay=0.999):
        self.decay = checks.real("decay", decay, minimum=0.0, maximum=1.0, where="EMA")
        if not callable(getattr(module, "named_parameters", None)):
            raise TypeError(f"EMA: module must be a Module (with named_parameters), got {type(module).__name__}")
        self.shadow = {name: p.data.copy() for name, p in module.named_parameters()}
        self.num_updates = 0

    def update(self, module):
        self.num_updates += 1
        for name, p in module.named_parameters():
            if name not in self.shadow:
                raise ValueError(f"EMA.update: the module has a parameter {name!r} the EMA was not made with")
            s = self.shadow[name]
            s *= self.decay
            s += (1 - self.decay) * p.data

    def copy_to(self, module):
        """Overwrite the module's parameters with the averaged ones."""
        module.load_state_dict(self.state_dict(), strict=False)

    def state_dict(self):
        return {name: to_numpy(a).copy() for name, a in self.shadow.items()}

    def load_state_dict(self, state):
        for name, a in self.shadow.items():
            if name not in state:
                raise ValueError(f"EMA.load_state_dict: missing {name!r}")
            if tuple(np.shape(state[name])) != tuple(a.shape):
                raise ValueError(f"EMA.load_state_dict: {name!r} has shape {tuple(np.shape(state[name]))}, "
                                 f"expected {tuple(a.shape)}")
            self.shadow[name] = xp_of(a).asarray(to_numpy(state[name]), dtype=a.dtype).copy()


def warmup_cosine_lr(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    """η(s) = η₀ (s + 1)/S_w for s < S_w, then min_lr + ½(η₀ − min_lr)(1 + cos(π·min(1, (s − S_w)/(S − S_w))))."""
    base_lr, warmup_steps, total_steps, min_lr = _check_schedule("warmup_cosine_lr", base_lr, warmup_steps,
                                                                 total_steps, min_lr)
    step = checks.integer("step", step, minimum=0, where="warmup_cosine_lr")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`.

    lr_at(step) gives η for the update with 0-based index `step`; apply(optimizer, step) sets it.
    """

    def __init__(self, base_lr, warmup_steps, total_steps, min_lr=0.0):
        base_lr, warmup_steps, total_steps, min_lr = _check_schedule("WarmupCosine", base_lr, warmup_steps,
                                                                     total_steps, min_lr)
        self.base_lr, self.warmup_steps, self.total_steps, self.min_lr = base_lr, warmup_steps, total_steps, min_lr

    def lr_at(self, step):
        return warmup_cosine_lr(step, self.base_lr, self.warmup_steps, self.total_steps, self.min_lr)

    def apply(self, optimizer, step):
        optimizer.lr = self.lr_at(step)
        return optimizer.lr
