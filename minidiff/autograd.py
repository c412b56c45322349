"""Reverse-mode automatic differentiation: Tensor, Function and the backward pass.

A `Tensor` wraps one array (NumPy or CuPy). A `Function` computes y = f(x_1..x_n) on raw
arrays in `forward` and, in `backward`, maps the upstream gradient ∂L/∂y to the
vector-Jacobian products ∂L/∂x_i = (∂y/∂x_i)ᵀ ∂L/∂y. `Tensor.backward()` visits the
graph in reverse topological order and accumulates (+=) every gradient, so a tensor
used twice receives the sum of both contributions. See docs/autograd.md.
"""
import contextlib
import inspect

import numpy as np

from minidiff.backend import backend_name_of, to_numpy, xp, xp_of

_grad_enabled = [True]
_default_dtype = [np.float32]


def set_default_dtype(dtype):
    """Floating dtype for tensors made from Python numbers and lists (float32 unless changed)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"default dtype must be floating, got {dtype}")
    _default_dtype[0] = dtype.type


def get_default_dtype():
    return np.dtype(_default_dtype[0])


@contextlib.contextmanager
def no_grad():
    """Within this block no graph is recorded: results have requires_grad=False."""
    previous = _grad_enabled[0]
    _grad_enabled[0] = False
    try:
        yield
    finally:
        _grad_enabled[0] = previous


@contextlib.contextmanager
def enable_grad():
    """Within this block graphs are recorded again, even inside no_grad (the previous mode comes back after)."""
    previous = _grad_enabled[0]
    _grad_enabled[0] = True
    try:
        yield
    finally:
        _grad_enabled[0] = previous


def is_grad_enabled():
    """Whether ops now record the graph (False inside no_grad, unless an enable_grad block is nested in it)."""
    return _grad_enabled[0]


def unwrap(x):
    """The array inside a Tensor; anything else (an array, a number, None) unchanged."""
    return x.data if isinstance(x, Tensor) else x


def _as_array(data, dtype=None):
    """Data as an array: arrays keep their backend and dtype; Python numbers and lists go to the
    current backend, floats in the default dtype (float32), integers and booleans as they are."""
    data = unwrap(data)
    if hasattr(data, "dtype") and hasattr(data, "shape"):  # a NumPy/CuPy array or NumPy scalar
        return xp_of(data).asarray(data, dtype=dtype)
    arr = np.asarray(data)
    if dtype is None and arr.dtype.kind == "f":
        dtype = get_default_dtype()
    return xp().asarray(arr, dtype=dtype)


def _one_or_many(args):
    """f(a, b, c) and f((a, b, c)) alike: a single tuple/list argument is the sequence itself."""
    return args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


class Tensor:
    """An n-dimensional array with an optional gradient.

    Attributes: data (the array), grad (array or None, same shape), requires_grad,
    and _ctx, the Function that produced it (None for leaves).
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "__weakref__")
    __array_priority__ = 1000  # numpy scalars/arrays defer to Tensor's operators

    def __init__(self, data, requires_grad=False, dtype=None):
        try:
            self.data = _as_array(data, dtype)
        except ValueError:  # a ragged list, or a string numpy cannot read as the dtype
            raise ValueError(f"Tensor: data must be a rectangular array of numbers, got {type(data).__name__} "
                             f"{data!r:.40}" + (f" as dtype {np.dtype(dtype)}" if dtype is not None else "")) from None
        if self.data.dtype.kind not in "biufc":
            raise TypeError(f"Tensor: data must be numbers (bool, integer, floating or complex), got "
                            f"{type(data).__name__} {data!r:.40} of dtype {self.data.dtype}")
        if not isinstance(requires_grad, (bool, np.bool_)):
            raise TypeError(f"Tensor: requires_grad must be True or False, got {requires_grad!r}")
        if requires_grad and self.data.dtype.kind not in "fc":
            raise TypeError(f"only floating tensors can require gradients, got data of dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = None

    # ------------------------------------------------------------ properties
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    backend = property(lambda self: backend_name_of(self.data))
    device = property(lambda self: "cpu" if self.backend == "numpy" else "cuda")
    is_leaf = property(lambda self: self._ctx is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({to_numpy(self.data)!r}{grad})"

    def numpy(self):
        """A host NumPy array (a copy from the GPU on CuPy)."""
        return to_numpy(self.data)

    def item(self):
        return self.numpy().item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype):
        return _ops.astype(self, dtype=np.dtype(dtype))

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def zero_grad(self):
        self.grad = None

    # ------------------------------------------------------------ backward pass
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) · grad into every leaf's .grad that requires it.

        grad defaults to 1 for a scalar; a non-scalar needs an explicit upstream gradient.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() on a non-scalar tensor of shape {self.shape} needs an "
                                   "explicit upstream gradient of that shape")
            grad = xp_of(self.data).ones_like(self.data)
        else:
            grad = _as_array(grad, self.data.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): upstream gradient shape {grad.shape} != tensor shape {self.shape}")
        start = self if self._ctx is None else self._ctx
        grads = {id(start): grad}
        for node in _topological_order(start):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if isinstance(node, Tensor):  # a leaf: accumulate into .grad
                node.grad = g if node.grad is None else node.grad + g
                continue
            for parent, pg in zip(node.parents, node.backward(g)):
                if pg is None or parent is None:
                    continue
                key = id(parent)
                grads[key] = pg if key not in grads else grads[key] + pg

    # ------------------------------------------------------------ operators
    def __add__(self, o): return _ops.add(self, o)
    def __radd__(self, o): return _ops.add(o, self)
    def __sub__(self, o): return _ops.sub(self, o)
    def __rsub__(self, o): return _ops.sub(o, self)
    def __mul__(self, o): return _ops.mul(self, o)
    def __rmul__(self, o): return _ops.mul(o, self)
    def __truediv__(self, o): return _ops.div(self, o)
    def __rtruediv__(self, o): return _ops.div(o, self)
    def __pow__(self, o): return _ops.pow(self, o)
    def __rpow__(self, o): return _ops.pow(o, self)
    def __neg__(self): return _ops.neg(self)
    def __matmul__(self, o): return _ops.matmul(self, o)
    def __rmatmul__(self, o): return _ops.matmul(o, self)
    def __getitem__(self, index): return _ops.getitem(self, index)

    # comparisons return plain boolean tensors (no gradient)
    def __lt__(self, o): return Tensor(self.data < unwrap(o))
    def __le__(self, o): return Tensor(self.data <= unwrap(o))
    def __gt__(self, o): return Tensor(self.data > unwrap(o))
    def __ge__(self, o): return Tensor(self.data >= unwrap(o))

    # ------------------------------------------------------------ method forms
    def sum(self, axis=None, keepdims=False): return _ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops.mean(self, axis, keepdims)
    def var(self, axis=None, keepdims=False, ddof=0): return _ops.var(self, axis, keepdims, ddof)
    def max(self, axis=None, keepdims=False): return _ops.max(self, axis, keepdims)
    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)
    def sqrt(self): return _ops.sqrt(self)
    def abs(self): return _ops.abs(self)
    def tanh(self): return _ops.tanh(self)
    def sigmoid(self): return _ops.sigmoid(self)
    def relu(self): return _ops.relu(self)
    def clip(self, lo=None, hi=None): return _ops.clip(self, lo, hi)
    def reshape(self, *shape): return _ops.reshape(self, _one_or_many(shape))
    def transpose(self, *axes): return _ops.transpose(self, _one_or_many(axes) or None)
    def softmax(self, axis=-1): return _ops.softmax(self, axis)
    def log_softmax(self, axis=-1): return _ops.log_softmax(self, axis)

    @property
    def T(self):
        return _ops.transpose(self, None)


