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

import contextlib
import copy

import numpy as np

from .cache import compile_function
from .emitters import emitter, retarget
from .errors import CompileError, Retrace
from .model import _compile
from .params import Param, is_model, named_params, path_str
from .runstate import Link
from .sourcecache import compile_source, unique_filename
from .statehooks import state_names
from .trainstep import NonFiniteLoss
from .updatestep import NonFiniteGradient, _as_optimiser, _source as update_source_text

_INITIAL = "initial"
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


class LossFunction:
    """A loss compiled by the NumPy pipeline and retargeted: ``value_and_grad(yhat, y)``."""

    def __init__(self, fn, backend):
        self.fn, self.backend, self.variants = fn, backend, {}

    def value_and_grad(self, yhat, y):
        key = (tuple(yhat.shape), str(yhat.dtype), tuple(y.shape), str(y.dtype))
        hit = self.variants.get(key)
        if hit is None:
            c = compile_function(self.fn, (_placeholder(yhat), _placeholder(y)))
            hit = self.variants[key] = (c, module_for(c, self.backend)[1])
        c, ns = hit
        out, saved = ns["forward_train"](yhat, y)
        grads = ns["backward"](saved, out * 0 + 1)
        return out, grads[0]


def train_step(model, loss, opt=0.1):
    """A :class:`BackendStep`: ``step(*inputs, target=y)`` (or ``step(x, y)``) runs forward,
    loss, backward and optimiser update of a backend model and returns the loss (a native
    scalar). On JAX the whole step is one ``jax.jit`` program over the parameter values and
    optimiser state; on torch it runs torch kernels eagerly (no autograd). Recurrent state
    starts from its initial value every step. ``fc.train_step`` on a backend model gives this."""
    return BackendStep(model, loss, opt)


