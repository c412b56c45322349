"""Every public callable against malformed arguments: refused by name, never a stray exception or a silent result.

The public API is each package's `__all__` (minidiff.functional, minidiff.nn, minidiff.diffusion) or, for a
module without one, the callables it defines under a public name (optim, distributions, vae_objective, data,
quality, checkpoint, anomaly), plus the forward of every nn module. ENTRIES holds, for each, one valid call
and, argument by argument, the malformed values a careless user or an attacker passes: the wrong type, the
wrong rank or batch size, NaN/inf where it would poison the result, zero or negative sizes, bools where
integers are meant, strings, None. The laws:
  1. the valid call returns a result without NaN (an infinity can be right: a bin edge, a log of 0);
  2. each malformed value, put in place of its argument with the others valid, raises ValueError/TypeError
     whose message names that argument and is none of NumPy's own messages; any other exception class,
     a bare NumPy message or a returned result fails (with a per-call time limit: no hangs);
  3. array arguments of a fixed shape refuse any other shape hypothesis draws (no broadcasting);
  4. (the meta-test) every public callable has an entry here or a stated reason in NOT_FUZZED, and no entry
     names a callable that does not exist, so a new public function fails the suite until it is fuzzed.
See docs/reliability.md.
"""
import contextlib
import copy
import dataclasses
import inspect
import math
import signal

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import minidiff
import minidiff.functional as F
from minidiff import anomaly, checkpoint, data, diffusion, distributions as D, nn, optim, quality, vae_objective
from tests.fuzzing import make_outcome

BARE_NUMPY = ("operands could not be broadcast", "zero-size array", "setting an array element", "is out of bounds",
              "could not convert", "invalid literal", "cannot reshape array", "object arrays are not supported",
              "not supported between instances", "unsupported operand type", "object of type", "has no attribute",
              "not subscriptable", "is not iterable", "object cannot be interpreted", "must be real number, not",
              "only integer scalar arrays", "does not support", "takes from", "positional argument",
              "division by zero", "math domain error", "Singular matrix", "not aligned", "mismatch in its core",
              "output operand requires a reduction", "unhashable type")
outcome = make_outcome(BARE_NUMPY)

T, B = 5, 2
DATA = (B, 1, 4, 4)
SCHEDULE = diffusion.Schedule(np.linspace(1e-3, 0.2, T))


def _rng(seed=0):
    return np.random.default_rng(seed)


def normal(*shape, seed=0):
    return _rng([seed, *shape]).standard_normal(shape)


def unit(*shape, seed=0):
    return np.clip(normal(*shape, seed=seed), -1.0, 1.0)


# ---------------------------------------------------------------- argument kinds and their junk

@dataclasses.dataclass
class Arg:
    valid: object
    junk: tuple
    names: tuple = ()     # words the message may use for this argument besides its own name
    fixed: tuple = None   # for an array whose shape the other arguments fix: the shapes it may take


def array(valid, nan=False, shapes=None, none=False, more=(), fixed=False, also=()):
    """An array argument: not an array, None (unless optional), other shapes, NaN where it poisons.

    fixed: the other arguments define its shape (exactly, or one of `also`), so law 3 draws others.
    """
    valid = np.asarray(valid)
    shape = valid.shape
    wrong = shapes if shapes is not None else [shape[:-1], shape + (2,)]
    junk = ["abc", 3j] + ([] if none else [None]) + [np.zeros(s) for s in wrong]
    if nan and valid.dtype.kind == "f":
        junk.append(np.full(shape, np.nan))
    return Arg(valid, tuple(junk) + tuple(more), fixed=(shape,) + tuple(also) if fixed else None)


def integer(valid, lo=None, hi=None, none=False, more=()):
    junk = [True, 2.5, "3", math.inf] + ([] if none else [None])
    junk += [] if lo is None else [lo - 1]
    junk += [] if hi is None else [hi + 1]
    return Arg(valid, tuple(junk) + tuple(more))


def real(valid, lo=None, hi=None, above=None, below=None, finite=True, none=False, more=()):
    junk = [math.nan, "abc", True, 1j] + ([] if none else [None]) + ([math.inf, -math.inf] if finite else [])
    junk += [] if lo is None else [lo - 1.0]
    junk += [] if hi is None else [hi + 1.0]
    junk += [] if above is None else [above]
    junk += [] if below is None else [below]
    return Arg(valid, tuple(junk) + tuple(more))


def choice(valid, more=()):
    return Arg(valid, ("nonsense", None, 3) + tuple(more))


def flag(valid):
    return Arg(valid, ("yes", None, 2))


def rng_arg(none=True):
    return Arg(_rng(0), ("abc", 3.5) + (() if none else (None,)))


def schedule_arg():
    return Arg(SCHEDULE, (None, "linear", np.linspace(1e-3, 0.2, T)))


def dtype_arg(valid=None):
    return Arg(valid, ("nonsense", np.int64, 3))


def eps_model(shape=DATA):
    """A noise predictor returning zeros of `shape`, and models a careless user passes instead."""
    def model(x_t, t):
        return np.zeros(x_t.shape, x_t.dtype)
    return Arg(model, (None, "abc", lambda x_t, t: np.zeros((shape[0],) + (1,) * (len(shape) - 1)),
                       lambda x_t, t: np.zeros(x_t.shape[:-1])), names=("model",))


def timesteps(b=B):
    return Arg(np.arange(1, b + 1), (np.array([0, 1][:b]), np.array([1, T + 1][:b]), np.arange(1.0, b + 1),
                                     np.ones(b + 1, np.int64), np.ones(b, bool), None, "abc", 2.5), names=("t",))


def params():
    return Arg([nn.Parameter(np.ones(3))], ([], "abc", None, [np.ones(3)], [3.0]))


def module_arg():
    return Arg(nn.Linear(2, 2), (None, "abc", [nn.Parameter(np.ones(2))]))


@dataclasses.dataclass
class Entry:
    call: object          # call(**arguments)
    args: dict            # name -> Arg


def E(call, **args):
    return Entry(call, args)


# ---------------------------------------------------------------- stand-ins for trained models

class _Classifier:
    """What sample_quality needs of a classifier: class probabilities and features of images."""

    def predict_proba(self, x):
        logits = np.asarray(x).reshape(len(x), -1)[:, :3]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def features(self, x):
        return np.asarray(x).reshape(len(x), -1)[:, :4].astype(np.float64)


def _vae():
    from minidiff.models.vae import VAE
    minidiff.manual_seed(0)
    return VAE(image_shape=(1, 8, 8), latent_dim=2, channels=4)


def _module_forward(make, x_arg, name="x"):
    module = make()
    return E(lambda **kw: module(**kw), **{name: x_arg})


