"""Backends: the same model on PyTorch or JAX (early Flux's ``tf(m)`` / ``mxnet(m)``).

>>> import numpy as np, flux_compile as fc
>>> m = fc.Chain(fc.Dense(3, 4, act=np.tanh), fc.Dense(4, 2))
>>> m2 = fc.to(m, "jax")                       # doctest: +SKIP
>>> y, back = m2.pullback(np.ones((5, 3)))     # doctest: +SKIP

``fc.to(m, backend)`` copies ``m`` with every Param converted to the library's arrays
(``torch.Tensor`` on ``device``, or a JAX array on JAX's default device). Each class's
code is the NumPy pipeline's generated code retargeted by that backend's emitter
(:mod:`flux_compile.emitters`): same graphs, same rules, torch or ``jax.numpy``
kernels. The gradient is the generated backward, never ``torch.autograd``.
``fc.train_step`` on a JAX model is one ``jax.jit`` program (forward, loss,
backward, optimiser); on torch it runs eagerly.
"""
from __future__ import annotations

import copy

import numpy as np

from .backendcore import (Backend, _is_array, _is_jit_concretization, _placeholder,  # noqa: F401
                          module_for, to_numpy)
from .backendstep import BackendStep, LossFunction, train_step  # noqa: F401  (kept importable here)
from .emitters import retarget
from .errors import CompileError, Retrace
from .model import _compile
from .params import Param, is_model, named_params
from .runstate import Link
from .sourcecache import compile_source, unique_filename
from .statehooks import state_names
from .updatestep import _as_optimiser, _source as update_source_text

_INITIAL = "initial"


class BackendParam:
    """A Param on a backend: ``value`` and ``grad`` are native arrays."""

    __slots__ = ("value", "grad", "trainable")

    def __init__(self, value, grad, trainable=True):
        self.value, self.grad, self.trainable = value, grad, trainable

    @property
    def shape(self):
        return tuple(self.value.shape)

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self):
        return f"BackendParam({self.value!r})"


