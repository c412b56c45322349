"""Every autograd Function in the package has a float64 gradcheck (docs/autograd.md §7).

COVERED maps each Function subclass to the test that gradchecks it over hypothesis-drawn inputs,
and to a small float64 case that this file runs itself. The meta-test
  1. imports every module of minidiff and walks Function.__subclasses__() recursively: a class that
     defines forward but has no entry fails the test, by name;
  2. runs each entry's case through gradcheck, and asserts that the graph the case builds holds a
     node of that class, so an entry cannot vouch for a Function its case never reaches;
  3. asserts that the named test exists and calls gradcheck.
(minidiff.kernels is not walked: kernels take arrays and never import autograd.)
"""
import dataclasses
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import minidiff
import minidiff.functional as F
from minidiff import ops
from minidiff.autograd import Function, Tensor
from minidiff.diffusion.elbo import EpsLoss, fused_eps_loss
from minidiff.distributions import LogNormalCDFDiff, log_normal_cdf_diff
from minidiff.ops import attention, conv, elementwise as ew, linalg, norm, reduce, shape
from minidiff.testing import gradcheck


def package_functions():
    """Every Function subclass defined in minidiff that defines its own forward, after importing every module."""
    for module in pkgutil.walk_packages(minidiff.__path__, "minidiff."):
        if module.name != "minidiff.__main__":          # running it would start the command line
            importlib.import_module(module.name)
    found, stack = set(), list(Function.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("minidiff.") and "forward" in vars(cls):
            found.add(cls)
    return found


def functions_in_graph(out):
    """The Function classes of every node recorded on the way to `out` (parents are Functions or leaves)."""
    found, seen, stack = set(), set(), [out._ctx]
    while stack:
        node = stack.pop()
        if not isinstance(node, Function) or id(node) in seen:
            continue
        seen.add(id(node))
        found.add(type(node))
        stack.extend(node.parents)
    return found


def uniform(*shape, lo=-1.0, hi=1.0, seed=0):
    return np.random.default_rng([seed, *shape]).uniform(lo, hi, shape)


# Fixed values away from the kinks of abs/relu (0) and of clip (-0.5, 0.7), and distinct for max.
AWAY = np.array([[-1.3, -0.4, 0.6], [0.9, -0.8, 1.7]])
COND = np.array([[True, False, True], [False, False, True]])
WEIGHTS = np.array([0.5, 2.0])


@dataclasses.dataclass(frozen=True)
class Case:
    test: str          # "tests/<file>.py::<test>": the thorough, hypothesis-drawn gradcheck
    f: object          # f(*Tensors) -> a float64 Tensor that goes through the Function
    inputs: tuple      # float64 arrays, every one differentiated
    options: tuple = ()  # gradcheck keyword options, as (name, value) pairs


OPS = "tests/test_ops_gradcheck.py::"
COVERED = {
    ew.Add: Case(OPS + "test_binary_broadcasting", ops.add, (uniform(2, 3), uniform(3))),
    ew.Sub: Case(OPS + "test_binary_broadcasting", ops.sub, (uniform(2, 3), uniform(3))),
    ew.Mul: Case(OPS + "test_binary_broadcasting", ops.mul, (uniform(2, 3), uniform(3))),
    ew.Div: Case(OPS + "test_div", ops.div, (uniform(2, 3), uniform(1, 3, lo=0.5, hi=2.0))),
    ew.Neg: Case(OPS + "test_neg", ops.neg, (uniform(2, 3),)),
    ew.PowScalar: Case(OPS + "test_pow_constant_exponent", lambda a: a ** 2.5, (uniform(2, 3, lo=0.2, hi=3.0),)),
    ew.Pow: Case(OPS + "test_pow_tensor_exponent", ops.pow, (uniform(2, 3, lo=0.2, hi=2.0), uniform(3))),
    ew.Exp: Case(OPS + "test_unary", ops.exp, (uniform(2, 3),)),
    ew.Log: Case(OPS + "test_unary", ops.log, (uniform(2, 3, lo=0.1, hi=4.0),)),
    ew.Sqrt: Case(OPS + "test_unary", ops.sqrt, (uniform(2, 3, lo=0.1, hi=4.0),)),
    ew.Abs: Case(OPS + "test_unary", ops.abs, (AWAY,)),
    ew.Tanh: Case(OPS + "test_unary", ops.tanh, (uniform(2, 3),)),
    ew.Sigmoid: Case(OPS + "test_unary", ops.sigmoid, (uniform(2, 3),)),
    ew.ReLU: Case(OPS + "test_unary", ops.relu, (AWAY,)),
    ew.SiLU: Case(OPS + "test_unary", ops.silu, (uniform(2, 3),)),
    ew.GELU: Case(OPS + "test_gelu", ops.gelu, (uniform(2, 3),)),
    ew.GELUTanh: Case(OPS + "test_gelu", lambda a: ops.gelu(a, approximate="tanh"), (uniform(2, 3),)),
    ew.Clip: Case(OPS + "test_clip", lambda a: ops.clip(a, -0.5, 0.7), (AWAY,)),
    ew.Where: Case(OPS + "test_where", lambda a, b: ops.where(COND, a, b), (uniform(2, 3), uniform(3))),
    ew.AsType: Case(OPS + "test_astype_round_trip_gradient",
                    lambda a: ops.astype(ops.astype(a, np.float32) * 2.0, np.float64), (uniform(2, 3),),
                    (("h", 1e-2), ("atol", 1e-4), ("rtol", 1e-4))),   # linear, so the wide step is exact
    linalg.MatMul: Case(OPS + "test_matmul", ops.matmul, (uniform(2, 2, 3), uniform(3, 4))),
    reduce.Sum: Case(OPS + "test_sum_mean", lambda a: ops.sum(a, axis=1), (uniform(2, 3),)),
    reduce.Mean: Case(OPS + "test_sum_mean", lambda a: ops.mean(a, axis=0, keepdims=True), (uniform(2, 3),)),
    reduce.Var: Case(OPS + "test_var", lambda a: ops.var(a, axis=1, ddof=1), (uniform(2, 3),)),
    reduce.Max: Case(OPS + "test_max", lambda a: ops.max(a, axis=1), (AWAY,)),
    reduce.Softmax: Case(OPS + "test_softmax_family", lambda a: ops.softmax(a, axis=0), (uniform(2, 3),)),
    reduce.LogSoftmax: Case(OPS + "test_softmax_family", lambda a: ops.log_softmax(a, axis=1), (uniform(2, 3),)),
    reduce.LogSumExp: Case(OPS + "test_logsumexp", lambda a: ops.logsumexp(a, axis=1), (uniform(2, 3),)),
    shape.Reshape: Case(OPS + "test_reshape", lambda a: ops.reshape(a, (3, 2)), (uniform(2, 3),)),
    shape.Transpose: Case(OPS + "test_transpose", lambda a: ops.transpose(a, (2, 0, 1)), (uniform(2, 3, 4),)),
    shape.BroadcastTo: Case(OPS + "test_broadcast_to", lambda a: ops.broadcast_to(a, (2, 2, 3)), (uniform(2, 1, 3),)),
    shape.Concatenate: Case(OPS + "test_concatenate_stack", lambda a, b: ops.concatenate([a, b], axis=1),
                            (uniform(2, 3), uniform(2, 1))),
    shape.Stack: Case(OPS + "test_concatenate_stack", lambda a, b: ops.stack([a, b], axis=-1),
                      (uniform(2, 3), uniform(2, 3, seed=1))),
    shape.GetItem: Case(OPS + "test_getitem_integer_arrays_with_repeats", lambda a: a[np.array([1, 0, 1])],
                        (uniform(2, 3),)),
    shape.Pad: Case(OPS + "test_pad", lambda a: ops.pad(a, ((1, 0), (0, 2)), 0.5), (uniform(2, 3),)),
    conv.Conv2d: Case("tests/test_layers_conv.py::test_conv2d_gradcheck",
                      lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
                      (uniform(1, 2, 5, 5), uniform(3, 2, 3, 3), uniform(3))),
    conv.ConvTranspose2d: Case("tests/test_layers_conv.py::test_conv_transpose2d_gradcheck",
                               lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
                               (uniform(1, 2, 3, 3), uniform(2, 3, 3, 3), uniform(3))),
    conv.AvgPool2d: Case("tests/test_layers_conv.py::test_avg_pool2d_gradcheck",
                         lambda x: F.avg_pool2d(x, 2, padding=1), (uniform(1, 2, 4, 5),)),
    attention.ScaledDotProductAttention: Case(
        "tests/test_layers_norm_attention.py::test_attention_gradcheck",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        (uniform(2, 3, 4), uniform(2, 5, 4), uniform(2, 5, 2))),
    norm.GroupNorm: Case("tests/test_layers_norm_attention.py::test_group_norm_gradcheck",
                         lambda x, w, b: F.group_norm(x, 2, w, b), (uniform(2, 4, 3, 2), uniform(4), uniform(4))),
    norm.GroupNormSiLU: Case("tests/test_layers_norm_attention.py::test_group_norm_silu_gradcheck",
                             lambda x, w, b: F.group_norm_silu(x, 2, w, b),
                             (uniform(2, 4, 3, 2), uniform(4), uniform(4))),
    norm.LayerNorm: Case("tests/test_layers_norm_attention.py::test_layer_norm_gradcheck_and_composition",
                         lambda x, w, b: F.layer_norm(x, (3,), w, b), (uniform(2, 4, 3), uniform(3), uniform(3))),
    LogNormalCDFDiff: Case("tests/test_distributions.py::test_log_normal_cdf_diff_and_decoder_gradcheck",
                           log_normal_cdf_diff, (np.array([-1.0, 0.2, 1.5]), np.array([-0.7, 1.0, 3.5]))),
    EpsLoss: Case("tests/test_fused_loss.py::test_gradcheck",
                  lambda a, b: fused_eps_loss(a, b, WEIGHTS, impl="numpy"), (uniform(2, 3), uniform(2, 3, seed=1))),
}


def test_every_function_in_the_package_has_a_gradcheck():
    missing = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in package_functions() - set(COVERED))
    assert not missing, (f"Function subclasses with no float64 gradcheck: {missing}; add each to COVERED in "
                         "tests/test_gradcheck_coverage.py with the test that gradchecks it")


@pytest.mark.parametrize("function", list(COVERED), ids=lambda cls: cls.__name__)
def test_each_case_gradchecks_its_function(function):
    case = COVERED[function]
    gradcheck(case.f, list(case.inputs), **dict(case.options))
    out = case.f(*[Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in case.inputs])
    reached = functions_in_graph(out)
    assert function in reached, (f"the case for {function.__name__} never reaches it: its graph holds "
                                 f"{sorted(c.__name__ for c in reached)}")


@pytest.mark.parametrize("function", list(COVERED), ids=lambda cls: cls.__name__)
def test_each_named_test_exists_and_gradchecks(function):
    path, name = COVERED[function].test.split("::")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    test = getattr(module, name, None)
    assert test is not None, f"{function.__name__}: {COVERED[function].test} does not exist"
    assert "gradcheck(" in inspect.getsource(test), f"{COVERED[function].test} never calls gradcheck"