IMG = (B, 4, 5, 5)
NOT_NUMBERS = ("abc", None, [[1.0], [1.0, 2.0]])  # for elementwise ops, which take any shape and any number
ENTRIES = {
    # ------------------------------------------------------------ minidiff.functional
    "functional.linear": E(F.linear, x=array(normal(B, 3), shapes=[()]), weight=array(normal(4, 3)),
                           bias=array(normal(4), none=True, shapes=[(4, 1), (3,)], fixed=True)),
    "functional.conv2d": E(F.conv2d, x=array(normal(*IMG), shapes=[(B, 3, 5, 5), (4, 5, 5)]),
                           w=array(normal(3, 4, 3, 3), shapes=[(3, 4, 3), (3, 2, 3, 3)]),
                           b=array(normal(3), none=True, shapes=[(2,), (3, 1)], fixed=True),
                           stride=integer(1, lo=1), padding=integer(0, lo=0), dilation=integer(1, lo=1)),
    "functional.conv_transpose2d": E(F.conv_transpose2d, x=array(normal(*IMG), shapes=[(B, 3, 5, 5)]),
                                     w=array(normal(4, 3, 3, 3), shapes=[(4, 3, 3), (3, 3, 3, 3)]),
                                     b=array(normal(3), none=True, shapes=[(2,)]),
                                     stride=integer(2, lo=1), padding=integer(1, lo=0),
                                     output_padding=integer(1, lo=0, hi=1), dilation=integer(1, lo=1)),
    "functional.group_norm": E(F.group_norm, x=array(normal(*IMG), shapes=[(4,), (B, 3, 5, 5)]),
                               num_groups=integer(2, lo=1, more=(3,)),
                               weight=array(normal(4), none=True, shapes=[(3,), (4, 1)], fixed=True),
                               bias=array(normal(4), none=True, shapes=[(3,)], fixed=True),
                               eps=real(1e-5, lo=0.0)),
    "functional.group_norm_silu": E(F.group_norm_silu, x=array(normal(*IMG), shapes=[(4,), (B, 3, 5, 5)]),
                                    num_groups=integer(2, lo=1, more=(3,)),
                                    weight=array(normal(4), none=True, shapes=[(3,), (4, 1)], fixed=True),
                                    bias=array(normal(4), none=True, shapes=[(3,)], fixed=True),
                                    eps=real(1e-5, lo=0.0)),
    "functional.layer_norm": E(F.layer_norm, x=array(normal(B, 4, 3), shapes=[(B, 4, 2)]),
                               normalized_shape=Arg((3,), ((4,), (0,), "abc", None, (2.5,), (True,))),
                               weight=array(normal(3), none=True, shapes=[(4,)], fixed=True),
                               bias=array(normal(3), none=True, shapes=[(4,)], fixed=True),
                               eps=real(1e-5, lo=0.0)),
    "functional.scaled_dot_product_attention": E(
        F.scaled_dot_product_attention, q=array(normal(B, 3, 4), shapes=[(B, 3, 5), (4,)]),
        k=array(normal(B, 5, 4), shapes=[(B, 5, 3), (3, 5, 4)]),
        v=array(normal(B, 5, 2), shapes=[(B, 4, 2), (3, 5, 2)]),
        attn_mask=array(np.ones((3, 5), bool), none=True, shapes=[(3, 4)]),
        is_causal=flag(False), scale=real(0.5, none=True)),
    "functional.softmax": E(F.softmax, x=Arg(normal(B, 3), NOT_NUMBERS),
                            dim=integer(-1, lo=-2, hi=1, more=("0", 1.0))),
    "functional.log_softmax": E(F.log_softmax, x=Arg(normal(B, 3), NOT_NUMBERS),
                                dim=integer(-1, lo=-2, hi=1, more=("0",))),
    "functional.dropout": E(F.dropout, x=array(normal(B, 3), shapes=[], more=(np.arange(3),)),
                            p=real(0.5, lo=0.0, hi=1.0),
                            training=flag(True), rng=rng_arg()),
    "functional.interpolate": E(F.interpolate, x=array(normal(*IMG), shapes=[(4, 5, 5)]),
                                size=Arg(None, ((0, 3), (2.5, 3), "abc", (-1, 2), (3,))),
                                scale_factor=real(2, above=0.0, none=True, more=(0.0,)), mode=choice("nearest")),
    "functional.avg_pool2d": E(F.avg_pool2d, x=array(normal(*IMG), shapes=[(4, 5, 5)]),
                               kernel_size=integer(2, lo=1, more=(8,)), stride=integer(None, lo=1, none=True),
                               padding=integer(1, lo=0, more=(2,))),
    "functional.embedding": E(F.embedding, indices=Arg(np.array([[0, 4], [2, 3]]), (
        np.array([0, 5]), np.array([-1, 0]), np.array([0.0, 1.0]), "abc", None, np.array([True, False]))),
        weight=array(normal(5, 3), shapes=[(5,)])),
    **{f"functional.{name}": E(getattr(F, name), x=Arg(normal(B, 3), NOT_NUMBERS))
       for name in ("silu", "relu", "sigmoid", "tanh")},
    "functional.gelu": E(F.gelu, x=Arg(normal(B, 3), NOT_NUMBERS), approximate=choice("tanh")),

    # ------------------------------------------------------------ minidiff.nn: constructors
    "nn.Parameter": E(nn.Parameter, data=Arg(normal(3), ("abc", None, [[1.0], [1.0, 2.0]], np.array([1, 2]))),
                      requires_grad=flag(True)),
    "nn.Sequential": E(lambda module: nn.Sequential(module), module=Arg(nn.Identity(), (None, "abc", 3)),),
    "nn.ModuleList": E(nn.ModuleList, modules=Arg([nn.Identity()], ([None], "abc", 3, [3]))),
    "nn.Module": E(nn.Module),
    "nn.Identity": E(nn.Identity),
    "nn.Linear": E(nn.Linear, in_features=integer(3, lo=1), out_features=integer(4, lo=1), bias=flag(True),
                   dtype=dtype_arg()),
    "nn.Conv2d": E(nn.Conv2d, in_channels=integer(4, lo=1), out_channels=integer(3, lo=1),
                   kernel_size=integer(3, lo=1), stride=integer(1, lo=1), padding=integer(1, lo=0),
                   dilation=integer(1, lo=1), bias=flag(True), dtype=dtype_arg()),
    "nn.ConvTranspose2d": E(nn.ConvTranspose2d, in_channels=integer(4, lo=1), out_channels=integer(3, lo=1),
                            kernel_size=integer(3, lo=1), stride=integer(2, lo=1), padding=integer(1, lo=0),
                            output_padding=integer(1, lo=0, hi=1), dilation=integer(1, lo=1), bias=flag(True),
                            dtype=dtype_arg()),
    "nn.GroupNorm": E(nn.GroupNorm, num_groups=integer(2, lo=1, more=(3,)), num_channels=integer(4, lo=1, more=(5,)),
                      eps=real(1e-5, lo=0.0), affine=flag(True), dtype=dtype_arg()),
    "nn.GroupNormSiLU": E(nn.GroupNormSiLU, num_groups=integer(2, lo=1, more=(3,)),
                          num_channels=integer(4, lo=1, more=(5,)), eps=real(1e-5, lo=0.0), affine=flag(True),
                          dtype=dtype_arg()),
    "nn.LayerNorm": E(nn.LayerNorm, normalized_shape=Arg((3,), ((0,), "abc", None, (2.5,), (-1,), True)),
                      eps=real(1e-5, lo=0.0), elementwise_affine=flag(True), dtype=dtype_arg()),
    "nn.Embedding": E(nn.Embedding, num_embeddings=integer(5, lo=1), embedding_dim=integer(3, lo=1), dtype=dtype_arg()),
    "nn.SiLU": E(nn.SiLU), "nn.ReLU": E(nn.ReLU), "nn.Sigmoid": E(nn.Sigmoid), "nn.Tanh": E(nn.Tanh),
    "nn.Flatten": E(nn.Flatten),
    "nn.GELU": E(nn.GELU, approximate=choice("tanh")),
    "nn.Dropout": E(nn.Dropout, p=real(0.5, lo=0.0, hi=1.0)),
    "nn.Upsample": E(nn.Upsample, size=Arg(None, ((0, 3), (2.5, 3), "abc", (-1, 2))),
                     scale_factor=real(2, above=0.0, none=True), mode=choice("nearest")),
    "nn.AvgPool2d": E(nn.AvgPool2d, kernel_size=integer(2, lo=1), stride=integer(None, lo=1, none=True),
                      padding=integer(1, lo=0, more=(2,))),
    "nn.Unflatten": E(nn.Unflatten, shape=Arg((2, 2), ("abc", None, (2.5, 2), (0, 2), (-1, 2), 4))),
    "nn.SelfAttention2d": E(nn.SelfAttention2d, channels=integer(4, lo=1), num_heads=integer(2, lo=1, more=(3,)),
                            num_groups=integer(2, lo=0, more=(3,)), eps=real(1e-5, lo=0.0), dtype=dtype_arg()),
    "nn.MultiheadSelfAttention": E(nn.MultiheadSelfAttention, embed_dim=integer(4, lo=1),
                                   num_heads=integer(2, lo=1, more=(3,)), dtype=dtype_arg()),
    "nn.TransformerBlock": E(nn.TransformerBlock, dim=integer(4, lo=1), num_heads=integer(2, lo=1, more=(3,)),
                             mlp_ratio=integer(4, lo=1), eps=real(1e-5, lo=0.0), dtype=dtype_arg()),
    "nn.SinusoidalTimeEmbedding": E(nn.SinusoidalTimeEmbedding, embedding_dim=integer(6, lo=2),
                                    max_period=real(1e4, above=0.0), dtype=dtype_arg()),
    "nn.sinusoidal_embedding": E(nn.sinusoidal_embedding, t=array(np.array([1, 5]), shapes=[(), (2, 1)]),
                                 embedding_dim=integer(6, lo=2), max_period=real(1e4, above=0.0), dtype=dtype_arg(),
                                 freq_shift=integer(1, lo=0, hi=2), flip_sin_to_cos=flag(False)),

    # ------------------------------------------------------------ minidiff.nn: forward
    "nn.Identity.forward": E(lambda x: nn.Identity()(x), x=Arg(normal(3), ())),  # returns anything it is given
    "nn.Linear.forward": _module_forward(lambda: nn.Linear(3, 4, dtype=np.float64),
                                         array(normal(B, 3), shapes=[(B, 2), ()])),
    "nn.Conv2d.forward": _module_forward(lambda: nn.Conv2d(4, 3, 3, padding=1, dtype=np.float64),
                                         array(normal(*IMG), shapes=[(B, 3, 5, 5), (4, 5, 5)])),
    "nn.ConvTranspose2d.forward": _module_forward(lambda: nn.ConvTranspose2d(4, 3, 3, 2, 1, 1, dtype=np.float64),
                                                  array(normal(*IMG), shapes=[(B, 3, 5, 5), (4, 5, 5)])),
    "nn.GroupNorm.forward": _module_forward(lambda: nn.GroupNorm(2, 4, dtype=np.float64),
                                            array(normal(*IMG), shapes=[(B, 3, 5, 5), (4,)])),
    "nn.GroupNormSiLU.forward": _module_forward(lambda: nn.GroupNormSiLU(2, 4, dtype=np.float64),
                                                array(normal(*IMG), shapes=[(B, 3, 5, 5), (4,)])),
    "nn.LayerNorm.forward": _module_forward(lambda: nn.LayerNorm((3,), dtype=np.float64),
                                            array(normal(B, 3), shapes=[(B, 4), ()])),
    "nn.Embedding.forward": _module_forward(lambda: nn.Embedding(5, 3, dtype=np.float64), Arg(
        np.array([0, 4]), (np.array([0, 5]), np.array([-1]), np.array([0.5]), "abc", None)), "indices"),
    **{f"nn.{name}.forward": _module_forward(getattr(nn, name), Arg(normal(B, 3), ("abc", None)))
       for name in ("SiLU", "GELU", "ReLU", "Sigmoid", "Tanh", "Dropout")},
    "nn.Upsample.forward": _module_forward(lambda: nn.Upsample(scale_factor=2),
                                           array(normal(*IMG), shapes=[(4, 5, 5)])),
    "nn.AvgPool2d.forward": _module_forward(lambda: nn.AvgPool2d(2), array(normal(*IMG), shapes=[(4, 5, 5)])),
    "nn.Flatten.forward": _module_forward(nn.Flatten, array(normal(*IMG), shapes=[()])),
    "nn.Unflatten.forward": _module_forward(lambda: nn.Unflatten((2, 2)),
                                            array(normal(B, 4), shapes=[(B, 5), ()])),
    "nn.SelfAttention2d.forward": _module_forward(lambda: nn.SelfAttention2d(4, 2, 2, dtype=np.float64),
                                                  array(normal(*IMG), shapes=[(B, 3, 5, 5), (4, 5, 5)])),
    "nn.MultiheadSelfAttention.forward": _module_forward(lambda: nn.MultiheadSelfAttention(4, 2, dtype=np.float64),
                                                         array(normal(B, 3, 4), shapes=[(B, 3, 5), (3, 4)])),
    "nn.TransformerBlock.forward": _module_forward(lambda: nn.TransformerBlock(4, 2, dtype=np.float64),
                                                   array(normal(B, 3, 4), shapes=[(B, 3, 5), (3, 4)])),
    "nn.SinusoidalTimeEmbedding.forward": _module_forward(lambda: nn.SinusoidalTimeEmbedding(6),
                                                          array(np.array([1, 5]), shapes=[(), (2, 1)]), "t"),
    "nn.Sequential.forward": _module_forward(lambda: nn.Sequential(nn.Linear(3, 2, dtype=np.float64)),
                                             array(normal(B, 3), shapes=[(B, 2)])),

    # ------------------------------------------------------------ minidiff.optim
    "optim.Optimizer": E(optim.Optimizer, params=params(), lr=real(0.1, lo=0.0)),
    "optim.SGD": E(optim.SGD, params=params(), lr=real(0.1, lo=0.0), momentum=real(0.9, lo=0.0),
                   nesterov=flag(False), weight_decay=real(0.0, lo=0.0)),
    "optim.Adam": E(optim.Adam, params=params(), lr=real(1e-3, lo=0.0),
                    betas=Arg((0.9, 0.999), ((0.9, 0.99, 0.9), 0.9, (0.9, math.nan), (1.0, 0.9), (-0.1, 0.9), "ab")),
                    eps=real(1e-8, above=0.0), weight_decay=real(0.0, lo=0.0)),
    "optim.AdamW": E(optim.AdamW, params=params(), lr=real(1e-3, lo=0.0),
                     betas=Arg((0.9, 0.999), ((0.9,), (0.9, 1.5), (0.9, "a"))),
                     eps=real(1e-8, above=0.0), weight_decay=real(0.01, lo=0.0)),
    "optim.EMA": E(optim.EMA, module=module_arg(), decay=real(0.9, lo=0.0, hi=1.0)),
    "optim.WarmupCosine": E(optim.WarmupCosine, base_lr=real(0.1, above=0.0), warmup_steps=integer(2, lo=0),
                            total_steps=integer(10, lo=1), min_lr=real(0.0, lo=0.0, more=(0.2,))),
    "optim.warmup_cosine_lr": E(optim.warmup_cosine_lr, step=integer(3, lo=0), base_lr=real(0.1, above=0.0),
                                warmup_steps=integer(2, lo=0), total_steps=integer(10, lo=1),
                                min_lr=real(0.0, lo=0.0, more=(0.2,))),
    "optim.clip_grad_norm": E(optim.clip_grad_norm, params=params(), max_norm=real(1.0, lo=0.0, finite=False)),
}


