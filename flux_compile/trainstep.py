"""``fc.train_step(model, loss, opt)``: one generated function for a whole training step.

``step = fc.train_step(model, loss, opt)``; ``step(*inputs, target)`` runs the forward,
the loss, the backward and the optimiser update, and returns the loss as a float.
``fc.source(step)`` shows the generated module: the optimiser's per-Param ``update`` and
``step`` itself.

- The model is *flattened*: every sub-model without recurrent state or a template of its
  own (``fc.unroll``) is inlined into ``step``, its Params read at their field path
  (``model.layers[0].W.value``), its lines commented with their file and line.
- The update is *fused* into the backward: as soon as a Param's gradient is complete
  (summed over its uses, also when one Param is shared by two sub-models) the optimiser's
  update runs for it, from the gradient as a local value. Such a Param's ``.grad`` is
  neither read nor written by a step: it keeps what it held. A Param of a sub-model that
  keeps its own call (recurrent models, ``fc.unroll``) gets its gradient through ``.grad``
  as usual: those are zeroed before the step, read at its end, and zeroed again.
- A step is all or nothing: ``step`` only computes new values and optimiser state; they
  are committed (assignments, Ctrl-C held back) only when the loss and every new value
  are finite. A fault anywhere leaves Params, optimiser state and recurrent state as
  they were.
"""
from __future__ import annotations

import ast
import math

import numpy as np

from . import assemble, diskstep, passes
from .ir import ACCUM, LOOP, MODEL
from .autodiff import differentiate, split
from .cache import _arity_of, _spec_token, input_key
from .compiled import inlined_owner
from .compiler import _trace, flat_inputs, function_specs
from .errors import ModelError, Retrace, error_message, model_error_type
from .frontend import attr_token
from .guards import compile_checks, compile_reader
from .params import is_model, named_params, path_str
from .readonly import EDITS, refuse_if_held
from .runstate import reset, restore_states, snapshot_states
from . import updatestep
from .updatestep import Entry, NonFiniteGradient, PendingUpdate, _as_optimiser, _functional
from .updatebuffers import SLOTS_PER_PARAM, buffered_block  # noqa: F401  (SLOTS_PER_PARAM: importable here too)

__all__ = ["train_step", "TrainStep", "NonFiniteLoss"]


class NonFiniteLoss(FloatingPointError):
    """The loss of a step is NaN or infinite; nothing was updated. ``.loss`` holds it."""

    def __init__(self, loss):
        self.loss = loss
        super().__init__(f"the loss is {loss}; nothing was updated")


# The objectives traced for a step, one per number of model inputs. Flattened: sub-models
# are inlined (frontend.Builder.inline_model).
def objective1(model, loss, x, target):
    return loss(model(x), target)


def objective2(model, loss, x1, x2, target):
    return loss(model(x1, x2), target)


def objective3(model, loss, x1, x2, x3, target):
    return loss(model(x1, x2, x3), target)


OBJECTIVES = {1: objective1, 2: objective2, 3: objective3}
for _f in OBJECTIVES.values():
    _f._fc_flatten = True


def train_step(model, loss, opt):
    """One generated function for a whole training step: ``step(*inputs, target=y) -> loss``.

    Runs the forward (sub-models inlined), ``loss(model_output, y)``, the backward and the
    optimiser update of every trainable Param, fused into the backward as each gradient is
    complete. All or nothing: nothing changes unless the loss and every gradient are finite.
    A fused Param's ``.grad`` is neither read nor written. Recurrent state carries from step
    to step (``model.reset()`` between sequences; ``fc.train`` resets per batch).
    ``fc.source(step)`` shows the generated code.

    >>> import numpy as np, flux_compile as fc
    >>> m = fc.Chain(fc.Dense(3, 4, act=np.tanh), fc.Dense(4, 2))
    >>> step = fc.train_step(m, fc.mse, fc.optim.Adam(0.01))
    >>> losses = [step(np.ones((5, 3)), target=np.zeros((5, 2))) for _ in range(50)]
    >>> losses[-1] < losses[0]
    True
    >>> "new_0 = update(model.layers[0].W.value" in fc.source(step)
    True
    """
    if getattr(model, "__fc_backend__", False):     # a model moved by fc.to: the backend's step
        return model._fc_train_step(loss, opt)
    if not is_model(model):
        raise TypeError(f"fc.train_step needs an @fc.net model, got {type(model).__name__}")
    return TrainStep(model, loss, _as_optimiser(opt))


