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

from . import pytree
from .cache import cached_variant, compile_model, input_key, run_guarded
from .errors import Retrace, bad_call_message
from .locks import InterruptSafeLock
from .params import Const, Param, is_model, path_str, submodels
from .readonly import EDITS, Hold, cached_named_params, refuse_if_held
from .runstate import (_INITIAL, Link, accumulate_initial, check_batch, current_state, reset, restore_states,
                        set_state, snapshot_states)
from .statehooks import state_names
from .updatestep import apply_update

# not pickled; the recurrent state (_fc_state, _fc_batch) is kept
_INTERNAL = ("_fc_compiled", "_fc_last", "_fc_link", "_fc_gen", "_fc_arrays", "_fc_params")


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
        if not name.startswith("_"):
            EDITS[0] += 1               # a pending back re-checks what it reads
        if "_fc_compiled" in d and not name.startswith("_"):
            from .frontend import attr_token
            old = d.get(name, _MISSING)
            if old is _MISSING or attr_token(old) != attr_token(value):
                d.pop("_fc_compiled", None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if not name.startswith("_"):
            EDITS[0] += 1               # the tree changed: cached walks and variants go
            self.__dict__.pop("_fc_compiled", None)
        object.__delattr__(self, name)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in _INTERNAL}

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- running ----------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        """Inference: the generated forward; saves nothing for a backward pass.

        >>> import numpy as np, flux_compile as fc
        >>> m = fc.Dense(3, 2)
        >>> m(np.ones((4, 3))).shape                             # no gradients are kept
        (4, 2)
        """
        if kwargs or len(args) < _arity(type(self)):
            args = _complete(self, args, kwargs)
        names = state_names(type(self))
        user_args = args
        if names:
            state, _ = current_state(self, names)
            check_batch(self, names, state, args)
            args = args + tuple(state)
        c, out = _run(self, _compile(self, args), args, "forward")
        if names:
            out, new_state = _split_state(out, c)
            set_state(self, names, new_state, None, user_args)
        return out

    def _pullback(self, *args, **kwargs):
        passed = None                   # which inputs the caller gave (the rest are defaults)
        if kwargs or len(args) < _arity(type(self)):
            passed = _passed(type(self), args, kwargs)
            args = _complete(self, args, kwargs)
        names = state_names(type(self))
        flat, trees = pytree.split_args(args)
        nflat = len(flat)
        user_args = args
        if names:
            state, source = current_state(self, names)
            check_batch(self, names, state, args)
            args = args + tuple(state)
        c, (out, saved) = _run(self, _compile(self, args), args, "forward_train")
        if names:
            out, new_state = _split_state(out, c)
            link = Link()
            set_state(self, names, new_state, link, user_args)
        model = self

        def back(dy=None, input_grads=True):
            with GRAD_LOCK:
                return run_back(dy, input_grads)

        def run_back(dy, input_grads):
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
                gin, gstate = grads[:nflat], grads[nflat:]
                if source is _INITIAL:
                    accumulate_initial(model, names, gstate)
                elif isinstance(source, Link):
                    source.add(gstate)
            else:
                gin = (grads,) if nflat == 1 else grads
            gin = _structured_grads(args, trees, gin)
            if passed is not None and input_grads:
                gin = tuple(gin[i] for i in passed)
            return gin[0] if len(gin) == 1 else tuple(gin)
        return out, back

    def pullback(self, *args, **kwargs):
        """One forward pass; returns ``(y, back)``. ``back(dy)`` accumulates every
        ``Param.grad`` and returns the input gradients (a tuple for several inputs).
        ``dy`` defaults to ones (the gradient of ``y.sum()``).

        ``back`` reads the inputs as they were at ``pullback``: they are copied, so the
        caller may change them in between. Until ``back`` has run, the other arrays it
        reads (the outputs, every Param value and array attribute) are read-only, so that
        a write cannot change the gradient silently; ``back`` runs once unless called
        with ``retain=True``. ``back(dy, input_grads=False)`` accumulates the Param
        gradients only and returns None (what ``fc.train`` does).

        >>> import numpy as np, flux_compile as fc
        >>> m = fc.Dense(3, 2)
        >>> y, back = m.pullback(np.ones((4, 3)))
        >>> back().shape, m.W.grad.shape           # dx, and W's accumulated gradient
        ((4, 3), (3, 2))
        """
        private = _private_copies(args), {k: _private_copies(v) for k, v in kwargs.items()}
        out, back = self._pullback(*private[0], **private[1])
        hold = [Hold(self, (out,))]
        model = self
        public = _public_back(self, back, args, kwargs)

        def public_back(dy=None, input_grads=True, retain=False):
            h = hold[0]
            if h is None:
                raise RuntimeError(f"back() already ran for this {type(model).__name__}.pullback and released "
                                   f"its outputs and parameters for writing; pass retain=True to every call "
                                   f"but the last to run it again, or call pullback again")
            h.check(model)
            grads = public(dy, input_grads)
            if not retain:
                hold[0] = None
                h.release()
            return grads
        public_back.__doc__ = ("back(dy, input_grads=True, retain=False) -> input gradients; accumulates "
                               "Param.grad. input_grads=False skips the input gradients (returns None): "
                               "faster when only the parameters are trained. retain=True keeps the outputs "
                               "and parameters read-only so that back can run again")
        return out, public_back

    def back(self, dy, *args, **kwargs):
        """Flux's ``back!``: forward, then backward with ``dy``; returns the input gradients.

        >>> import numpy as np, flux_compile as fc
        >>> m = fc.Dense(3, 2)
        >>> dx = m.back(np.ones((4, 2)), np.ones((4, 3)))
        >>> dx.shape, m.b.grad
        ((4, 3), array([[4., 4.]]))
        """
        _, b = self._pullback(*args, **kwargs)
        return _public_back(self, b, args, kwargs)(dy)

    def update(self, opt=0.1):
        """Flux's ``update!``: one optimiser step (a number is an SGD learning rate), then zero grads.

        >>> import numpy as np, flux_compile as fc
        >>> m = fc.Dense(3, 2)
        >>> _ = m.back(np.ones((4, 2)), np.ones((4, 3)))
        >>> m.update(0.5)
        >>> m.b.value, m.b.grad                                   # stepped, then zeroed
        (array([[-2., -2.]]), array([[0., 0.]]))
        """
        with GRAD_LOCK:
            refuse_if_held(self, "update()")
            apply_update(self, opt)

    def zero_grad(self):
        """Set every Param's gradient to zero.

        >>> import numpy as np, flux_compile as fc
        >>> m = fc.Dense(3, 2)
        >>> _ = m.back(np.ones((4, 2)), np.ones((4, 3)))
        >>> m.zero_grad(); float(abs(m.W.grad).sum())
        0.0
        """
        with GRAD_LOCK:
            for _, p in cached_named_params(self):
                p.grad[...] = 0

    def reset(self):
        """Restore the initial recurrent state of this model and its sub-models.

        Call it between independent sequences, and before a batch of another size: state
        carried from a step at batch 4 meeting a batch of 1 is an error, not a reset.

        >>> import numpy as np, flux_compile as fc
        >>> m = fc.RNN(2, 3)
        >>> first = m(np.ones((1, 2)))
        >>> _ = m.reset(); bool(np.allclose(m(np.ones((1, 2))), first))
        True
        """
        reset(self)
        return self

    def __repr__(self):
        from .display import model_repr
        return model_repr(self)

    def _repr_html_(self):
        from .display import model_html
        return model_html(self)