# ---------------------------------------------------------------- minidiff.diffusion

def _x(seed=0):
    return unit(*DATA, seed=seed)


def _grid(seed=0):
    """Data on the 256-level grid of [-1, 1], as the discretised decoder needs."""
    return np.round((_x(seed) + 1.0) * 127.5) / 127.5 - 1.0


def _diff(fn, *names, **extra):
    """An entry for a function of (B, 1, 4, 4) arrays named `names`, t and the schedule where named."""
    args = {}
    for i, name in enumerate(names):
        if name == "t":
            args["t"] = timesteps()
        elif name == "schedule":
            args["schedule"] = schedule_arg()
        elif not args:  # the first array sets the shape the others must have
            args[name] = array(_x(i), shapes=[()])
        else:
            args[name] = array(_x(i), shapes=[(B, 1, 1, 1), (B, 1, 4), (B + 1, 1, 4, 4)], fixed=True)
    args.update(extra)
    return E(fn, **args)


RESPACED_STEPS = dataclasses.replace(integer(None, lo=2, hi=T, none=True), names=("K",))  # Schedule.respace's K
SAMPLE_COMMON = dict(shape=Arg(DATA, ((0, 1, 4, 4), (B, -1, 4, 4), "abc", None, (2.5, 1))),
                     schedule=schedule_arg(), rng=rng_arg(), steps=integer(None, lo=1, hi=T, none=True),
                     clip_x0=flag(False), dtype=Arg(np.float32, ("nonsense", np.int64)),
                     return_trajectory=flag(False), progress=flag(False),
                     x_T=array(unit(*DATA).astype(np.float32), none=True, shapes=[(B, 1, 4), (B + 1, 1, 4, 4)]))
