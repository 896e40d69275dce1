"""Training steps of models moved by ``fc.to``: ``fc.train_step(m2, loss, opt)`` gives a
:class:`BackendStep` (one ``jax.jit`` program on JAX; torch kernels, no autograd, on torch),
which ``fc.train`` runs, data-parallel too."""
from __future__ import annotations

import numpy as np

from .backendcore import _placeholder, module_for, to_numpy
from .cache import compile_function
from .params import path_str
from .trainstep import NonFiniteLoss
from .updatestep import NonFiniteGradient, _as_optimiser


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


__all__ = ["train_step", "BackendStep", "LossFunction"]