class StepCode:
    """The generated step for one structure of model and inputs."""

    def __init__(self, source, fn, filename, linemap, trainable, outside, checks, reader, guarded, shapes):
        self.source, self.fn, self.filename, self.line_locs = source, fn, filename, linemap
        self.trainable = trainable      # [(path, Param)]: the order of state, steps and results
        self.outside = outside          # Params whose gradient comes through .grad (sub-model calls)
        self.check, self.read_free, self.guarded = checks, reader, guarded
        self.shapes = shapes            # (Param, shape, trainable) the code was built for
        self.calls = True               # does it call a sub-model (which may have recurrent state)?
        self.label = "train_step"


class TrainStep:
    """``step(*inputs, target)`` -> loss (a float). ``fc.source(step)`` shows its code."""

    def __init__(self, model, loss, opt):
        self.model, self.loss, self.opt = model, loss, opt
        self._codes = {}            # (input key, EDITS) -> StepCode
        self.last = self._current = None
        self.last_loss = float("nan")

    def __repr__(self):
        return f"<fc.train_step of {type(self.model).__name__} with {self.opt!r}>"

    def __call__(self, *inputs, target):
        refuse_if_held(self.model, "fc.train_step")
        return self.run(inputs, target)

    def step_source(self, example=None):
        """The generated module (``fc.source(step)``): of the step that ran last, or with
        ``example=(*inputs, target)`` of the step for those arrays."""
        if example is not None:
            example = tuple(example)
            return self.code_for(example[:-1], example[-1]).source
        if self.last is None:
            raise ValueError("this train_step has not run yet: call it once, or pass example "
                             "arrays: fc.source(step, inputs=(x, target))")
        return self.last.source

    # -- running -------------------------------------------------------------
    def run(self, inputs, target, reset_state=False, guard=None):
        """One step, all or nothing; returns the loss. ``reset_state``: start from the
        model's initial recurrent state. ``guard`` (fc.train's interrupt guard): Ctrl-C
        during the commit or the undo waits for it."""
        model = self.model
        code, pending, snapshot = None, None, None
        self.last_loss, self._current = float("nan"), None
        try:
            code = self.code_for(inputs, target)
            if code.calls:              # a sub-model keeps its call: it may carry recurrent state
                snapshot = snapshot_states(model)
                if reset_state:
                    reset(model)
            code, loss, new, entries = self.attempt(code, inputs, target, snapshot, reset_state)
            value = self.last_loss = float(loss)
            if not math.isfinite(value):
                raise NonFiniteLoss(value)
            pending = self.pending(code, new, entries)
            if guard is not None:
                guard.enter_critical()              # from here on the step completes
            pending.commit()
        except BaseException:
            if guard is not None:
                guard.enter_critical()
            if pending is None or not pending.done:
                code = code or self._current
                if code is not None:
                    _zero(code.outside)
                if snapshot is not None:
                    restore_states(snapshot)
            if guard is not None:
                guard.release()
            raise
        if guard is not None:
            guard.release()
        return value

    def attempt(self, code, inputs, target, snapshot, reset_state):
        """Run the step for these inputs, compiling another variant when a data-dependent
        guard fails; returns (code, loss, new values, optimiser entries before the step)."""
        for attempt in range(8):
            if attempt:
                code = self.code_for(inputs, target, fresh=True)
            _zero(code.outside)
            try:
                return (code,) + self.call(code, inputs, target)
            except Retrace:
                if snapshot is not None:
                    restore_states(snapshot)
                    if reset_state:
                        reset(self.model)
        raise RuntimeError("fc.train_step: the data-dependent guards kept failing")

    def call(self, code, inputs, target):
        args = (self.model, self.loss) + tuple(inputs) + (target,)
        opt = self.opt
        entries = [opt._state_for(p) for _, p in code.trainable]
        try:
            loss, new = code.fn(*args, *code.read_free(OBJECTIVES[len(inputs)], args),
                                [e.slots for e in entries], [e.step + 1 for e in entries],
                                *opt.hyperparams())
        except Retrace:
            raise
        except Exception as e:
            raise _translate(code, e) from e
        return loss, new, entries

    def pending(self, code, new, entries):
        opt = self.opt
        values, records = [], []
        for (path, p), (_, _, grad, total) in zip(code.trainable, new):
            _finite(path, grad, total)          # before anything is computed from the values
        like = updatestep._like
        for (path, p), (value, slots, _, _), before in zip(code.trainable, new, entries):
            values.append((p, like(value, p.value, path)))
            slots = tuple(like(s, p.value, path) for s in slots)
            records.append(opt.state.record(p, Entry(before.step + 1, slots)))
        return PendingUpdate(opt, values, records, [p.grad for p in code.outside])

    # -- compiling -----------------------------------------------------------
    def code_for(self, inputs, target, fresh=False):
        if len(inputs) not in OBJECTIVES:
            raise TypeError(f"fc.train_step supports models of 1 to {len(OBJECTIVES)} inputs, "
                            f"not {len(inputs)}")
        key = (input_key(tuple(inputs) + (target,)), EDITS[0])
        code = self._codes.get(key)
        fn = OBJECTIVES[len(inputs)]
        args = (self.model, self.loss) + tuple(inputs) + (target,)
        if fresh or code is None or not _still_valid(code, fn, args):
            code = self.shared_code(fn, args, fresh)
            if len(self._codes) > 16:
                self._codes.clear()
            self._codes[key] = code
        self.last = self._current = code
        return code

    def shared_code(self, fn, args, fresh):
        """The step for this structure from the cache shared by every TrainStep (built on a
        miss), bound to this model's Params."""
        from .rules import GENERATION
        model, opt = self.model, self.opt
        specs = function_specs(fn, args, "fc.train_step")
        everything = named_params(model)
        first = {}
        sharing = tuple(first.setdefault(id(p), i) for i, (_, p) in enumerate(everything))
        key = (GENERATION[0], type(opt), tuple(opt.hyper), tuple(opt.slots), sharing,
               tuple(_spec_token(s) for s in specs), tuple(_structure(model)))
        for module in [] if fresh else _SHARED.get(key, ()):
            if module.check(fn, args):
                return module.bind(model)
        stored = None if fresh else diskstep.load(key, model, opt, fn, args)
        if stored is not None:
            module = StepModule.from_disk(stored)
        else:
            module, built = self.build(fn, args, specs)
            module.origin = "built"
            diskstep.store(key, model, opt, fn, args, module, built)
        variants = _SHARED.setdefault(key, [])
        variants.insert(0, module)
        del variants[8:]
        if len(_SHARED) > 256:
            _SHARED.pop(next(iter(_SHARED)))
        return module.bind(model)

    def build(self, fn, args, specs):
        model, opt = self.model, self.opt
        label = f"{type(model).__qualname__}.train_step ({type(opt).__name__})"
        graph, arity, ctx = _trace(label, fn, None, specs, True, values=flat_inputs(specs, args),
                                   arity_of=_arity_of)
        joint = differentiate(graph, traced=ctx)
        r = passes.optimize(graph)
        joint.resolved_grads = [r(x) if x is not None else None for x in joint.input_grads]
        sp = split(joint, r)
        _loss_and_grad_at_once(graph, sp)
        free_paths = list(dict.fromkeys(list(ctx.free) + list(joint.ctx.free)))
        free_names = {**ctx.free_names, **joint.ctx.free_names}
        plan = FusePlan(model, opt, graph, sp)
        source, ns, linemap, filename = assemble.emit_step(
            label, joint, sp, [(p, free_names[p]) for p in free_paths], plan.extra_params(),
            plan.helper(), plan.on_accum, plan.tail)
        baked = {**ctx.baked, **joint.ctx.baked}
        guards = [(path, kind, expected) for (path, kind), expected in baked.items()]
        for n in graph.nodes:
            n.meta.pop("obj", None)
        module = StepModule(source, ns["step"], filename, linemap, [q for q, _ in plan.trainable],
                            plan.outside_paths, compile_checks(guards), compile_reader(free_paths))
        module.calls = any(n.op == MODEL for n in graph.nodes)
        module.label = f"{type(model).__name__}.train_step"
        built = dict(guards=guards, free_paths=free_paths, namespace=ns,      # for the disk cache
                     inlined=dict.fromkeys(ctx.inlined + joint.ctx.inlined))
        return module, built