def _topological_order(root):
    """Graph nodes (Functions and leaf Tensors) reachable from root, each after every node that uses it
    (iterative DFS: deep graphs are fine)."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if isinstance(node, Function):
            for parent in node.parents:
                if parent is not None and id(parent) not in seen:
                    stack.append((parent, False))
    order.reverse()
    return order


def _graph_node(x):
    """What a recorded Function keeps of one input: a leaf Tensor that requires grad itself (backward
    writes its .grad), the Function that produced a non-leaf Tensor, None for anything else.

    Keeping the producing Function rather than the Tensor means the graph holds no activation that no
    backward saved: an intermediate's data is freed as soon as the caller drops it (as in PyTorch).
    """
    if not isinstance(x, Tensor) or not x.requires_grad:
        return None
    return x if x._ctx is None else x._ctx


class Function:
    """One differentiable operation y = f(x_1, ..., x_n).

    Subclasses define `forward(self, *arrays, **params) -> array` and
    `backward(self, grad) -> tuple` (one gradient array or None per input). Anything
    backward needs is saved on `self` in forward. `needs_grad[i]` says whether input i
    wants a gradient, so backward can skip work. A recorded Function is a graph node: `parents`
    holds, per input, the Function that produced it, the leaf Tensor itself, or None.
    """

    __slots__ = ("parents", "needs_grad", "__dict__")

    @classmethod
    def apply(cls, *inputs, **params):
        """Run forward on raw arrays and, if any input requires grad, record the node.

        Ops are polymorphic: with no Tensor among the inputs the raw result array is
        returned, so the same formula code serves plain arrays (tests, kernels) and Tensors.
        """
        arrays = _raw_inputs(inputs, cls)
        _check_same_backend(cls.__name__, arrays)
        fn = cls()
        has_tensor = any(isinstance(x, Tensor) for x in inputs)
        track = _grad_enabled[0] and any(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        fn.needs_grad = [track and isinstance(x, Tensor) and x.requires_grad for x in inputs]
        data = fn.forward(*arrays, **params)
        if not has_tensor:
            return data
        out = Tensor.__new__(Tensor)
        out.data, out.grad, out.requires_grad, out._ctx = data, None, track, None
        if track:
            fn.parents = [_graph_node(x) for x in inputs]
            out._ctx = fn
        return out

    def forward(self, *arrays, **params):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError


def _raw_inputs(inputs, fn=None):
    """Raw arrays for an op's inputs; Python numbers take the float dtype of the array they meet."""
    ref = next((unwrap(x) for x in inputs if isinstance(x, Tensor) or hasattr(x, "dtype")), None)
    out = []
    for x in inputs:
        if isinstance(x, Tensor):
            out.append(x.data)
        elif ref is not None and isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(xp_of(ref).asarray(x, dtype=ref.dtype if ref.dtype.kind == "f" else None))
        else:
            try:
                out.append(_as_array(x))
            except ValueError:  # a ragged list
                out.append(np.asarray(None))
            if out[-1].dtype.kind not in "biufc":
                name = f"{getattr(fn, '__name__', 'op')}: {_input_name(fn, len(out) - 1)}"
                raise TypeError(f"{name} must be numbers (an array, Tensor or number), got {type(x).__name__} "
                                f"{x!r:.40}")
    return out


def _input_name(fn, i):
    """The name of input i of the Function class fn (its forward's parameter), for error messages."""
    names = list(inspect.signature(fn.forward).parameters)[1:] if fn is not None else []
    return names[i] if i < len(names) else f"input {i}"


def _check_same_backend(op, arrays):
    names = {backend_name_of(a) for a in arrays}
    if len(names) > 1:
        shapes = [tuple(a.shape) for a in arrays]
        raise TypeError(f"{op}: inputs live on different backends {sorted(names)} (shapes {shapes}); "
                        "move them to one backend first")


def unbroadcast(grad, shape):
    """Sum grad over the axes that broadcasting added or stretched, returning an array of `shape`.

    If y = broadcast(x) then ∂L/∂x = Σ over broadcast axes of ∂L/∂y.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def tensor(data, requires_grad=False, dtype=None):
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


from minidiff import ops as _ops  # noqa: E402  (ops subclass Function, so they import this module first)
