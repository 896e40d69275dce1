"""The array-library side of the backends: conversion to and from torch / JAX arrays and
each Compiled's module retargeted to a backend (:mod:`flux_compile.backends` builds models
on it, :mod:`flux_compile.backendstep` training steps)."""
from __future__ import annotations

import contextlib

import numpy as np

from .emitters import emitter, retarget
from .sourcecache import compile_source, unique_filename

_MODULES = {}        # (id(Compiled), backend key) -> (Compiled, source, namespace)


class Backend:
    """An emitter plus array conversion for one library (and torch device)."""

    def __init__(self, name, device=None):
        self.name = name
        self.em = emitter(name, device)
        self.device = getattr(self.em, "device", None)
        self.key = (name, str(self.device))

    def native(self, x):
        """``x`` (NumPy or native) as a native array; other values unchanged."""
        if self.name == "torch":
            torch = self.em.torch
            if isinstance(x, torch.Tensor):
                return x.to(self.device)
            if isinstance(x, (np.ndarray, np.generic)):
                return torch.tensor(np.asarray(x), device=self.device)
            return x
        if self.name == "jax":
            if isinstance(x, (np.ndarray, np.generic)) or isinstance(x, self.em.jax.Array):
                return self.em.jnp.asarray(x)
            return x
        return np.asarray(x) if _is_array(x) else x

    def no_tape(self):
        """A context with torch's autograd recording off (the gradient is ours): even an
        input with ``requires_grad`` builds no tape. Nothing for the other libraries."""
        return self.em.torch.no_grad() if self.name == "torch" else contextlib.nullcontext()

    def zeros_like(self, x):
        if self.name == "torch":
            return self.em.torch.zeros_like(x)
        if self.name == "jax":
            return self.em.jnp.zeros_like(x)
        return np.zeros_like(x)

    def is_native(self, x):
        if self.name == "torch":
            return isinstance(x, self.em.torch.Tensor)
        if self.name == "jax":
            return isinstance(x, self.em.jax.Array)
        return isinstance(x, np.ndarray)


def _is_jit_concretization(e):
    """A JAX tracer asked for a Python bool or int inside ``jax.jit`` (a guard on data)."""
    name = type(e).__name__
    return type(e).__module__.startswith("jax") and ("Tracer" in name or "Concretization" in name)


def _is_array(x):
    return isinstance(x, np.ndarray) or type(x).__module__.split(".")[0] in ("torch", "jax", "jaxlib")


def to_numpy(x):
    """A native array as a NumPy array (a torch tensor is moved to the CPU)."""
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _placeholder(x):
    """A NumPy array of ``x``'s shape and dtype: what the NumPy pipeline compiles for."""
    if isinstance(x, np.ndarray):
        return x
    shape = tuple(x.shape)
    dtype = np.dtype(str(x.dtype).replace("torch.", ""))
    return np.zeros(shape, dtype)


def module_for(c, backend):
    """``(source, namespace)`` of Compiled ``c``'s module retargeted to ``backend``."""
    key = (id(c), backend.key)
    hit = _MODULES.get(key)
    if hit is None or hit[0] is not c:
        objects = dict(c.namespace_objects) if c.namespace_objects else {
            k: v for k, v in c.forward.__globals__.items() if not k.startswith("__")
            and k not in ("forward", "forward_train", "backward", "backward_params")}
        label = f"{c.label} ({backend.name})"
        source, ns = retarget(c.source, objects, backend.em, label)
        ns = compile_source(source, unique_filename(label), ns)
        hit = _MODULES[key] = (c, source, ns)
    return hit[1], hit[2]