_SHARED = {}        # structure key -> [StepModule]: one generated step per structure, for every model


class StepModule:
    """A generated step for one structure of model and inputs, any instance of it."""

    def __init__(self, source, fn, filename, linemap, trainable_paths, outside_paths, check, reader):
        self.source, self.fn, self.filename, self.line_locs = source, fn, filename, linemap
        self.trainable_paths, self.outside_paths = trainable_paths, outside_paths
        self.check, self.read_free = check, reader

    @classmethod
    def from_disk(cls, stored):
        """The step of a disk-cache entry (``diskstep.load``'s parts)."""
        module = cls(stored["source"], stored["fn"], stored["filename"], stored["linemap"],
                     stored["trainable_paths"], stored["outside_paths"], stored["check"], stored["reader"])
        module.calls, module.label = stored["calls"], stored["label"]
        module.origin = "disk"
        return module

    def bind(self, model):
        trainable = [(q, _resolve(model, q)) for q in self.trainable_paths]
        outside = [_resolve(model, q) for q in self.outside_paths]
        shapes = tuple((p, p.value.shape, p.trainable) for _, p in named_params(model))
        code = StepCode(self.source, self.fn, self.filename, self.line_locs, trainable, outside,
                        self.check, self.read_free, False, shapes)
        code.calls, code.label = self.calls, self.label
        return code