class BackendModel:
    """A model on a backend: the same fields as the NumPy model, Params converted.

    Made by :func:`to`; ``m2(x)``, ``m2.pullback(x)``, ``m2.back(dy, x)``,
    ``m2.update(opt)``, ``m2.zero_grad()``, ``m2.reset()`` as on NumPy."""

    __fc_backend__ = True

    def __init__(self, shadow, backend, memo):
        d = self.__dict__
        d["_fc_np"] = shadow            # the NumPy model the code is compiled from (never run)
        d["_fc_backend"] = backend
        d["_fc_variants"] = {}
        d["_fc_state"] = None
        d["_fc_link"] = None
        d["_fc_opt"] = {}
        for name, value in vars(shadow).items():
            if not name.startswith("_"):
                d[name] = _convert(value, backend, memo)

    # -- compiled code --------------------------------------------------------------
    def _variants(self, args):
        """The variants compiled for inputs of these shapes and dtypes: one per path through
        the model's data-dependent ``if``/``while`` (each guarded, as on NumPy)."""
        key = ("forward",) + tuple((tuple(a.shape), str(a.dtype)) if hasattr(a, "shape") else repr(a)
                                   for a in args)
        variants = self._fc_variants.setdefault(key, [])
        if not variants:
            self._add_variant(variants, tuple(_placeholder(a) if hasattr(a, "shape") else a for a in args))
        return variants

    def _add_variant(self, variants, example, fresh=False):
        c = _compile(self._fc_np, example, fresh=fresh)
        c = getattr(c, "for_backends", None) or c     # fc.unroll: its per-step template (unrolled.py)
        variants.append((c, module_for(c, self._fc_backend)))

    def _run(self, method, args):
        """``(compiled, namespace, result)`` of ``method`` on the variant whose guards hold for
        ``args``; a path no variant has taken yet is compiled from the real values."""
        variants = self._variants(args)
        for attempt in range(2):
            for c, (source, ns) in list(variants):
                free = tuple(self._fc_backend.native(v) for v in c.read_free(self._fc_np, ())) \
                    if c.free_paths else ()
                try:
                    with self._fc_backend.no_tape():
                        return c, ns, ns[method](self, *args, *free)
                except Retrace:
                    continue
                except Exception as e:
                    if _is_jit_concretization(e):
                        raise self._cannot_jit() from e
                    new = c.translate(e, "forward")
                    if new is None or new is e:
                        raise
                    raise new from e
            if attempt == 0:
                self._add_variant(variants, tuple(self._real_values(a) for a in args), fresh=True)
        raise CompileError(f"{type(self._fc_np).__name__} on {self._fc_backend.name}: the code compiled for "
                           f"these inputs' path still fails its own guards",
                           hint="report this as a bug of flux_compile, with the model")

    def _real_values(self, a):
        """An argument as NumPy, to compile the path its values take."""
        if not hasattr(a, "shape"):
            return a
        try:
            return to_numpy(a)
        except Exception as e:      # a JAX tracer inside jax.jit has no values
            raise self._cannot_jit() from e

    def _cannot_jit(self):
        return CompileError(
            f"{type(self._fc_np).__name__} takes an 'if' or 'while' on array values, which "
            f"{self._fc_backend.name} cannot compile into one jit program",
            hint="write the choice with np.where(cond, a, b), or train with the eager step "
                 "(m2.pullback / m2.back / m2.update)")

    def _inputs(self, args):
        return tuple(self._fc_backend.native(a) for a in args)

    def _current_state(self, names):
        if self._fc_state is None:
            values = [v.value if isinstance(v, BackendParam) else v for v in (self.__dict__[n] for n in names)]
            return values, _INITIAL
        return [self._fc_state[n] for n in names], self._fc_link

    # -- running ----------------------------------------------------------------------
    def __call__(self, *args):
        args = self._inputs(args)
        names = state_names(type(self._fc_np))
        if names:
            state, _ = self._current_state(names)
            args = args + tuple(state)
        c, _, out = self._run("forward", args)
        if names:
            out = self._set_state(out, names, c, None)
        return out

    def _set_state(self, out, names, c, link):
        flat = out if isinstance(out, tuple) else (out,)
        k = len(names)
        self.__dict__["_fc_state"] = dict(zip(names, flat[-k:]))
        self.__dict__["_fc_link"] = link
        user = flat[:-k]
        return user[0] if c.n_outputs is None else tuple(user)

    def _pullback(self, *args):
        args = self._inputs(args)
        nuser = len(args)
        names = state_names(type(self._fc_np))
        if names:
            state, source = self._current_state(names)
            args = args + tuple(state)
        c, ns, (out, saved) = self._run("forward_train", args)
        link = None
        if names:
            link = Link()
            full = out
            out = self._set_state(out, names, c, link)
            new_state = list(full[-len(names):])
        be = self._fc_backend

        def back(dy=None, input_grads=True):
            if dy is None:
                dy = tuple(be.zeros_like(o) + 1 for o in out) if isinstance(out, tuple) else be.zeros_like(out) + 1
            else:
                dy = tuple(be.native(d) for d in dy) if isinstance(out, tuple) else be.native(dy)
            if names:
                pending = link.pending or [None] * len(names)
                dstate = [be.zeros_like(s) if g is None else g for g, s in zip(pending, new_state)]
                dy = (tuple(dy) if c.n_outputs is not None else (dy,)) + tuple(dstate)
            with be.no_tape():
                grads = ns["backward" if input_grads else "backward_params"](self, saved, dy)
            if names:
                gin, gstate = grads[:nuser], grads[nuser:]
                if source is _INITIAL:
                    self._accumulate_initial(names, gstate)
                elif isinstance(source, Link):
                    source.add(gstate)
            else:
                gin = (grads,) if nuser == 1 else grads
            if not input_grads:
                return None
            return gin[0] if len(gin) == 1 else tuple(gin)
        return out, back

    def _accumulate_initial(self, names, grads):
        unbroadcast = self._fc_backend.em.kernel("unbroadcast", _unbroadcast())[1]
        for name, g in zip(names, grads):
            p = self.__dict__.get(name)
            if g is not None and isinstance(p, BackendParam) and p.trainable:
                p.grad = p.grad + unbroadcast(g, p.shape)

    def pullback(self, *args):
        """``(y, back)``: one forward; ``back(dy)`` accumulates every Param's ``grad`` and
        returns the input gradients (native arrays)."""
        return self._pullback(*args)

    def back(self, dy, *args):
        """Forward, then backward with ``dy``; returns the input gradients."""
        return self._pullback(*args)[1](dy)

    # -- parameters -----------------------------------------------------------------
    def named_params(self):
        """``[(path, BackendParam)]`` in the NumPy model's order, each Param once (the
        structure is fixed when ``fc.to`` makes the model, so the list is kept)."""
        cached = self.__dict__.get("_fc_params")
        if cached is None:
            cached = self.__dict__["_fc_params"] = [(path, _get(self, path)) for path, _ in
                                                    named_params(self._fc_np)]
        return list(cached)

    def update(self, opt=0.1):
        """One optimiser step (a number is an SGD learning rate), then zero the gradients.
        The optimiser's generated update runs on the backend (``fc.source(m2, "update")``)."""
        opt = _as_optimiser(opt)
        trainable = [(q, p) for q, p in self.named_params() if p.trainable]
        fn = self._update_fn(opt)
        state = self._fc_opt.setdefault(id(opt), (opt, {}))[1]
        old = [state.get(id(p)) or (0, tuple(self._fc_backend.zeros_like(p.value) for _ in opt.slots))
               for _, p in trainable]
        with self._fc_backend.no_tape():
            new = fn([p for _, p in trainable], [s for _, s in old], [t + 1 for t, _ in old], *opt.hyperparams())
        for (_, p), (t, _), (value, slots) in zip(trainable, old, new):
            p.value = value
            state[id(p)] = (t + 1, tuple(slots))
        self.zero_grad()

    def _update_fn(self, opt):
        params = self.named_params()
        trainable = [q for q, p in params if p.trainable]
        frozen = [q for q, p in params if not p.trainable]
        key = ("update", type(opt), tuple(trainable), tuple(frozen))
        hit = self._fc_variants.get(key)
        if hit is None:
            text = update_source_text(opt, trainable, frozen)
            label = f"{type(self._fc_np).__qualname__}.update ({type(opt).__name__}, {self._fc_backend.name})"
            source, ns = retarget(text, {"np": np}, self._fc_backend.em, label)
            ns = compile_source(source, unique_filename(label), ns)
            hit = self._fc_variants[key] = (ns["update"], source)
            self.__dict__["_fc_update_source"] = source
        return hit[0]

    def _fc_train_step(self, loss, opt):
        """What ``fc.train_step(m2, loss, opt)`` returns: a :class:`BackendStep`."""
        return BackendStep(self, loss, opt)

    def zero_grad(self):
        for _, p in self.named_params():
            p.grad = self._fc_backend.zeros_like(p.value)

    def reset(self):
        models = self.__dict__.get("_fc_models")
        if models is None:
            models = self.__dict__["_fc_models"] = _backend_models(self)
        for m in models:
            m.__dict__["_fc_state"] = None
            m.__dict__["_fc_link"] = None
        return self

    def _source(self, which="backward"):
        if which == "update":
            return self.__dict__.get("_fc_update_source") or retarget(
                update_source_text(_as_optimiser(0.1), [q for q, _ in self.named_params()], []),
                {"np": np}, self._fc_backend.em, "update")[0]
        variants = [v for k, vs in self._fc_variants.items() if k and k[0] == "forward" for v in vs]
        if not variants:
            raise ValueError(f"{type(self._fc_np).__name__} on {self._fc_backend.name} has not run yet: call it "
                             f"once (m2(x)) before fc.source(m2, ...)")
        c, (source, _) = variants[-1]
        if which == "all":
            return source
        from .compiled import sections
        parts = sections(source)
        if which not in parts:
            raise ValueError(f"which must be one of {', '.join(parts)}, 'update' or 'all'")
        return parts[which]

    def __setattr__(self, name, value):
        """Refused: the generated code baked in the fields of the model ``fc.to`` was given,
        so a changed field would be silently ignored."""
        raise AttributeError(f"cannot set {type(self._fc_np).__name__}.{name} on a {self._fc_backend.name} "
                             f"model: fc.to made it from a snapshot of its fields; change the NumPy model "
                             f"(fc.to(m2, 'numpy')) and call fc.to again")

    def __repr__(self):
        return f"{type(self._fc_np).__name__} on {self._fc_backend.name} ({len(self.named_params())} params)"


