"""PyTorch CPU as the oracle for the layer tests: run the same function on both with the same
inputs and upstream gradient, and compare the output and every input gradient by relative error."""
import numpy as np

import minidiff as md

TOL = {np.float64: 1e-10, np.float32: 1e-4}


def rel_err(ours, theirs):
    """max |ours − theirs| / max(max |theirs|, 1): relative for large values, absolute near 0."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise AssertionError(f"shapes differ: ours {ours.shape} vs torch {theirs.shape}")
    if ours.size == 0:
        return 0.0
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1.0))


def assert_matches_torch(ours_fn, torch_fn, inputs, dtype=np.float64, seed=0, tol=None):
    """Assert ours_fn(*Tensors) and torch_fn(*torch tensors) agree in value and in every gradient.

    inputs: arrays or None (passed through as None, e.g. an absent bias). Returns the errors.
    """
    import torch
    tol = TOL[dtype] if tol is None else tol
    arrays = [None if a is None else np.asarray(a, dtype=dtype) for a in inputs]
    ours_in = [None if a is None else md.Tensor(a.copy(), requires_grad=True) for a in arrays]
    torch_in = [None if a is None else torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    y = ours_fn(*ours_in)
    ty = torch_fn(*torch_in)
    errors = {"forward": rel_err(y.numpy(), ty.detach().numpy())}
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    y.backward(g)
    ty.backward(torch.tensor(g))
    for i, (a, ta) in enumerate(zip(ours_in, torch_in)):
        if a is not None:
            errors[f"grad{i}"] = rel_err(a.grad, ta.grad.numpy())
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"disagrees with PyTorch beyond {tol:g} ({np.dtype(dtype).name}): {bad}"
    return errors