def _still_valid(code, fn, args):
    for p, shape, trainable in code.shapes:
        if p.value.shape != shape or p.trainable != trainable:
            return False
    return code.check(fn, args)


def _accumulated_in_loops(graph):
    """The ``accum`` nodes of every loop region's backward in ``graph`` (nested loops too):
    each trip adds its part into ``.grad``, so the update reads ``.grad`` after the loop."""
    for n in graph.nodes:
        if n.op == LOOP and "train" in n.meta:
            body_back = n.meta["train"][1].backward
            yield from (x for x in body_back if x.op == ACCUM)
            yield from _accumulated_in_loops(n.meta["body"])


def _with_loop_bodies(graph):
    """The nodes of ``graph`` and of every loop body inside it."""
    for n in graph.nodes:
        yield n
        if n.op == LOOP:
            yield from _with_loop_bodies(n.meta["body"])


class FusePlan:
    """Which Param each gradient belongs to, and the statements of the fused update."""

    def __init__(self, model, opt, graph, sp):
        self.opt = opt
        self.trainable = [(q, p) for q, p in named_params(model) if p.trainable]
        self.index = {id(p): k for k, (_, p) in enumerate(self.trainable)}
        outside = {}
        for n in _with_loop_bodies(graph):  # sub-models that keep their own call accumulate .grad
            if n.op == MODEL:
                obj = _resolve(model, n.path)
                for q, p in named_params(obj) if is_model(obj) else ():
                    outside.setdefault(id(p), (tuple(n.path) + tuple(q), p))
        for n in _accumulated_in_loops(graph):      # so do a loop's trips, into .grad
            p = _resolve(model, n.path)
            outside.setdefault(id(p), (tuple(n.path), p))
        self.outside = [p for _, p in outside.values()]
        self.outside_paths = [q for q, _ in outside.values()]
        self.pending = {}               # k -> number of gradient parts still to come
        for n in sp.backward:
            if n.op == ACCUM:
                k = self._k(model, n)
                if k is not None:
                    self.pending[k] = self.pending.get(k, 0) + 1
        self.model = model
        self.local = {}                 # k -> name of its partial gradient
        self.done = set()
        self.names = {}                 # k -> name of its (new value, new slots, gradient)

    def _k(self, model, n):
        p = _resolve(model, n.path)
        return self.index.get(id(p))

    def extra_params(self):
        return ["state", "steps"] + list(self.opt.hyper)

    def helper(self, kept="buffers"):
        """The optimiser's update of one Param as a function ``update(p, g, state, t, *hyper,
        k)``; its new values are written into arrays ``kept`` (the module's Buffers) holds
        for Param ``k`` (``buffered_block``), never into ``p``, ``g`` or ``state``."""
        opt = self.opt
        slots = "(" + ", ".join(opt.slots) + ("," if len(opt.slots) == 1 else "") + ")"
        lines = [f"def update(p, g, state, t, {', '.join(opt.hyper)}, k):"]
        if opt.slots:
            lines.append(f"    {slots} = state")
        block = _functional(opt, opt.block())
        lines += ["    " + line for line in buffered_block(block, {"p", "g", *opt.slots}, kept)]
        # the gradient's sum, taken while it is in cache: a finite sum proves it finite
        lines.append(f"    return p, {slots if opt.slots else '()'}, g, np.add.reduce(g, axis=None)")
        return "\n".join(lines) + "\n"

    def _update_call(self, env, k, grad):
        path = self.trainable[k][0]
        value = env.path("model", tuple(path) + ("value",))
        hyper = ", ".join(env.params[h] for h in self.opt.hyper)
        call = f"{env.update}({ast.unparse(value)}, {ast.unparse(grad)}, {env.params['state']}[{k}], " \
               f"{env.params['steps']}[{k}], {hyper}, {k})"
        target = env.scope.fresh(f"new_{k}")
        self.done.add(k)
        self.names[k] = target
        return [ast.parse(f"{target} = {call}").body[0]]

    def on_accum(self, n, value, env):
        k = self._k(self.model, n)
        if k is None:
            return []
        self.pending[k] -= 1
        p = self.trainable[k][1]
        last = self.pending[k] == 0 and not any(p is q for q in self.outside)
        if k in self.local:
            value = ast.BinOp(ast.Name(self.local[k], ast.Load()), ast.Add(), value)
        if last:
            return self._update_call(env, k, value)
        name = self.local.get(k) or env.scope.fresh(f"grad_{k}")
        self.local[k] = name
        return [ast.Assign(targets=[ast.Name(name, ast.Store())], value=value, lineno=0)]

    def tail(self, env):
        """Updates of the Params whose gradient is not complete in the backward: those a
        sub-model call accumulates in ``.grad`` (plus any local part), and unused ones (zero)."""
        out = []
        outside = {id(q) for q in self.outside}
        for k, (path, p) in enumerate(self.trainable):
            if k in self.done:
                continue
            if id(p) in outside:
                grad = env.path("model", tuple(path) + ("grad",))
            else:                       # no gradient reaches it: zero, as model.update would see
                value = ast.unparse(env.path("model", tuple(path) + ("value",)))
                grad = ast.parse(f"np.zeros_like({value})", mode="eval").body
            if k in self.local:
                grad = ast.BinOp(ast.Name(self.local[k], ast.Load()), ast.Add(), grad)
            out += self._update_call(env, k, grad)
        ret = ast.List(elts=[ast.Name(self.names[k], ast.Load()) for k in range(len(self.trainable))],
                       ctx=ast.Load())
        return out, ret