NOISE = Arg(None, ([np.zeros(DATA, np.float32)] * (T - 1), "abc", [np.zeros((B, 1, 1, 1), np.float32)] * T,
                   [np.full(DATA, np.nan, np.float32)] * T))

ENTRIES.update({
    "diffusion.Schedule": E(diffusion.Schedule, betas=Arg(np.linspace(1e-3, 0.2, T), (
        "abc", None, [], [[0.1], [0.2, 0.3]], np.array([0.1, 1.0]), np.array([0.1, np.nan]), np.ones((2, 2)) * 0.1,
        np.array([0.1, 0.2]) * (1 + 1j), 0.1), names=("beta",)),
        timesteps=Arg(None, ("abc", np.arange(T), np.arange(T + 1.0)))),
    "diffusion.make_schedule": E(diffusion.make_schedule, name=choice("cosine"), T=integer(10, lo=1)),
    "diffusion.schedules_at": E(diffusion.schedules_at, T=integer(10, lo=1)),
    "diffusion.spaced_timesteps": E(diffusion.spaced_timesteps, T=integer(10, lo=1), K=integer(4, lo=1, hi=10)),
    "diffusion.q_step_mean_variance": _diff(diffusion.q_step_mean_variance, "x_prev", "t", "schedule"),
    "diffusion.q_step_sample": _diff(diffusion.q_step_sample, "x_prev", "t", "eps", "schedule"),
    "diffusion.q_mean_variance": _diff(diffusion.q_mean_variance, "x0", "t", "schedule"),
    "diffusion.q_sample": _diff(diffusion.q_sample, "x0", "t", "eps", "schedule", impl=choice("numpy")),
    "diffusion.q_posterior": _diff(diffusion.q_posterior, "x0", "x_t", "t", "schedule"),
    "diffusion.x0_from_eps": _diff(diffusion.x0_from_eps, "x_t", "t", "eps", "schedule"),
    "diffusion.eps_from_x0": _diff(diffusion.eps_from_x0, "x_t", "t", "x0", "schedule"),
    "diffusion.v_from_x0_eps": _diff(diffusion.v_from_x0_eps, "x0", "eps", "t", "schedule"),
    "diffusion.x0_from_v": _diff(diffusion.x0_from_v, "x_t", "t", "v", "schedule"),
    "diffusion.eps_from_v": _diff(diffusion.eps_from_v, "x_t", "t", "v", "schedule"),
    "diffusion.predict_x0": _diff(diffusion.predict_x0, "model_output", "x_t", "t", "schedule",
                                  prediction=choice("v")),
    "diffusion.p_mean_variance": _diff(diffusion.p_mean_variance, "eps_hat", "x_t", "t", "schedule",
                                       variance=choice("fixed_large"), clip_x0=flag(True), prediction=choice("x0")),
    "diffusion.l_simple": _diff(diffusion.l_simple, "eps_hat", "eps"),
    "diffusion.eps_loss": _diff(diffusion.eps_loss, "eps_hat", "eps",
                                weights=array(np.ones(B), none=True, shapes=[(B + 1,), (B, 1)], fixed=True)),
    "diffusion.fused_eps_loss": _diff(diffusion.fused_eps_loss, "eps_hat", "eps",
                                      weights=array(np.ones(B), none=True, shapes=[(B + 1,), (B, 1)], fixed=True),
                                      impl=choice("numpy")),
    "diffusion.elbo_weighted_loss": _diff(diffusion.elbo_weighted_loss, "eps_hat", "eps", "t", "schedule",
                                          variance=choice("fixed_large")),
    "diffusion.vb_terms_bpd": _diff(diffusion.vb_terms_bpd, "x0", "x_t", "t", "eps_hat", "schedule",
                                    variance=choice("fixed_large"), clip_x0=flag(True), prediction=choice("x0"),
                                    decoder=choice("gaussian"), cdf=choice("tanh"),
                                    levels=integer(256, lo=2)),
    "diffusion.prior_bpd": _diff(diffusion.prior_bpd, "x0", "schedule"),
    "diffusion.nll_bpd": E(diffusion.nll_bpd, model=eps_model(), x0=array(_grid(), shapes=[()]),
                           schedule=schedule_arg(), rng=rng_arg(none=False), variance=choice("fixed_large"),
                           clip_x0=flag(False), decoder=choice("discretized"), cdf=choice("tanh"),
                           progress=flag(False), levels=integer(256, lo=2)),
    "diffusion.nll_bpd_importance": E(diffusion.nll_bpd_importance, model=eps_model(),
                                      x0=array(_grid(), shapes=[()]), schedule=schedule_arg(),
                                      rng=rng_arg(none=False), n_t=integer(2, lo=1),
                                      proposal=Arg(None, (np.ones(T - 1), np.full(T, np.nan), -np.ones(T), "abc")),
                                      variance=choice("fixed_large"), clip_x0=flag(False),
                                      decoder=choice("discretized"), cdf=choice("tanh"), levels=integer(256, lo=2)),
    "diffusion.ddpm_sample": E(diffusion.ddpm_sample, model=eps_model(), variance=choice("fixed_large"),
                               noise=NOISE, impl=choice("numpy"), **SAMPLE_COMMON),
    "diffusion.ddim_sample": E(diffusion.ddim_sample, model=eps_model(), eta=real(0.5, lo=0.0), noise=NOISE,
                               **SAMPLE_COMMON),
    "diffusion.langevin_sample": E(diffusion.langevin_sample, model=eps_model(), n_inner=integer(2, lo=1),
                                   step_ratio=real(1.0, above=0.0, below=2.0), denoise=flag(True),
                                   noise=Arg(None, ("abc",)), **SAMPLE_COMMON),
    "diffusion.sde_sample": E(diffusion.sde_sample, model=eps_model(), noise=NOISE, **SAMPLE_COMMON),
    "diffusion.ode_sample": E(diffusion.ode_sample, model=eps_model(), solver=choice("euler"),
                              **{k: v for k, v in SAMPLE_COMMON.items()}),
    "diffusion.ddim_step": E(diffusion.ddim_step, x_t=array(_x(), shapes=[(B, 1, 4), ()]), k=integer(3, lo=1, hi=T),
                             eps_hat=array(_x(1), shapes=[(B, 1, 1, 1), (B + 1, 1, 4, 4)], fixed=True),
                             z=array(_x(2), shapes=[(B, 1, 1, 1), (B + 1, 1, 4, 4)], fixed=True), chain=schedule_arg(),
                             eta=real(0.5, lo=0.0), clip_x0=flag(False)),
    "diffusion.DDPMSampler": E(diffusion.DDPMSampler, variance=choice("fixed_large"), clip_x0=flag(False),
                               impl=choice("numpy")),
    "diffusion.DDIMSampler": E(diffusion.DDIMSampler, eta=real(0.5, lo=0.0), clip_x0=flag(False)),
    "diffusion.LangevinSampler": E(diffusion.LangevinSampler, n_inner=integer(2, lo=1),
                                   step_ratio=real(1.0, above=0.0, below=2.0), denoise=flag(True), clip_x0=flag(False)),
    "diffusion.ReverseSDESampler": E(diffusion.ReverseSDESampler, clip_x0=flag(False)),
    "diffusion.ProbabilityFlowSampler": E(diffusion.ProbabilityFlowSampler, solver=choice("euler"),
                                          clip_x0=flag(False)),
    "diffusion.make_sampler": E(diffusion.make_sampler, name=choice("ddim")),
    "diffusion.Draws": E(diffusion.Draws, shape=Arg(DATA, ((0, 1, 4, 4), (B, -1, 4, 4), "abc", None, (2.5, 1))),
                         K=integer(T, lo=1), rng=rng_arg(), x_T=array(unit(*DATA), none=True, shapes=[(B, 1, 4)]),
                         noise=Arg(None, ([np.zeros(DATA)] * (T - 1), "abc")),
                         dtype=Arg(np.float32, ("nonsense", np.int64))),
    "diffusion.sample": E(lambda sampler, **kw: diffusion.sample(sampler, **kw),
                          sampler=Arg(diffusion.DDIMSampler(), (None, "ddim", diffusion.DDIMSampler)),
                          model=eps_model(), noise=NOISE,
                          **{k: v for k, v in SAMPLE_COMMON.items() if k != "clip_x0"}),
    "diffusion.run_chain": E(diffusion.run_chain, sampler=Arg(diffusion.DDIMSampler(), (None, "ddim")),
                             model=eps_model(), chain=schedule_arg(),
                             draws=Arg(diffusion.Draws(DATA, T, x_T=unit(*DATA)), (None, "abc", diffusion.Draws(
                                 DATA, T - 1, x_T=unit(*DATA)))),
                             return_trajectory=flag(False), progress=flag(False)),
    "diffusion.GaussianDataOracle": E(diffusion.GaussianDataOracle, mean=array(np.zeros((1, 4, 4)), shapes=[]),
                                      std=array(np.ones((1, 4, 4)), shapes=[], more=(-np.ones((1, 4, 4)),)),
                                      schedule=schedule_arg()),
    "diffusion.EmpiricalDenoiser": E(diffusion.EmpiricalDenoiser,
                                     train_x=array(unit(3, 1, 4, 4), shapes=[(3,), (0, 1, 4, 4)]),
                                     schedule=schedule_arg()),
    "diffusion.guided_eps": _diff(diffusion.guided_eps, "eps_cond", "eps_uncond", scale=real(2.0)),
    "diffusion.guided_model": E(diffusion.guided_model, network=Arg(lambda x, t, y: np.zeros(x.shape), (None, "abc")),
                                labels=array(np.arange(B), more=(np.arange(B) + 0.5,)),
                                null_label=integer(10, lo=0), scale=real(2.0)),
    "diffusion.learned_log_variance": _diff(diffusion.learned_log_variance, "v", "t", "schedule"),
    "diffusion.score_from_eps": _diff(diffusion.score_from_eps, "eps_hat", "t", "schedule"),
    "diffusion.conditional_score": _diff(diffusion.conditional_score, "x_t", "x0", "t", "schedule"),
    "diffusion.dsm_loss": _diff(diffusion.dsm_loss, "score_hat", "x_t", "x0", "t", "schedule",
                                weighting=choice("none")),
    "diffusion.ode_log_likelihood": E(diffusion.ode_log_likelihood, model=eps_model((B, 3)),
                                      x0=array(unit(B, 3), shapes=[()]), schedule=schedule_arg(),
                                      steps=RESPACED_STEPS, trace=choice("exact"),
                                      rng=rng_arg(), divergence=choice("finite-difference"), solver=choice("euler")),
    "diffusion.ode_nll_bpd": E(diffusion.ode_nll_bpd, model=eps_model((B, 3)),
                               x0=array(np.round((unit(B, 3) + 1) * 127.5) / 127.5 - 1, shapes=[()]),
                               schedule=schedule_arg(), steps=RESPACED_STEPS,
                               trace=choice("exact"), rng=rng_arg(), divergence=choice("finite-difference"),
                               solver=choice("euler"), n_dequant=integer(1, lo=1),
                               levels=integer(256, lo=2)),
    "diffusion.beta_continuous": E(diffusion.beta_continuous, schedule=schedule_arg(),
                                   tau=real(0.5, lo=0.0, hi=1.0)),
    "diffusion.alpha_bar_continuous": E(diffusion.alpha_bar_continuous, schedule=schedule_arg(),
                                        tau=real(0.5, lo=0.0, hi=1.0)),
    "diffusion.probability_flow_drift": E(diffusion.probability_flow_drift, x=array(_x(), shapes=[(B, 1, 4)]),
                                          score=array(_x(1), shapes=[(B, 1, 1, 1), (B + 1, 1, 4, 4)], fixed=True),
                                          tau=real(0.5, lo=0.0, hi=1.0), schedule=schedule_arg()),
})