_MISSING = object()

# Gradient accumulation (every backward), updates and zeroing run one at a time, so that
# threads sharing a model lose no gradient; forward passes run in parallel. Compiling
# (rare) is serialised too. Both are re-entrant: a backward runs its sub-models' backwards.
GRAD_LOCK = InterruptSafeLock()
COMPILE_LOCK = InterruptSafeLock()


def _compile(model, args, fresh=False):
    """The variant for ``args``: a lookup without the lock when it is compiled already."""
    key = input_key(args)
    c = None if fresh else cached_variant(model, key)
    if c is not None:
        model.__dict__["_fc_last"] = key        # fc.source shows the variant that ran last
        return c
    with COMPILE_LOCK:
        return compile_model(model, args, fresh=fresh)


def _public_back(model, back, args, kwargs):
    """``back`` returning one gradient per input the caller gave (None for non-float ones)."""
    args = args + tuple(kwargs[k] for k in _forward_signature(type(model)).parameters if k in kwargs)
    n = len(args)

    def public(dy=None, input_grads=True):
        grads = back(dy, input_grads)
        if not input_grads:
            return None
        if n == 1:
            return _public_grad(args[0], grads)
        return tuple(_public_grad(a, g) for g, a in zip(grads, args))
    return public


def _private_copies(value):
    """``value`` with every array in it (also inside tuples, lists and dicts) copied."""
    return pytree.tree_map(lambda a: a.copy() if isinstance(a, np.ndarray) else a, value)


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
    sig = _forward_signature(type(model))
    try:
        bound = sig.bind(model, *args, **kwargs)
    except TypeError as e:
        raise TypeError(bad_call_message(type(model).__name__, sig, kwargs, e)) from None
    bound.apply_defaults()
    return tuple(bound.args[1:])


def _run(model, c, args, method):
    """Run a generated function; with guards, the variant for this call's path."""
    flat = pytree.split_args(args)[0]

    def call(variant):
        try:
            if variant.free_paths:          # arrays the code reads at run time (guards.py)
                return getattr(variant, method)(model, *flat, *variant.read_free(model, ()))
            return getattr(variant, method)(model, *flat)
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
    c2, result = run_guarded(c, attempt, lambda: _compile(model, args, fresh=True), model)
    if c2 is not c:
        from .cache import _remember
        with COMPILE_LOCK:
            _remember(model, input_key(args), c2)
    return c2, result


def _reraise(c, e, direction):
    new = c.translate(e, direction)
    if new is None or new is e:
        raise e
    raise new from e


def _public_grad(a, g):
    """What ``back`` returns for input ``a``: its gradient for a float or structured input,
    a structure of None for a structure of constants, None for other constants."""
    if _float_kind(a) or pytree.is_structured(a):
        return g
    return pytree.tree_map(lambda _: None, a) if pytree.is_container(a) else None


def _structured_grads(args, trees, flat_grads):
    """One gradient per input: a structured input's leaf gradients put back in its structure."""
    if all(t is None for t in trees):   # no structured input: one gradient per input already
        return list(flat_grads)
    return [g if t is None else
            pytree.in_order_of(a, pytree.unflatten(t, map(pytree.leaf_grad, pytree.flatten(a)[0], g)))
            for t, g, a in zip(trees, pytree.group(trees, tuple(flat_grads)), args)]


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

    >>> import numpy as np, flux_compile as fc
    >>> @fc.net
    ... class Scale:
    ...     def __init__(self, n):
    ...         self.w = np.ones(n)
    ...     def forward(self, x):
    ...         return x * self.w
    >>> m = Scale(3)
    >>> m(np.arange(3.0)), m.back(np.ones(3), np.arange(3.0)), m.w.grad
    (array([0., 1., 2.]), array([1., 1., 1.]), array([0., 1., 2.]))
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