def _loss_and_grad_at_once(graph, sp):
    """``fc.logitcrossentropy(z, y)`` in the forward and its rule's
    ``logitcrossentropy_grad(z, y)`` in the backward become two items of one
    ``logitcrossentropy_value_and_grad(z, y)`` in the forward: one softmax, not two."""
    from .ir import CALL, ITEM, Node
    from .losses import logitcrossentropy, logitcrossentropy_grad, logitcrossentropy_value_and_grad
    grads = {tuple(a.id for a in n.args): n for n in sp.backward
             if n.op == CALL and n.fn is logitcrossentropy_grad and not n.kwargs}
    next_id = max(n.id for n in graph.nodes) + 1
    for i, n in enumerate(list(sp.forward)):
        g = grads.get(tuple(a.id for a in n.args))
        if n.op != CALL or n.fn is not logitcrossentropy or n.kwargs or g is None:
            continue
        both = Node(CALL, n.args, loc=n.loc, fn=logitcrossentropy_value_and_grad, arity=2)
        both.id, next_id = next_id, next_id + 1
        sp.forward.insert(sp.forward.index(n), both)
        for item, index in ((n, 0), (g, 1)):
            item.op, item.args, item.fn, item.index = ITEM, (both,), None, index
        sp.saved.append((both, "value"))