def _unbroadcast():
    from .rules.helpers import unbroadcast
    return unbroadcast


def _get(root, path):
    obj = root
    for key in path:
        obj = obj[key] if isinstance(key, int) or isinstance(obj, dict) else getattr(obj, key)
    return obj


def _backend_models(m):
    out, stack, seen = [], [m], set()
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, BackendModel):
            out.append(x)
            stack.extend(v for k, v in vars(x).items() if not k.startswith("_"))
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return out


def _convert(value, backend, memo):
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, Param):
        v = backend.native(value.value)
        out = BackendParam(v, backend.zeros_like(v), value.trainable)
    elif is_model(value):
        out = BackendModel(value, backend, memo)
    elif isinstance(value, list):
        out = [_convert(v, backend, memo) for v in value]
    elif isinstance(value, tuple):
        out = tuple(_convert(v, backend, memo) for v in value)
    elif isinstance(value, dict):
        out = {k: _convert(v, backend, memo) for k, v in value.items()}
    elif isinstance(value, np.ndarray):
        out = backend.native(value)
    else:
        out = value
    memo[key] = out
    return out


# ------------------------------------------------------------------------------ the public face

def to(m, backend, device=None):
    """``m`` on ``backend`` ("numpy", "torch", "jax"): a copy with its Params converted and
    its code generated for that library. ``device`` (torch only): ``"cpu"``, ``"cuda"``...
    ``fc.to(m2, "numpy")`` gives back a NumPy ``@fc.net`` model with ``m2``'s values."""
    if backend == "numpy":
        return _to_numpy(m)
    if device is not None and backend != "torch":
        raise ValueError(f"device= is for the torch backend; {backend} places arrays on its default device")
    shadow = _to_numpy(m) if isinstance(m, BackendModel) else copy.deepcopy(m)
    if not is_model(shadow):
        raise TypeError(f"fc.to expects a @fc.net model, not {type(m).__name__}")
    be = Backend(backend, device)
    if backend == "jax" and any(p.value.dtype == np.float64 for _, p in named_params(shadow)):
        be.em.jax.config.update("jax_enable_x64", True)      # a float64 model stays float64
    return BackendModel(shadow, be, {})


def _to_numpy(m):
    if not isinstance(m, BackendModel):
        return copy.deepcopy(m)
    out = copy.deepcopy(m._fc_np)
    for (path, p), (_, bp) in zip(named_params(out), m.named_params()):
        p.value = to_numpy(bp.value).copy()
        p.grad = to_numpy(bp.grad).copy()
    return out


def backend_of(m):
    """"numpy", "torch" or "jax"."""
    return m._fc_backend.name if isinstance(m, BackendModel) else "numpy"


__all__ = ["to", "train_step", "BackendStep", "to_numpy", "backend_of", "BackendModel", "BackendParam"]