# ---------------------------------------------------------------- distributions and the VAE objective

X01 = (_rng(3).random((B, 6)) > 0.5).astype(np.float64)
GRID = np.round((unit(B, 6) + 1.0) * 127.5) / 127.5 - 1.0
POSTERIOR = D.DiagonalGaussian(normal(B, 3), normal(B, 3, seed=1))
BAD_POSTERIOR = (None, "abc", D.DiagonalGaussian(normal(B + 1, 3), normal(B + 1, 3)))


ENTRIES.update({
    "distributions.DiagonalGaussian": E(D.DiagonalGaussian, mean=array(normal(B, 3)),
                                        logvar=array(normal(B, 3, seed=1), shapes=[(B, 1), (B + 1, 3)], fixed=True)),
    "distributions.approx_standard_normal_cdf": E(D.approx_standard_normal_cdf, x=Arg(normal(B, 3), ("abc", None))),
    "distributions.bernoulli_log_likelihood": E(D.bernoulli_log_likelihood, x=array(X01, shapes=[]),
                                                logits=array(normal(B, 6), shapes=[(B, 1), (B + 1, 6), (6,)],
                                                             fixed=True)),
    "distributions.discretized_bin_edges": E(D.discretized_bin_edges, x=array(GRID, more=(np.full((B, 6), 2.0),)),
                                             levels=integer(256, lo=2)),
    "distributions.discretized_gaussian_log_likelihood": E(
        D.discretized_gaussian_log_likelihood, x=array(GRID, shapes=[], more=(np.full((B, 6), 2.0),)),
        mean=array(normal(B, 6), shapes=[(B, 1), (B + 1, 6)]), log_scale=array(normal(B, 6), shapes=[(B + 1, 6), (6,)]),
        cdf=choice("tanh"), levels=integer(256, lo=2)),
    "distributions.gaussian_log_density": E(D.gaussian_log_density, x=array(normal(B, 6), shapes=[]),
                                            mean=array(normal(B, 6), shapes=[(B, 1), (B + 1, 6)], fixed=True),
                                            logvar=array(normal(B, 6), shapes=[(B + 1, 6), (6,)], fixed=True,
                                                         also=[(B, 1), ()])),
    "distributions.kl_standard_normal": E(D.kl_standard_normal, mean=array(normal(B, 6), shapes=[]),
                                          logvar=array(normal(B, 6), shapes=[(B + 1, 6), (6,), (B, 6, 1)])),
    "distributions.kl_standard_normal_std": E(D.kl_standard_normal_std, mean=array(normal(B, 6), shapes=[]),
                                              std=array(np.ones((B, 6)), shapes=[(B + 1, 6), (6,)],
                                                        more=(-np.ones((B, 6)),))),
    "distributions.log_normal_cdf_diff": E(D.log_normal_cdf_diff, a=array(-np.ones((B, 6))),
                                           b=array(np.ones((B, 6)), shapes=[(B, 1), (B + 1, 6)], fixed=True)),
    "distributions.normal_kl": E(D.normal_kl, mean1=array(normal(B, 6), shapes=[]),
                                 logvar1=array(normal(B, 6), shapes=[(B + 1, 6)]),
                                 mean2=array(normal(B, 6), shapes=[(B + 1, 6)], fixed=True),
                                 logvar2=array(normal(B, 6), shapes=[(B + 1, 6)])),
    "distributions.gaussian_kl_full": E(D.gaussian_kl_full, mean1=array(normal(B, 3), nan=True),
                                        cov1=array(np.broadcast_to(np.eye(3), (B, 3, 3)), nan=True,
                                                   more=(-np.broadcast_to(np.eye(3), (B, 3, 3)),)),
                                        mean2=array(normal(3), shapes=[(2,), (B, 3)]),
                                        cov2=array(np.eye(3), shapes=[(3,), (3, 3, 3), (B, 3, 2)],
                                                   more=(np.ones((3, 3)),))),
    "distributions.sum_except_batch": E(D.sum_except_batch, x=array(normal(B, 6), shapes=[()])),
    "vae_objective.elbo": E(vae_objective.elbo, x=array(X01, shapes=[(6,)]), posterior=Arg(POSTERIOR, BAD_POSTERIOR),
                            decoder_output=array(normal(B, 6), shapes=[(B, 1), (B + 1, 6)], fixed=True),
                            likelihood=choice("bernoulli"), beta=real(1.0, lo=0.0), decoder_logvar=real(0.0)),
    "vae_objective.vae_loss": E(vae_objective.vae_loss, x=array(X01, shapes=[(6,)]),
                                posterior=Arg(POSTERIOR, BAD_POSTERIOR),
                                decoder_output=array(normal(B, 6), shapes=[(B, 1), (B + 1, 6)]),
                                likelihood=choice("bernoulli"), beta=real(1.0, lo=0.0), decoder_logvar=real(0.0)),
    "vae_objective.reconstruction_log_likelihood": E(
        vae_objective.reconstruction_log_likelihood, x=array(X01, shapes=[(6,)]),
        decoder_output=array(normal(B, 6), shapes=[(B, 1), (B + 1, 6)]), likelihood=choice("gaussian"),
        decoder_logvar=real(0.0)),
    "vae_objective.importance_weighted_bound": E(
        vae_objective.importance_weighted_bound, x=array(X01, shapes=[(6,)]), posterior=Arg(POSTERIOR, BAD_POSTERIOR),
        decode=Arg(lambda z: np.zeros((len(z), 6)), (None, "abc", lambda z: np.zeros((len(z), 1)))),
        K=integer(3, lo=1), rng=rng_arg(none=False), likelihood=choice("bernoulli"), decoder_logvar=real(0.0)),
})