def _structure(value, path=(), seen=None):
    """Every model inside ``value`` (also in lists, tuples and dicts), by path, with the
    tokens of its attributes: what a flattened step bakes in of the model's structure."""
    seen = set() if seen is None else seen
    if is_model(value):
        if id(value) in seen:
            yield path, "seen"
            return
        seen.add(id(value))
        yield path, type(value), tuple((k, attr_token(v)) for k, v in vars(value).items()
                                       if not k.startswith("_"))
        items = [(k, v) for k, v in vars(value).items() if not k.startswith("_")]
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    elif isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if isinstance(k, (str, int))]
    else:
        return
    for k, v in items:
        if is_model(v) or isinstance(v, (list, tuple, dict)):
            yield from _structure(v, path + (k,), seen)


def _resolve(model, path):
    obj = model
    for f in path:
        obj = obj[f] if isinstance(f, int) else getattr(obj, f)
    return obj


def _zero(params):
    for p in params:
        p.grad[...] = 0


def _finite(path, grad, total=None):
    """Raise NonFiniteGradient unless every entry of ``grad`` is finite. Its sum ``total`` (the
    update helper takes it; else taken here) settles it when finite (NaN and inf propagate
    into a sum); a sum that overflowed is checked entry by entry."""
    if np.isfinite(np.sum(grad) if total is None else total):
        return
    if not np.isfinite(grad).all():
        raise NonFiniteGradient(path_str(path) or "<model>", np.asarray(grad))


def _translate(code, exc):
    """An error inside the generated step as a ModelError naming the user's line (the
    statement's file:line from the step's line map), or ``exc`` itself when none is known."""
    tb, lineno = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == code.filename:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    loc = code.line_locs.get(lineno) if lineno is not None else None
    if loc is None:
        return exc
    inlined = inlined_owner(loc)
    frame = (f"{code.label} (step)", f"{loc.filename}:{loc.lineno}",
             f"{loc.text}  [{inlined}]" if inlined else loc.text)       # (one frame: the step's)
    if isinstance(exc, ModelError):
        exc.trace.append(frame)
        return exc
    try:
        return model_error_type(type(exc))(error_message(exc), [frame])
    except Exception:
        return ModelError(f"{type(exc).__name__}: {exc}", [frame])