class BackendStep:
    """One training step of a backend model; all or nothing: a NaN or infinite loss
    (:class:`~flux_compile.trainstep.NonFiniteLoss`) or gradient
    (:class:`~flux_compile.updatestep.NonFiniteGradient`) changes no value and no optimiser
    state. ``fc.source(step)`` shows the code it runs."""

    def __init__(self, model, loss, opt):
        self.model, self.loss, self.opt = model, loss, _as_optimiser(opt)
        self.be = model._fc_backend
        self.lossf = LossFunction(loss, self.be)
        self.last_loss = float("nan")
        self.jitted = _jax_program(self) if self.be.name == "jax" else None

    def __repr__(self):
        return f"<fc.train_step of {self.model!r} with {self.opt!r}>"

    def __call__(self, *inputs, target=None):
        if target is None:
            inputs, target = inputs[:-1], inputs[-1]
        return self.run(inputs, target)

    # -- running -------------------------------------------------------------
    def run(self, inputs, target):
        """One step; returns the loss (a native scalar)."""
        inputs = tuple(self.be.native(x) for x in inputs)
        target = self.be.native(target)
        if self.jitted is not None:
            return self._run_jax(inputs, target)
        with self.be.no_tape():
            value = self.local_gradients(inputs, target)
            self.commit(float(value))
        return value

    def local_gradients(self, inputs, target):
        """Forward, loss and backward from the initial recurrent state: every Param's
        ``grad`` holds this batch's gradient; returns the loss (not yet checked)."""
        model = self.model
        model.reset()
        model.zero_grad()
        yhat, back = model._pullback(*inputs)
        value, dy = self.lossf.value_and_grad(yhat, target)
        back(dy, input_grads=False)
        return value

    def commit(self, value):
        """The optimiser update from the gradients in ``grad``, when the loss ``value`` and
        every gradient are finite; otherwise the gradients are zeroed and nothing changes."""
        self.last_loss = value
        if not np.isfinite(value):
            self.model.zero_grad()
            raise NonFiniteLoss(value)
        bad = self._first_non_finite_grad()
        if bad is not None:
            self.model.zero_grad()
            raise NonFiniteGradient(*bad)
        self.model.update(self.opt)

    def _first_non_finite_grad(self):
        """``(path, grad as NumPy)`` of the first trainable Param with a NaN or inf gradient.
        One reduction over all gradients first; Params are searched only when it is not finite."""
        trained = [(q, p) for q, p in self.model.named_params() if p.trainable]
        if not trained or np.isfinite(float(sum(p.grad.sum() for _, p in trained))):
            return None
        for q, p in trained:
            g = to_numpy(p.grad)
            if not np.isfinite(g).all():
                return path_str(q), g
        return None                 # only the sum overflowed

    def parallel_run(self, x, y, parallel):
        """A data-parallel step (``parallel``: a ``distributed.DataParallel``): this rank's
        share through forward and backward, the global loss and gradients by all-reduce,
        then the update. Torch (and NumPy-array) gradients only: JAX arrays are immutable."""
        with self.be.no_tape():
            self.model.reset()
            self.model.zero_grad()
            x, y = parallel.share(x, y)
            value = 0.0
            if parallel.has_rows:
                inputs = x if isinstance(x, tuple) else (x,)
                value = float(self.local_gradients(tuple(self.be.native(a) for a in inputs),
                                                   self.be.native(y)))
            value = parallel.reduce(value)
            self.commit(value)
        return value

    def _run_jax(self, inputs, target):
        trainable = [p for _, p in self.model.named_params() if p.trainable]
        state = self.model._fc_opt.setdefault(id(self.opt), (self.opt, {}))[1]
        old = [state.get(id(p)) or (0, tuple(self.be.zeros_like(p.value) for _ in self.opt.slots))
               for p in trainable]
        value, values, slots, ok = self.jitted([p.value for p in trainable], [s for _, s in old],
                                               [t + 1 for t, _ in old], inputs, target)
        self.last_loss = float(value)
        if not bool(ok):
            self._refuse(values)
        for p, v, s, (t, _) in zip(trainable, values, slots, old):
            p.value = v
            state[id(p)] = (t + 1, s)
        return value

    def _refuse(self, values):
        if not np.isfinite(self.last_loss):
            raise NonFiniteLoss(self.last_loss)
        trained = [q for q, p in self.model.named_params() if p.trainable]
        for q, v in zip(trained, values):
            v = to_numpy(v)
            if not np.isfinite(v).all():
                raise NonFiniteGradient(path_str(q), v)
        raise NonFiniteLoss(self.last_loss)

    # -- showing -------------------------------------------------------------
    def step_source(self, example=None):
        """The code of one step: the model's forward_train and backward, the loss's module and
        the optimiser's update, all for this backend; with ``example=(*inputs, target)`` for
        those arrays, else for the inputs that ran last."""
        if example is not None:
            example = tuple(self.be.native(a) for a in example)
            self.model._variants(example[:-1])
        model_source = self.model._source("all")
        how = ("one jax.jit program: the functions below traced together" if self.jitted is not None
               else "torch kernels run eagerly, no torch.autograd")
        parts = [f"# fc.train_step of {self.model!r} with {self.opt!r}: {how}",
                 "# forward_train -> loss forward_train/backward -> backward_params -> update",
                 "", "# ---- the model", model_source]
        for c, _ in self.lossf.variants.values():
            parts += ["# ---- the loss", module_for(c, self.be)[0]]
        parts += ["# ---- the optimiser update", self.model._source("update")]
        return "\n".join(parts)


def _jax_program(step):
    """The jitted pure step: ``(values, slots, steps, inputs, target) -> (loss, new values,
    new slots, all finite)``; the model's Params hold tracers only while it is traced."""
    model, be, opt = step.model, step.be, step.opt
    jnp = be.em.jnp
    trainable = [p for _, p in model.named_params() if p.trainable]
    allp = [p for _, p in model.named_params()]
    fn = model._update_fn(opt)

    def pure(values, slots, steps, inputs, target):
        saved = [(p.value, p.grad) for p in allp]
        try:
            for p, v in zip(trainable, values):
                p.value = v
            value = step.local_gradients(inputs, target)
            new = fn(trainable, slots, steps, *opt.hyperparams())
            ok = jnp.isfinite(value)
            for v, _ in new:
                ok = ok & jnp.all(jnp.isfinite(v))
            return value, [v for v, _ in new], [tuple(s) for _, s in new], ok
        finally:
            for p, (v, g) in zip(allp, saved):
                p.value, p.grad = v, g
            model.reset()

    return be.em.jax.jit(pure)


__all__ = ["to", "train_step", "BackendStep", "to_numpy", "backend_of", "BackendModel", "BackendParam"]