# ---------------------------------------------------------------- data, quality, checkpoint, anomaly

PATHS = (None, 999999, 3.5, ["f"])
ENTRIES.update({
    "data.BatchStream": E(data.BatchStream, n=integer(10, lo=1), batch_size=integer(4, lo=1, hi=10),
                          seed=integer(0, lo=0)),
    "data.ImageDataset": E(data.ImageDataset, name=Arg("toy", (None, 3)),
                           x_train=array(unit(4, 1, 2, 2), shapes=[(4,)]), y_train=array(np.arange(4), shapes=[(3,)]),
                           x_test=array(unit(2, 1, 2, 2), shapes=[(2, 1, 3, 2)]),
                           y_test=array(np.arange(2), shapes=[(3,)]), num_classes=integer(4, lo=1, more=(2,)),
                           levels=integer(None, lo=2, none=True)),
    "data.digits": E(data.digits, test_fraction=real(0.2, above=0.0, below=1.0), seed=integer(0, lo=0)),
    "data.draw_shape": E(data.draw_shape, kind=choice("disc"), size=integer(8, lo=1),
                         centre=Arg((4.0, 4.0), ("abc", None, (1.0,), (math.nan, 1.0))), radius=real(2.0, above=0.0)),
    "data.two_moons": E(data.two_moons, n=integer(10, lo=1), noise=real(0.05, lo=0.0), seed=integer(0, lo=0)),
    "data.swiss_roll": E(data.swiss_roll, n=integer(10, lo=1), noise=real(0.05, lo=0.0), seed=integer(0, lo=0)),
    "data.eight_gaussians": E(data.eight_gaussians, n=integer(10, lo=1), std=real(0.05, lo=0.0),
                              radius=real(1.0, above=0.0), seed=integer(0, lo=0)),
    "data.points": E(data.points, name=choice("two-moons"), n=integer(20, lo=2),
                     test_fraction=real(0.2, above=0.0, below=1.0), seed=integer(0, lo=0)),
    "data.shapes": E(data.shapes, n=integer(20, lo=2), size=integer(8, lo=6),
                     test_fraction=real(0.2, above=0.0, below=1.0),
                     seed=integer(0, lo=0)),
    "data.load_dataset": E(data.load_dataset, name=choice("two-moons"), root=Arg(None, (3,)), seed=integer(0, lo=0)),
    "data.load_images": E(data.load_images, name=choice("digits"), root=Arg(None, (3,)), seed=integer(0, lo=0)),
    "data.mnist": E(data.mnist, root=Arg("idx", PATHS), name=choice("mnist")),
    "data.iterate_batches": E(lambda **kw: list(data.iterate_batches(**kw)),
                              arrays=Arg((np.arange(5), np.arange(5)),
                                         ((np.arange(5), np.arange(4)), "abc", None, [3])),
                              batch_size=integer(2, lo=1), seed=integer(0, lo=0), shuffle=flag(True),
                              drop_last=flag(False)),
    "data.train_test_split": E(data.train_test_split, x=array(np.arange(10.0), shapes=[()]),
                               y=array(np.arange(10), shapes=[(9,)]), test_fraction=real(0.2, above=0.0, below=1.0),
                               seed=integer(0, lo=0)),
    "data.scale_to_unit_interval": E(data.scale_to_unit_interval, pixels=Arg(np.arange(6, dtype=np.uint8), (
        "abc", None, np.array([0, 300]), np.array([-1, 2]))), max_value=integer(255, lo=1, more=(0,))),
    "data.parse_idx": E(data.parse_idx, buffer=Arg(b"\x00\x00\x08\x01\x00\x00\x00\x02\x05\x06",
                                                   ("abc", None, 3, b"\x00"), names=("bytes",)),
                        source=Arg("<bytes>", ())),
    "data.read_idx": E(data.read_idx, path=Arg("idx/t10k-labels-idx1-ubyte", PATHS)),
    "data.write_idx": E(data.write_idx, path=Arg("out.idx", PATHS),
                        array=Arg(np.arange(4, dtype=np.uint8),
                                  ("abc", None, np.array(3, np.uint8), np.arange(3.0) * 1j))),
    "quality.gaussian_fit": E(quality.gaussian_fit,
                              features=array(normal(5, 3), nan=True, shapes=[(5,), (1, 3), (0, 3)])),
    "quality.frechet_distance": E(quality.frechet_distance,
                                  features_a=array(normal(5, 3), nan=True, shapes=[(5,), (1, 3)]),
                                  features_b=array(normal(6, 3, seed=1), nan=True, shapes=[(6, 2), (1, 3)])),
    "quality.confident_fraction": E(quality.confident_fraction,
                                    probs=array(np.full((4, 3), 1 / 3), shapes=[(4,), (0, 3)]),
                                    threshold=real(0.9, lo=0.0, hi=1.0)),
    "quality.label_entropy": E(quality.label_entropy, probs=array(np.full((4, 3), 1 / 3), shapes=[(4,), (0, 3)]),
                               num_classes=integer(None, lo=1, none=True, more=(2,))),
    "quality.sample_quality": E(quality.sample_quality, classifier=Arg(_Classifier(), (None, "abc")),
                                samples=array(normal(5, 1, 2, 2), shapes=[(1, 1, 2, 2), (5,)]),
                                reference=array(normal(6, 1, 2, 2), shapes=[(1, 1, 2, 2), (6, 1, 1, 1)]),
                                requested_labels=array(np.arange(5) % 3, none=True, shapes=[(4,), (5, 1)])),
    "quality.reference_distance": E(quality.reference_distance, classifier=Arg(_Classifier(), (None, "abc")),
                                    x_train=array(normal(8, 1, 2, 2), shapes=[(8,), (1, 1, 2, 2)]),
                                    x_test=array(normal(6, 1, 2, 2), shapes=[(6, 1, 1, 1)]),
                                    n=integer(5, lo=2, more=(9,)), seed=integer(0, lo=0)),
    "checkpoint.encode": E(checkpoint.encode, tensors=Arg({"w": normal(3)}, (
        None, "abc", {"": normal(3)}, {"w": "abc"}, {3: normal(3)}, {"w": np.array([object()])})),
        metadata=Arg(None, ({"a": 3}, "abc", {3: "a"}))),
    "checkpoint.decode": E(checkpoint.decode, buffer=Arg(checkpoint.encode({"w": normal(3)}), (
        "abc", None, 3, b"\x00" * 9), names=("not a valid safetensors file",)), source=Arg("<bytes>", ())),
    "checkpoint.save_file": E(checkpoint.save_file, path=Arg("f.safetensors", PATHS),
                              tensors=Arg({"w": normal(3)}, (None, "abc", {"": normal(3)}, {"w": "abc"})),
                              metadata=Arg(None, ({"a": 3}, "abc"))),
    "checkpoint.load_file": E(checkpoint.load_file, path=Arg("saved.safetensors", PATHS + ("missing",),
                                                             names=("checkpoint",))),
    "checkpoint.atomic_write_bytes": E(checkpoint.atomic_write_bytes, path=Arg("bytes.bin", PATHS),
                                       payload=Arg(b"abc", ("abc", None, 3))),
    "checkpoint.remove_orphaned_temporaries": E(checkpoint.remove_orphaned_temporaries,
                                                path=Arg("saved.safetensors", PATHS)),
    "checkpoint.save_checkpoint": E(checkpoint.save_checkpoint, path=Arg("c.safetensors", PATHS),
                                    params=Arg({"w": normal(3)}, (None, "abc", {"w": "abc"})),
                                    state=Arg({"step": 1}, (None, "abc", {"step": object()})),
                                    ema=Arg(None, ("abc", {"w": "abc"})), optim=Arg(None, ("abc", {"m": "abc"}))),
    "checkpoint.load_checkpoint": E(checkpoint.load_checkpoint, path=Arg("saved-ckpt.safetensors",
                                                                         PATHS + ("saved.safetensors", "missing"),
                                                                         names=("checkpoint",))),
    "anomaly.auroc": E(anomaly.auroc, normal_scores=array(normal(5), shapes=[(0,)]),
                       anomalous_scores=array(normal(4, seed=1), shapes=[(0,)])),
    "anomaly.anomaly_scores": E(anomaly.anomaly_scores, vae=Arg(_vae(), (None, "abc")),
                                x=array(unit(3, 1, 8, 8).astype(np.float32), shapes=[(3, 1, 4, 4), (3, 8, 8)]),
                                rng=rng_arg(none=False), K=integer(2, lo=1), batch_size=integer(2, lo=1)),
})

