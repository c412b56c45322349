"""Differentiable primitives. Each is a Function whose docstring states y = f(x) and its VJP.

Every function here is polymorphic: Tensors in give a Tensor out (recorded for backward);
plain arrays in give a plain array out, so formula code runs on both.
"""
from minidiff.ops.elementwise import (abs, add, astype, clip, div, exp, gelu, log, mul, neg, pow, relu,
                                      sigmoid, silu, sqrt, sub, tanh, where)
from minidiff.ops.linalg import matmul
from minidiff.ops.reduce import log_softmax, logsumexp, max, mean, softmax, sum, var
from minidiff.ops.shape import (broadcast_to, cat, concatenate, expand, getitem, pad, permute, reshape, split,
                                stack, transpose)

__all__ = [
    "abs", "add", "astype", "clip", "div", "exp", "gelu", "log", "mul", "neg", "pow", "relu", "sigmoid",
    "silu", "sqrt", "sub", "tanh", "where", "matmul", "log_softmax", "logsumexp", "max", "mean", "softmax",
    "sum", "var", "broadcast_to", "cat", "concatenate", "expand", "getitem", "pad", "permute", "reshape",
    "split", "stack", "transpose",
]
