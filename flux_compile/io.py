"""Saving and loading: ``save(path, m, opt=None)`` / ``load(path, m, opt=None)``.

The file is a NumPy ``.npz`` with one array per Param, keyed by its field
path (``"first.W"``, ``"layers[0].b"``; a dict key that is not an identifier
is written as its repr in brackets, ``"table['a.b']"``, so no two paths share
a name), frozen Params included. A Param shared by two sub-models is stored
once, under its first path. Besides the Params the file holds, under names
starting with ``@`` (which no field path can):

- ``@meta``: a JSON text (as bytes) saying what else the file holds (absent
  when there is nothing else: no recurrent state, no optimiser);
- ``@state/<path>``: the recurrent state of every model that has one
  (``self.h`` after the last step), so that a loaded model goes on from there;
- with ``opt``, ``@optimiser/<param>/step`` and ``@optimiser/<param>/<slot>``:
  the optimiser's state (step counts, moments) for every Param that has one.

With the same model class, optimiser and data, training N steps, saving,
loading into a fresh model and optimiser and training N more gives the same
bits as training 2N steps straight.

:func:`load` reads and checks everything (names, shapes, dtypes, the
optimiser's type and hyper-parameters) before it changes anything, and then
changes everything at once. :func:`save` writes a temporary file next to the
target and renames it over the target, so readers and concurrent writers
always see a whole file.

>>> import numpy as np, tempfile, os
>>> from flux_compile.params import Param
>>> class Toy:
...     __flux_net__ = True
...     def __init__(self, w): self.W = Param(np.full(2, w))
>>> path = os.path.join(tempfile.mkdtemp(), "toy")
>>> save(path, Toy(1.0)); m = load(path, Toy(0.0)); m.W.value
array([1., 1.])
"""
from __future__ import annotations

import ast
import json
import os
import tempfile
import zipfile

import numpy as np

from .distributed import is_main
from .locks import interrupts_held
from .optim import Entry
from .params import is_model, named_params, walk
from .readonly import refuse_if_held
from .runstate import restore_states, snapshot_states
from .statehooks import state_names

__all__ = ["save", "load", "LoadError", "field_name"]

FORMAT = 2
META = "@meta"
STATE = "@state/"
OPTIMISER = "@optimiser/"


class LoadError(ValueError):
    """The file does not fit the model, or is not a file ``save`` wrote; ``.problems`` lists all."""

    def __init__(self, path, problems):
        self.path, self.problems = path, list(problems)
        super().__init__(f"cannot load {path}: {len(self.problems)} mismatch"
                         f"{'es' if len(self.problems) != 1 else ''}\n  "
                         + "\n  ".join(self.problems))


# -- names -----------------------------------------------------------------------

def field_name(path):
    """The name a field path is stored under; different paths never share one.

    >>> field_name(("layers", 0, "W")), field_name(("a.b",)), field_name(("a", "b"))
    ('layers[0].W', "['a.b']", 'a.b')
    """
    s = ""
    for key in path:
        if isinstance(key, str) and key.isidentifier():
            s += f".{key}" if s else key
        elif isinstance(key, (str, int, float, bytes, tuple, type(None))) and _literal(key):
            s += f"[{key!r}]"
        else:
            raise ValueError(f"cannot name the field {s or '<model>'}[{key!r}] in a file: "
                             f"use str or int keys for dicts that hold Params")
    return s


def _literal(key):
    try:
        return ast.literal_eval(repr(key)) == key
    except (ValueError, SyntaxError):
        return False


def _named_models(m):
    """``[(name, model)]`` of every model in the tree of ``m``, each once, ``m`` first."""
    return [(field_name(path), x) for path, x in walk(m) if is_model(x)]


def _params_by_name(m):
    """``{name: Param}``; two Params under one name is an error (it cannot be loaded right)."""
    out = {}
    for q, p in named_params(m):
        name = field_name(q)
        if name in out:
            raise ValueError(f"two Params would be stored as {name!r}: rename a field")
        out[name] = p
    return out


def _npz(path):
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


# -- save ------------------------------------------------------------------------