# Public names with no entry of their own, and why.
NOT_FUZZED = {
    "checkpoint.CheckpointError": "an exception class",
    "data.IDXError": "an exception class",
    "distributions.LogNormalCDFDiff": "an autograd Function; its public entry is log_normal_cdf_diff",
    "diffusion.EpsLoss": "an autograd Function; its public entry is fused_eps_loss",
    "diffusion.Sampler": "an abstract base class; every registered sampler has an entry",
    "diffusion.SamplerState": "built by Sampler.start from a checked chain, never by a caller",
    "diffusion.register_sampler": "a class decorator for the registry (tests/test_registries.py checks it)",
    "nn.init": "a module of initialisers, not a callable",
    "nn.Module.forward": "the base class has no forward (NotImplementedError, as torch.nn.Module)",
    "nn.ModuleList.forward": "a container without a forward of its own (NotImplementedError, as torch)",
}


# ---------------------------------------------------------------- the meta-test

PUBLIC = {"functional": F, "nn": nn, "diffusion": diffusion, "optim": optim, "distributions": D,
          "vae_objective": vae_objective, "data": data, "quality": quality, "checkpoint": checkpoint,
          "anomaly": anomaly}


def public_callables():
    """'<module>.<name>' for each public callable, and '<module>.<Class>.forward' for each nn module."""
    found = set()
    for short, module in PUBLIC.items():
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n, obj in vars(module).items() if not n.startswith("_") and callable(obj)
                     and getattr(obj, "__module__", None) == module.__name__]
        for name in names:
            obj = getattr(module, name)
            if callable(obj) or inspect.ismodule(obj):
                found.add(f"{short}.{name}")
            if inspect.isclass(obj) and issubclass(obj, nn.Module):
                found.add(f"{short}.{name}.forward")
    return found


