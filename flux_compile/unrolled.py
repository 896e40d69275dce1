"""``fc.unroll(m, n)`` as one generated forward/backward: a loop region over time.

``Unroll.forward`` is a plain time loop (``ys.append(self.model(xs[:, t]))``). It is built
with the step model (and every model inside it) inlined, the recurrent state of each of
them (``self.model.h``) an extra input of the generated code, carried through the loop
region and returned once after it (:class:`statehooks.SubStateHooks`). So the loop hoisting
applies (``xs[:, t] @ Wx`` for all steps as one matmul, ``dWx`` after the loop).

At run time the wrapper below does for each stateful sub-model what ``model.py`` does for a
model with state: its current state in, its new state stored, the state gradient handed to
its initial-state Params (``accumulate_initial``) or to the previous call (``Link``:
truncated backprop through time across batches).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .cache import model_signature
from .compiled import Compiled
from .compiler import _input_spec, build, input_key, source_hash
from .errors import CompileError
from .frontend import ModelRef
from .params import get_path, is_model
from .rules import GENERATION
from .runstate import _INITIAL, Link, accumulate_initial, check_batch, current_state, set_state
from .statehooks import SubStateHooks, state_names


class NotInlinable(Exception):
    """The step model cannot run inlined in one loop; the per-step template runs instead."""


def state_owners(model, path=("model",), found=None, seen=None):
    """``[(path, model, state names)]`` of every model with recurrent state in ``model``'s tree
    (``model`` at ``path``). A stateful model reached twice or kept behind a template of its
    own (a nested ``fc.unroll``) is :class:`NotInlinable`."""
    found = [] if found is None else found
    seen = {} if seen is None else seen
    if id(model) in seen:
        if state_names(type(model)):
            raise NotInlinable(f"the stateful model at {path} is also at {seen[id(model)]}")
        return found
    seen[id(model)] = path
    if hasattr(type(model), "_fc_template"):
        if any(state_names(type(x)) for x in _models_below(model)):
            raise NotInlinable("a template with state inside the step model")
        return found
    names = state_names(type(model))
    if names:
        found.append((path, model, list(names)))
    for key, value in vars(model).items():
        if key.startswith("_"):
            continue
        for sub_path, sub in _models_in(value, path + (key,)):
            state_owners(sub, sub_path, found, seen)
    return found


def _models_in(value, path):
    if is_model(value):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _models_in(v, path + (i,))


def _models_below(model):
    from .params import submodels
    return submodels(model)[1:]


def compile_unrolled(seq, ikey, check_length):
    """The :class:`Compiled` of ``seq`` (an ``Unroll``) as one loop, or None when the step
    model cannot be inlined (the caller falls back to the per-step template)."""
    try:
        owners = state_owners(seq.model)
    except NotInlinable:
        return None
    keys = [(path, name) for path, _, names in owners for name in names]
    step = type(seq.model).__name__
    label = f"unroll({step}, {seq.n})"
    specs = [_input_spec("xs", _time_not_one(ikey[0]) if ikey else None, None)]

    structure = _structure(seq.model)

    def build_for(state_key):
        """The generated module for state of these ranks and size-1 axes (``input_key``):
        one another ``fc.unroll`` of the same structure built, when its guards hold for
        ``seq`` (the loop does not depend on ``n``), else a new one."""
        shared_key = None if structure is None else (GENERATION[0], structure, specs[0], state_key)
        for inner in _SHARED.get(shared_key, ()):
            if inner.current(seq):
                return inner
        hooks = (lambda: SubStateHooks(keys, state_key)) if keys else None
        inner = build(label, label, type(seq).forward, ModelRef("self", (), seq), specs,
                      state_factory=hooks, source_hash=source_hash(type(seq)))
        if shared_key is not None:
            _SHARED.setdefault(shared_key, []).insert(0, inner)
            del _SHARED[shared_key][4:]
            _SHARED.move_to_end(shared_key)
            while len(_SHARED) > 64:
                _SHARED.popitem(last=False)
        return inner
    key = _state_key(seq, owners)
    try:
        first = build_for(key)
    except (CompileError, RecursionError):
        return None     # the step model cannot be traced as a loop body: the template runs it
    c = _wrap(first, key, build_for, owners, seq.n, label, check_length)
    # the torch and JAX backends retarget a module's source; this one's state runs through the
    # Python wrapper below, which they do not have: they run the per-step template instead
    c.for_backends = seq._template(ikey)
    return c


# generated loops shared by the fc.unroll instances of one step-model structure (newest
# first, a few per key); each is reused only when its guards hold for the instance
_SHARED = OrderedDict()


def _structure(model, path=("model",)):
    """What a generated loop is built from of the step model's tree, as a hashable key: the
    class, its code and ``model_signature`` of every model in it (None: not hashable)."""
    items, seen = [], set()

    def visit(m, p):
        if id(m) in seen:               # shared (or a cycle, which the build reports)
            items.append((p, "seen"))
            return
        seen.add(id(m))
        items.append((p, type(m), source_hash(type(m)), model_signature(m)))
        for key, value in vars(m).items():
            if not key.startswith("_"):
                for sub_path, sub in _models_in(value, p + (key,)):
                    visit(sub, sub_path)
    visit(model, path)
    key = tuple(items)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _state_key(model, owners):
    """``input_key`` of the current state of every stateful sub-model (the initial (1, n)
    state broadcasts over the batch; the state after a step has the batch's size)."""
    values = []
    for path, _, names in owners:
        values.extend(current_state(get_path(model, path), names)[0])
    return input_key(values)


def _time_not_one(k):
    """The input key of ``xs`` without "axis 1 has size 1": the time loop stays a loop region
    (a run-time trip count) for ``n == 1`` too, instead of one unrolled step."""
    if not (isinstance(k, tuple) and len(k) == 4 and isinstance(k[2], tuple) and len(k[2]) > 1):
        return k
    ones = list(k[2])
    ones[1] = False
    return (k[0], k[1], tuple(ones), k[3])


def _wrap(first, first_key, build_for, owners, n, label, check_length):
    """A Compiled whose forward/backward run the generated module with the sub-models'
    state: one module per state key (:func:`_state_key`), built when first met."""
    k = sum(len(names) for _, _, names in owners)
    variants = {first_key: first}

    def variant(states):
        key = input_key(states)
        inner = variants.get(key)
        if inner is None:
            inner = variants[key] = build_for(key)
        if c.inner is not inner:        # fc.source and error messages: the module that ran last
            c.inner = inner
            c.show_as(inner)
        return inner

    def call(method, model, xs):
        check_length(xs, n, label)
        sources, states = [], []
        for path, owner, names in owners:
            values, source = current_state(_resolve(model, path, owner), names)
            check_batch(_resolve(model, path, owner), names, values, (xs,))
            sources.append(source)
            states.extend(values)
        inner = variant(states)
        args = (xs, *states, *inner.read_free(model, ()))
        return getattr(inner, method)(model, *args), sources, inner

    def store(model, new_states, xs, links):
        i = 0
        for (path, owner, names), link in zip(owners, links):
            set_state(_resolve(model, path, owner), names, new_states[i:i + len(names)], link, (xs,))
            i += len(names)

    def forward(self, xs):
        out, _, _ = call("forward", self, xs)
        if not k:
            return out
        store(self, list(out[-k:]), xs, [None] * len(owners))
        return out[0]

    def forward_train(self, xs):
        (out, saved), sources, inner = call("forward_train", self, xs)
        saved = (inner, saved)
        if not k:
            return out, (saved, (), (), ())
        links = [Link() for _ in owners]
        new = list(out[-k:])
        store(self, new, xs, links)
        return out[0], (saved, sources, links, new)

    def back(self, saved, dy, method):
        inner_saved, sources, links, new = saved
        if k:
            pending = []
            for (_, _, names), link in zip(owners, links):
                pending.extend(link.pending or [None] * len(names))
            dy = (dy,) + tuple(np.zeros_like(s) if g is None else g for g, s in zip(pending, new))
        inner, inner_saved = inner_saved
        grads = getattr(inner, method)(self, inner_saved, dy)
        if not k:
            return grads
        gstate = list(grads[-k:])
        i = 0
        for (path, owner, names), source in zip(owners, sources):
            g = gstate[i:i + len(names)]
            i += len(names)
            if source is _INITIAL:
                accumulate_initial(_resolve(self, path, owner), names, g)
            elif isinstance(source, Link):
                source.add(g)
        return grads[0] if method == "backward" else None

    def backward(self, saved, dy):
        return back(self, saved, dy, "backward")

    def backward_params(self, saved, dy):
        return back(self, saved, dy, "backward_params")

    ns = {"forward": forward, "forward_train": forward_train, "backward": backward,
          "backward_params": backward_params}
    c = Compiled(label, label, ns, first.source, first.filename, linemap=first.linemap,
                 input_names=["xs"], graph=first.graph, train_graph=first.train_graph,
                 deps=first.deps, inlined=first.inlined, source_hash=first.hash)
    c.guards, c.check = first.guards, first.check
    c.inner = first                 # the generated module the wrapper runs (the last one that ran)
    c.namespace_objects = dict(first.namespace_objects)
    return c


def _resolve(model, path, owner):
    """The sub-model at ``path`` (``("model", "layers", 0)``) of ``model`` now (``owner`` when
    it was compiled; the guards recompile when its class changed)."""
    return get_path(model, path)
