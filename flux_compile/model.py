"""``@net``: a class with ``forward`` becomes a model with generated forward, backward and update.

>>> import numpy as np, flux_compile as fc
>>> @fc.net
... class Affine:
...     def __init__(self, n_in, n_out):
...         self.W = fc.initn(n_in, n_out)
...         self.b = fc.initn(1, n_out)
...     def forward(self, x):
...         return x @ self.W + self.b
>>> m = Affine(3, 2)
>>> x = np.ones((4, 3))
>>> m(x).shape
(4, 2)
>>> dx = m.back(np.ones((4, 2)), x)      # accumulates m.W.grad, m.b.grad; returns dx
>>> m.b.grad
array([[4., 4.]])
>>> m.update(0.1)                          # SGD step, then zero the gradients
"""
from __future__ import annotations

import numpy as np

from .compiler import compile_model, run_guarded
from .errors import Retrace
from .params import Const, Param, is_model, named_params, submodels
from .recurrent import (_INITIAL, Link, accumulate_initial, current_state, reset, restore_states, set_state,
                        snapshot_states, state_names)

_INTERNAL = ("_fc_compiled", "_fc_last", "_fc_link", "_fc_gen")   # the recurrent state (_fc_state) is kept


def _is_float_array(value):
    return isinstance(value, np.ndarray) and value.dtype.kind in "fc"


def _float_kind(x):
    return isinstance(x, (np.ndarray, np.generic)) and x.dtype.kind in "fc" or isinstance(x, float)


class Model:
    """The methods ``@net`` adds to a class (``__call__``, ``pullback``, ``back``, ``update``, ...)."""

    __flux_net__ = True

    def __setattr__(self, name, value):
        if isinstance(value, Const):
            value = value.value
        elif _is_float_array(value):
            value = Param(value)
        d = self.__dict__
        if "_fc_compiled" in d and not name.startswith("_"):
            from .frontend import attr_token
            old = d.get(name, _MISSING)
            if old is _MISSING or attr_token(old) != attr_token(value):
                d.pop("_fc_compiled", None)
        object.__setattr__(self, name, value)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in _INTERNAL}

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- running ----------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        """Inference: the generated forward; saves nothing for a backward pass."""
        if kwargs or len(args) < _arity(type(self)):
            args = _complete(self, args, kwargs)
        names = state_names(type(self))
        if names:
            state, _ = current_state(self, names)
            args = args + tuple(state)
        c, out = _run(self, compile_model(self, args), args, "forward")
        if names:
            out, new_state = _split_state(out, c)
            set_state(self, names, new_state, None)
        return out

    def _pullback(self, *args, **kwargs):
        passed = None                   # which inputs the caller gave (the rest are defaults)
        if kwargs or len(args) < _arity(type(self)):
            passed = _passed(type(self), args, kwargs)
            args = _complete(self, args, kwargs)
        names = state_names(type(self))
        nin = len(args)
        if names:
            state, source = current_state(self, names)
            args = args + tuple(state)
        c, (out, saved) = _run(self, compile_model(self, args), args, "forward_train")
        if names:
            out, new_state = _split_state(out, c)
            link = Link()
            set_state(self, names, new_state, link)
        model = self

        def back(dy=None, input_grads=True):
            dy = _seed(dy, out, c, model)
            if names:
                pending = link.pending or [None] * len(names)
                dstate = [np.zeros_like(s) if g is None else g for g, s in zip(pending, new_state)]
                dy = (tuple(dy) if c.n_outputs is not None else (dy,)) + tuple(dstate)
            try:
                grads = (c.backward if input_grads else c.backward_params)(model, saved, dy)
            except Exception as e:
                _reraise(c, e, "backward")
            if names:
                gin, gstate = grads[:nin], grads[nin:]
                if source is _INITIAL:
                    accumulate_initial(model, names, gstate)
                elif isinstance(source, Link):
                    source.add(gstate)
            else:
                gin = (grads,) if nin == 1 else grads
            if passed is not None and input_grads:
                gin = tuple(gin[i] for i in passed)
            return gin[0] if len(gin) == 1 else tuple(gin)
        return out, back

    def pullback(self, *args, **kwargs):
        """One forward pass; returns ``(y, back)``. ``back(dy)`` accumulates every
        ``Param.grad`` and returns the input gradients (a tuple for several inputs).
        ``dy`` defaults to ones (the gradient of ``y.sum()``)."""
        out, back = self._pullback(*args, **kwargs)
        args = args + tuple(kwargs[k] for k in _forward_signature(type(self)).parameters if k in kwargs)
        n = len(args)

        def public_back(dy=None, input_grads=True):
            grads = back(dy, input_grads)
            if not input_grads:
                return None
            if n == 1:
                return grads if _float_kind(args[0]) else None
            return tuple(g if _float_kind(a) else None for g, a in zip(grads, args))
        public_back.__doc__ = ("back(dy, input_grads=True) -> input gradients; accumulates Param.grad. "
                               "input_grads=False skips the input gradients (returns None): faster "
                               "when only the parameters are trained")
        return out, public_back

    def back(self, dy, *args, **kwargs):
        """Flux's ``back!``: forward, then backward with ``dy``; returns the input gradients."""
        _, b = self.pullback(*args, **kwargs)
        return b(dy)

    def update(self, opt=0.1):
        """Flux's ``update!``: one optimiser step (a number is an SGD learning rate), then zero grads."""
        from .optim import apply_update
        apply_update(self, opt)

    def zero_grad(self):
        """Set every Param's gradient to zero."""
        for _, p in named_params(self):
            p.grad[...] = 0

    def reset(self):
        """Restore the initial recurrent state of this model and its sub-models."""
        reset(self)
        return self

    def __repr__(self):
        from .display import model_repr
        return model_repr(self)

    def _repr_html_(self):
        from .display import model_html
        return model_html(self)