def save(path, m, opt=None):
    """Write every Param of ``m``, its recurrent state and, with ``opt``, the optimiser's
    state for those Params to ``path`` (``.npz`` is added when missing).

    In a distributed run (``fc.distributed``) only rank 0 writes: on any other
    rank ``save`` does nothing and returns None, so one script saves once.
    Call ``fc.distributed.barrier()`` after it before other ranks read the file.

    >>> import os, tempfile, numpy as np, flux_compile as fc
    >>> path = os.path.join(tempfile.mkdtemp(), "model")
    >>> m = fc.Dense(3, 2)
    >>> fc.save(path, m)
    >>> m2 = fc.load(path + ".npz", fc.Dense(3, 2))
    >>> bool(np.array_equal(m2.W.value, m.W.value))
    True
    """
    if not is_main():
        return
    arrays = dict(_param_arrays(m))
    meta = {"format": FORMAT, "states": [], "optimiser": None}
    for name, names, values in _states(m):
        meta["states"].append(name)
        for attr, value in zip(names, values):
            arrays[f"{STATE}{name}{'.' if name else ''}{attr}"] = np.asarray(value)
    if opt is not None:
        meta["optimiser"] = _describe(opt)
        arrays.update(_optimiser_arrays(m, opt))
    if meta["states"] or opt is not None:       # else the file holds only Params, as before
        arrays[META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    _write_atomically(_npz(path), arrays)


def _param_arrays(m):
    for name, p in _params_by_name(m).items():
        value = np.asarray(p.value)
        if value.dtype.kind not in "fc":
            raise TypeError(f"cannot save {name}: a Param holds float or complex numbers, "
                            f"this one {value.dtype}")
        yield name, value


def _states(m):
    """``[(model name, state names, values)]`` for the models whose state is not the initial one."""
    names_of = {id(x): name for name, x in _named_models(m)}
    out = []
    for x, state, *_ in snapshot_states(m):
        if state is not None:
            names = state_names(type(x))
            out.append((names_of[id(x)], names, [state[n] for n in names]))
    return out


def _describe(opt):
    return {"type": type(opt).__qualname__, "module": type(opt).__module__,
            "hyper": opt.settings(), "slots": list(opt.slots)}


def _optimiser_arrays(m, opt):
    for name, p in _params_by_name(m).items():
        entry = opt.state.get(p)
        if entry is None:
            continue
        yield f"{OPTIMISER}{name}/step", np.asarray(entry.step, dtype=np.int64)
        for slot, value in zip(opt.slots, entry.slots):
            yield f"{OPTIMISER}{name}/{slot}", np.asarray(value)


def _write_atomically(target, arrays):
    """The ``np.savez`` layout, written by hand (no field name can clash with savez's own
    arguments) to a temporary file of its own next to ``target``, synced, then renamed over it."""
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, value in arrays.items():
                    with zf.open(name + ".npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, value, allow_pickle=False)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _sync_directory(directory)


def _sync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:             # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- load ------------------------------------------------------------------------

def load(path, m, opt=None):
    """Read what :func:`save` wrote into ``m`` (and ``opt``) and return ``m``.

    Everything is checked first: a Param missing from the file or unexpected
    in it, a shape that differs, an entry that is not a float array (or a
    complex one for a real Param), recurrent state for a model or attribute
    that ``m`` lacks, and with ``opt`` its type and hyper-parameters and the
    shapes of its saved state. Any problem raises :class:`LoadError` listing
    all of them, and nothing has been changed. Otherwise values are converted
    to each Param's own dtype and installed all at once; the recurrent state
    becomes the saved one (the initial state where none was saved), and with
    ``opt`` its state for ``m``'s Params becomes the saved one. ``path`` may
    omit ``.npz``.

    >>> import os, tempfile, flux_compile as fc
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> fc.save(path, fc.Dense(3, 2))
    >>> try:
    ...     fc.load(path, fc.Dense(3, 4))                      # shapes differ: nothing changes
    ... except Exception as e:
    ...     print(type(e).__name__)
    LoadError
    """
    refuse_if_held(m, "fc.load", trainable_only=False)
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(_npz(path)):
        path = _npz(path)
    stored = _read(path)
    meta = _meta(path, stored)
    problems = []
    values = _check_params(m, stored, problems)
    states = _check_states(m, stored, meta, problems)
    opt_state = _check_optimiser(m, opt, stored, meta, problems) if opt is not None else None
    if problems:
        raise LoadError(path, problems)
    _install(values, states, opt, opt_state)
    return m


def _read(path):
    """``{name: array}`` of every entry; a clear :class:`LoadError` for anything but an npz."""
    if os.path.isdir(path):
        raise LoadError(path, ["it is a directory, not a file written by fc.save"])
    if not os.path.exists(path):
        raise FileNotFoundError(f"no file {path} (nor {_npz(path)}) to load")
    if os.path.getsize(path) == 0:
        raise LoadError(path, ["the file is empty (a save that never finished?)"])
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise LoadError(path, ["it is a single .npy array (np.save), not a .npz archive "
                               "written by fc.save"])
    if not zipfile.is_zipfile(path):
        raise LoadError(path, ["it is not a .npz (zip) archive; written by fc.save it would be "
                               "(truncated or another kind of file?)"])
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        raise LoadError(path, [f"the archive is damaged or holds something other than "
                               f"arrays ({type(e).__name__}: {e})"]) from None


def _meta(path, stored):
    raw = stored.pop(META, None)
    if raw is None:
        return {"format": 1, "states": [], "optimiser": None}      # Params only
    try:
        meta = json.loads(bytes(np.asarray(raw, dtype=np.uint8)).decode())
    except (ValueError, TypeError) as e:
        raise LoadError(path, [f"its {META} entry is damaged ({e})"]) from None
    if not isinstance(meta, dict) or meta.get("format", 0) > FORMAT:
        raise LoadError(path, [f"it was written by a newer flux_compile (format "
                               f"{meta.get('format') if isinstance(meta, dict) else '?'}); "
                               f"this one reads format {FORMAT}"])
    return meta


def _convert(what, stored, like, problems, exact_shape=True):
    """``stored`` as a new array in ``like``'s dtype, or None after noting why not."""
    if stored.dtype.kind not in "fc":
        problems.append(f"not a float array: {what} holds {stored.dtype} in the file")
        return None
    if stored.dtype.kind == "c" and like.dtype.kind != "c":
        problems.append(f"complex in the file: {what} is {stored.dtype} in the file, "
                        f"{like.dtype} in the model (the imaginary part would be lost)")
        return None
    if exact_shape and stored.shape != like.shape:
        problems.append(f"shape differs: {what} is {stored.shape} in the file, "
                        f"{like.shape} in the model")
        return None
    with np.errstate(over="ignore"):
        new = stored.astype(like.dtype, copy=True)
    if (np.isfinite(stored) & ~np.isfinite(new)).any():
        problems.append(f"out of range: {what} has values too large for {like.dtype}")
        return None
    return new


def _check_params(m, stored, problems):
    wanted = _params_by_name(m)
    values = []
    for name, p in wanted.items():
        if name not in stored:
            problems.append(f"missing in file: {name} (model shape {p.value.shape})")
            continue
        new = _convert(name, stored[name], p.value, problems)
        if new is not None:
            values.append((p, new))
    for name, value in stored.items():
        if name not in wanted and not name.startswith((STATE, OPTIMISER)):
            problems.append(f"unexpected in file: {name} (shape {value.shape})")
    return values


def _check_states(m, stored, meta, problems):
    """The snapshot to restore: every model's state from the file (None: initial)."""
    in_file = {k[len(STATE):]: v for k, v in stored.items() if k.startswith(STATE)}
    models = _named_models(m)
    saved = set(meta.get("states", []))
    snapshot, used = [], set()
    for name, x in models:
        if name not in saved:
            snapshot.append((x, None, None, None))  # the initial state, as when it was saved
            continue
        state = {}
        for attr in state_names(type(x)):
            key = f"{name}{'.' if name else ''}{attr}"
            used.add(key)
            if key not in in_file:
                problems.append(f"missing in file: the recurrent state {key}")
                continue
            initial = x.__dict__.get(attr)
            like = np.asarray(getattr(initial, "value", initial))
            new = _convert(f"the recurrent state {key}", in_file[key],
                           like if like.dtype.kind in "fc" else in_file[key], problems,
                           exact_shape=False)
            if new is not None:
                state[attr] = new
        snapshot.append((x, state, None, None))   # batch unknown: not checked until the next step
    for key in in_file:
        if key not in used:
            problems.append(f"unexpected in file: the recurrent state {key} (the model has "
                            f"no such model or state attribute)")
    for name in saved - {n for n, _ in models}:
        problems.append(f"unexpected in file: recurrent state for {name or '<model>'}, "
                        f"which the model does not have")
    return snapshot


def _check_optimiser(m, opt, stored, meta, problems):
    """``[(param, Entry or None)]`` to install in ``opt.state``."""
    saved = meta.get("optimiser")
    if saved is None:
        problems.append("no optimiser state in the file: it was saved without opt "
                        "(load without opt, or save with fc.save(path, m, opt))")
        return None
    ours = _describe(opt)
    if (saved["module"], saved["type"]) != (ours["module"], ours["type"]):
        problems.append(f"optimiser differs: the file holds the state of a {saved['type']}, "
                        f"this is a {ours['type']}")
        return None
    for name in sorted(set(saved["hyper"]) | set(ours["hyper"])):
        a, b = saved["hyper"].get(name), ours["hyper"].get(name)
        if not (a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)):
            problems.append(f"optimiser setting differs: {name} is {a!r} in the file, {b!r} here "
                            f"(make the optimiser as it was saved; change it after loading)")
    out = []
    wanted = _params_by_name(m)
    for name, p in wanted.items():
        key = f"{OPTIMISER}{name}/"
        if key + "step" not in stored:
            out.append((p, None))
            continue
        step = stored[key + "step"]
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            problems.append(f"optimiser step count of {name} is not a count: {step!r}")
            continue
        slots = []
        for slot in opt.slots:
            if key + slot not in stored:
                problems.append(f"missing in file: the optimiser's {slot} of {name}")
                continue
            new = _convert(f"the optimiser's {slot} of {name}", stored[key + slot], p.value,
                           problems)
            if new is not None:
                slots.append(new)
        if len(slots) == len(opt.slots):
            out.append((p, Entry(int(step), tuple(slots))))
    known = {f"{OPTIMISER}{n}/{s}" for n in wanted for s in ("step",) + tuple(opt.slots)}
    for name in stored:
        if name.startswith(OPTIMISER) and name not in known:
            problems.append(f"unexpected in file: {name}")
    return out


def _install(values, states, opt, opt_state):
    """Everything at once: references assigned, Ctrl-C held back until the last one."""
    records = [] if opt_state is None else [
        (p, None if entry is None else opt.state.record(p, entry)) for p, entry in opt_state]
    with interrupts_held():
        for p, value in values:
            p.value = value
        restore_states(states)
        for p, record in records:
            if record is None:
                opt.state.pop(p)
            else:
                opt.state.install(record)
