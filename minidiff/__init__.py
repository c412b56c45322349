"""minidiff: autoencoders, VAEs and DDPM diffusion, from scratch on a NumPy autograd.

Map of the code: backend (numpy|cupy) → autograd (Tensor, Function) → ops (primitives)
→ functional → nn → models → train/cli; distributions and diffusion hold the math.
"""
from minidiff.autograd import Function, Tensor, enable_grad, get_default_dtype, is_grad_enabled, no_grad, \
    set_default_dtype, tensor
from minidiff.backend import default_rng, get_backend, manual_seed, set_backend, use_backend, xp_of
from minidiff import ops
from minidiff import functional, nn, optim  # noqa: E402  (layers on top of ops)

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "set_default_dtype",
           "get_default_dtype", "set_backend", "get_backend", "use_backend", "manual_seed", "default_rng",
           "xp_of", "ops", "functional", "nn", "optim"]