_MISSING = object()


def _forward_signature(cls):
    """``inspect.signature(cls.forward)``, kept on the class (so it goes when the class goes)
    and taken again when ``forward`` or its defaults are reassigned."""
    fn = cls.forward
    sig = cls.__dict__.get("_fc_signature")
    if sig is None or sig[0] is not fn or sig[1] is not getattr(fn, "__defaults__", None):
        import inspect
        sig = (fn, getattr(fn, "__defaults__", None), inspect.signature(fn))
        type.__setattr__(cls, "_fc_signature", sig)
    return sig[2]


def _arity(cls):
    """How many inputs ``forward`` takes (after self)."""
    return len(_forward_signature(cls).parameters) - 1


def _passed(cls, args, kwargs):
    """Indices of the inputs the caller gave, positionally or by name."""
    names = list(_forward_signature(cls).parameters)[1:]
    return [i for i, name in enumerate(names) if i < len(args) or name in kwargs]


def _complete(model, args, kwargs):
    """Positional inputs for ``forward``: keywords placed, defaults filled in."""
    bound = _forward_signature(type(model)).bind(model, *args, **kwargs)
    bound.apply_defaults()
    return tuple(bound.args[1:])


def _run(model, c, args, method):
    """Run a generated function; with guards, the variant for this call's path."""
    def call(variant):
        try:
            if variant.free_paths:          # arrays the code reads at run time (guards.py)
                return getattr(variant, method)(model, *args, *variant.read_free(model, ()))
            return getattr(variant, method)(model, *args)
        except Retrace:
            raise
        except Exception as e:
            _reraise(variant, e, "forward")
    if not c.guarded:
        return c, call(c)
    snap = snapshot_states(model)

    def attempt(variant):
        try:
            return call(variant)
        except Retrace:
            restore_states(snap)
            raise
    c2, result = run_guarded(c, attempt, lambda: compile_model(model, args, fresh=True), model)
    if c2 is not c:
        from .compiler import _remember, input_key
        _remember(model, input_key(args), c2)
    return c2, result


def _reraise(c, e, direction):
    new = c.translate(e, direction)
    if new is None or new is e:
        raise e
    raise new from e


def _split_state(out, c):
    k = len(c.state_names)
    flat = out if isinstance(out, tuple) else (out,)
    user, state = flat[:-k], list(flat[-k:])
    return (user[0] if c.n_outputs is None else tuple(user)), state


def _seed(dy, out, c, model):
    if c.n_outputs is None:
        return _seed_one(dy, out, model)
    if dy is None:
        dy = (None,) * len(out)
    if not isinstance(dy, (tuple, list)) or len(dy) != len(out):
        raise ValueError(f"{type(model).__name__} has {len(out)} outputs: back(dy) needs a tuple of "
                         f"{len(out)} gradients (None for zero)")
    return tuple(_seed_one(d, o, model, zero=True) for d, o in zip(dy, out))


def _seed_one(dy, out, model, zero=False):
    if dy is None:
        if not isinstance(out, (np.ndarray, np.generic, float, int)):
            return None
        return np.zeros_like(out) if zero else np.ones_like(out)
    if isinstance(out, (np.ndarray, np.generic)):
        dy = np.asarray(dy)
        if dy.shape != np.shape(out):
            raise ValueError(f"{type(model).__name__}: the gradient dy has shape {dy.shape} but the "
                             f"output has shape {np.shape(out)}")
        if out.dtype.kind == "f" and dy.dtype != out.dtype:
            dy = dy.astype(out.dtype)
    return dy


def net(cls):
    """Class decorator: make ``cls`` a model compiled from its ``forward`` method.

    Float arrays assigned to attributes become :class:`Param`; sub-models are
    attributes; compilation happens on first use and is cached per class.
    """
    if not isinstance(cls, type):
        raise TypeError("@fc.net decorates a class with a forward method")
    if "forward" not in dir(cls):
        raise TypeError(f"@fc.net: {cls.__name__} has no forward method")
    for name, value in Model.__dict__.items():
        if name in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"):
            continue
        if name in cls.__dict__ and name not in ("__setattr__", "__getstate__", "__setstate__"):
            continue
        if name == "__repr__" and any("__repr__" in k.__dict__ for k in cls.__mro__[:-1]):
            continue
        setattr(cls, name, value)
    cls.__flux_net__ = True
    return cls
