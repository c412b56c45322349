"""Module, Parameter and the containers (docs/layers.md §6).

A `Module` holds Parameters (trainable leaf Tensors), buffers (constant arrays saved with the
state) and sub-Modules, registered automatically when assigned as attributes, in assignment
order. `named_parameters()` walks that tree depth-first and names each leaf by its dotted path
("blocks.0.conv.weight"), the same names `state_dict()` and `load_state_dict()` use.
"""
from collections import OrderedDict

import numpy as np

from minidiff.autograd import Tensor, get_default_dtype
from minidiff.backend import to_numpy, xp, xp_of


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad=True unless told otherwise."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype})"


class Module:
    """Base class: subclasses set attributes in __init__ and define forward(*inputs)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_modules" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning {name!r}")
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """A constant array saved in state_dict() but not trained (e.g. a fixed table)."""
        setattr(self, name, array)
        self._buffers[name] = True

    # ------------------------------------------------------------ calling
    def forward(self, *inputs, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    # ------------------------------------------------------------ traversal
    def named_children(self):
        yield from self._modules.items()

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix="", recurse=True):
        """(dotted name, Parameter) pairs; a Parameter shared by two modules is listed once."""
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in modules:
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self):
        for mod_prefix, module in self.named_modules():
            for name in module._buffers:
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), getattr(module, name)

    def num_parameters(self):
        return sum(int(p.size) for p in self.parameters())

    def apply(self, fn):
        """Call fn(module) on every sub-module (children first) and on self; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------ modes and gradients
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ------------------------------------------------------------ dtype and backend
    def to(self, dtype=None, backend=None):
        """Convert every parameter and buffer in place to `dtype` and/or `backend` ("numpy"|"cupy")."""
        target = None if backend is None else _module_of(backend)
        for module in self.modules():
            for name, p in module._parameters.items():
                p.data = _convert(p.data, dtype, target)
                p.grad = None
            for name in module._buffers:
                object.__setattr__(module, name, _convert(getattr(module, name), dtype, target))
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # ------------------------------------------------------------ state
    def state_dict(self):
        """OrderedDict name -> NumPy array (a copy) for every parameter and buffer."""
        state = OrderedDict((name, to_numpy(p.data).copy()) for name, p in self.named_parameters())
        state.update((name, to_numpy(b).copy()) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays from `state` into the parameters and buffers (same names, same shapes).

        Raises KeyError listing missing and unexpected keys when strict, and ValueError naming the
        key and both shapes when a shape differs. Returns (missing, unexpected) lists.
        """
        targets = dict(self._state_targets())
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        for key, (module, attr, current) in targets.items():
            if key in state and tuple(np.shape(state[key])) != tuple(current.shape):
                raise ValueError(f"load_state_dict: shape mismatch for {key!r}: checkpoint has "
                                 f"{tuple(np.shape(state[key]))}, model has {tuple(current.shape)}")
        for key, (module, attr, current) in targets.items():
            if key not in state:
                continue
            value = xp_of(current).asarray(to_numpy(state[key]), dtype=current.dtype).copy()
            if isinstance(current, Parameter):
                current.data = value
            else:
                object.__setattr__(module, attr, value)
        return missing, unexpected

    def _state_targets(self):
        for mod_prefix, module in self.named_modules():
            for attr in list(module._parameters) + list(module._buffers):
                key = f"{mod_prefix}.{attr}" if mod_prefix else attr
                yield key, (module, attr, getattr(module, attr))

    # ------------------------------------------------------------ printing
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n  " + "\n  ".join(lines) + "\n)"


def _module_of(backend):
    from minidiff.backend import _module
    return _module(backend)


def _convert(a, dtype, target):
    if target is not None:
        a = target.asarray(to_numpy(a)) if target is not xp_of(a) else a
    return a.astype(dtype) if dtype is not None and a.dtype.kind == "f" else a


class Sequential(Module):
    """y = f_n(... f_2(f_1(x))); children are named "0", "1", ..."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            _check_module("Sequential", i, m)
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleList(Module):
    """A list of sub-Modules, registered as "0", "1", ... (no forward of its own)."""

    def __init__(self, modules=()):
        super().__init__()
        if isinstance(modules, (str, bytes)) or not hasattr(modules, "__iter__"):
            raise TypeError(f"ModuleList: modules must be an iterable of Modules, got {type(modules).__name__}")
        for m in modules:
            self.append(m)

    def append(self, module):
        _check_module("ModuleList", len(self), module)
        setattr(self, str(len(self)), module)
        return self

    def __getitem__(self, i):
        items = list(self._modules.values())
        return ModuleList(items[i]) if isinstance(i, slice) else items[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def _check_module(owner, i, m):
    if not isinstance(m, Module):
        raise TypeError(f"{owner}: modules[{i}] must be a Module, got {type(m).__name__}")


class Identity(Module):
    def forward(self, x):
        return x


def new_array(shape, dtype):
    """An uninitialised array on the current backend (init functions fill it); dtype None means the
    default float dtype (float32 unless minidiff.set_default_dtype changed it)."""
    return xp().empty(shape, dtype=get_default_dtype() if dtype is None else dtype)