def test_every_public_callable_is_fuzzed_or_says_why_not():
    public = public_callables()
    missing = sorted(public - set(ENTRIES) - set(NOT_FUZZED))
    assert not missing, f"public callables with no fuzz entry: {missing}; add each to ENTRIES in {__name__}"
    stale = sorted((set(ENTRIES) | set(NOT_FUZZED)) - public)
    assert not stale, f"fuzz entries for names that are not public callables: {stale}"
    assert not set(ENTRIES) & set(NOT_FUZZED)


def test_each_entry_fuzzes_the_parameters_its_callable_has():
    """An entry's argument names are parameters of the callable it stands for (a typo would fuzz nothing)."""
    for key, entry in ENTRIES.items():
        module, *rest = key.split(".")
        target = getattr(PUBLIC[module], rest[0])
        if len(rest) == 2 or not entry.args or not (inspect.isfunction(target) or inspect.isclass(target)):
            continue
        parameters = inspect.signature(target).parameters
        if any(p.kind == p.VAR_POSITIONAL for p in parameters.values()):
            continue
        unknown = set(entry.args) - set(parameters)
        assert not unknown, f"{key}: {sorted(unknown)} are not parameters of {target.__qualname__}"


# ---------------------------------------------------------------- the laws

class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def _valid(entry):
    return {name: copy.deepcopy(arg.valid) for name, arg in entry.args.items()}


def _no_nan(result):
    if isinstance(result, dict):
        return all(_no_nan(v) for v in result.values())
    if isinstance(result, (tuple, list)):
        return all(_no_nan(v) for v in result)
    value = result.data if isinstance(result, minidiff.Tensor) else result
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "fc":
        return not np.any(np.isnan(value))
    return not (isinstance(value, float) and math.isnan(value))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Files the checkpoint and IDX entries read, in a fresh folder that is the working directory."""
    monkeypatch.chdir(tmp_path)
    checkpoint.save_file("saved.safetensors", {"w": normal(3)})
    checkpoint.save_checkpoint("saved-ckpt.safetensors", {"w": normal(3)}, {"step": 1})
    (tmp_path / "idx").mkdir()
    for split, n in (("train", 4), ("t10k", 2)):
        data.write_idx(f"idx/{split}-images-idx3-ubyte", np.zeros((n, 2, 2), np.uint8))
        data.write_idx(f"idx/{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))
    with _alarm_handler():
        yield tmp_path


@contextlib.contextmanager
def _alarm_handler():
    """SIGALRM raises _Hang inside the block (the per-call time limit of _timed)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _timed(call, seconds=5.0):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@pytest.mark.parametrize("key", sorted(ENTRIES))
def test_the_valid_call_returns_a_result_without_nan(key, workdir):
    entry = ENTRIES[key]
    assert _no_nan(_timed(lambda: entry.call(**_valid(entry))))


@pytest.mark.parametrize("key", sorted(ENTRIES))
def test_each_malformed_argument_is_refused_by_name(key, workdir):
    entry = ENTRIES[key]
    failures = []
    for name, arg in entry.args.items():
        for bad in arg.junk:
            kwargs = _valid(entry)
            kwargs[name] = copy.deepcopy(bad)
            try:
                result = _timed(lambda: outcome(lambda: entry.call(**kwargs), (name,) + arg.names))
            except _Hang:
                failures.append(f"{name}={_show(bad)}: still running after 5 s")
                continue
            except AssertionError as e:
                failures.append(f"{name}={_show(bad)}: {str(e).splitlines()[0]}")
                continue
            except Exception as e:  # noqa: BLE001 - any other class is the failure being looked for
                failures.append(f"{name}={_show(bad)}: {type(e).__name__}: {str(e)[:150]}")
                continue
            if result is not None:
                failures.append(f"{name}={_show(bad)}: accepted, returned {type(result).__name__}")
    assert not failures, f"{key}:\n  " + "\n  ".join(failures)


def _show(value):
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{type(value).__name__} {value.dtype} {tuple(value.shape)}>"
    return repr(value)[:60]


FIXED = sorted((key, name) for key, entry in ENTRIES.items() for name, arg in entry.args.items() if arg.fixed)


@given(st.sampled_from(FIXED), st.lists(st.integers(0, 4), max_size=5).map(tuple))
def test_an_array_whose_shape_the_math_fixes_takes_no_other_shape(key_name, shape):
    """Law 3: wherever the other arguments define an array's shape, every other shape is refused by name."""
    key, name = key_name
    entry, arg = ENTRIES[key], ENTRIES[key].args[name]
    assume(shape not in arg.fixed)
    kwargs = _valid(entry)
    kwargs[name] = np.full(shape, 0.5, dtype=arg.valid.dtype)
    with _alarm_handler():
        result = _timed(lambda: outcome(lambda: entry.call(**kwargs), (name,) + arg.names))
    assert result is None, f"{key}: {name} of shape {shape} accepted (it must be one of {arg.fixed})"


def test_the_shape_law_covers_every_kind_of_boundary():
    """FIXED draws from diffusion, distributions, the VAE objective, the functional ops and the samplers alike."""
    assert {key.split(".")[0] for key, _ in FIXED} >= {"diffusion", "distributions", "vae_objective", "functional"}
