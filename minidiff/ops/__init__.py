"""Differentiable primitives. Each is a Function whose docstring states y = f(x) and its VJP.

Every function here is polymorphic: Tensors in give a Tensor out (recorded for backward);
plain arrays in give a plain array out, so formula code runs on both. Names, signatures and
semantics are NumPy's, one name per operation (axis=, transpose, broadcast_to, concatenate);
docs/notation.md "Names".
"""
from minidiff.ops.elementwise import (abs, add, astype, clip, div, exp, gelu, log, mul, neg, pow, relu,
                                      sigmoid, silu, sqrt, sub, tanh, where)
from minidiff.ops.linalg import matmul
from minidiff.ops.reduce import log_softmax, logsumexp, max, mean, softmax, sum, var
from minidiff.ops.shape import broadcast_to, concatenate, getitem, pad, reshape, split, stack, transpose

__all__ = [
    "abs", "add", "astype", "clip", "div", "exp", "gelu", "log", "mul", "neg", "pow", "relu", "sigmoid",
    "silu", "sqrt", "sub", "tanh", "where", "matmul", "log_softmax", "logsumexp", "max", "mean", "softmax",
    "sum", "var", "broadcast_to", "concatenate", "getitem", "pad", "reshape", "split", "stack", "transpose",
]
