"""The one naming policy of generated source: every identifier codegen writes is made here.

Generated code is read by people, so names come from the user's: a variable ``h``
stays ``h`` (``h_1`` when ``h`` is assigned again), its adjoint is ``dh``, a
sub-model's output ``first_out`` and its pullback ``first_back``. Generated code
is also run, so a name may never capture another: the adjoint of an input ``y``
must not overwrite the backward's seed ``dy``, a user variable ``np`` must not
hide NumPy, a user function named ``backward`` must not be replaced by the
generated ``def backward``. Both needs are met here, once.

Vocabulary
----------
*module names*
    bound in the generated module's namespace: the fixed ``np``, ``fc`` and
    ``Retrace``; the generated functions (``forward``, ``forward_train``,
    ``backward``, ``backward_params``); every helper, derivative-rule kernel,
    constant array or builtin the code refers to (``sum_grad``, ``unbroadcast``,
    ``slice``...). :meth:`ModuleNames.module_name` gives them.
*scope*
    the names of function bodies that share locals. One scope per generated
    function, except that the training forward and both backwards share one: a
    value the forward saves keeps its name in the backward (``h, t = saved``).
    :meth:`ModuleNames.scope` opens one.
*parameters*
    a scope's first names, taken in signature order (``self``, the inputs, the
    recurrent state; then the backward's ``saved`` and seed ``dy``), before any
    local. So a parameter keeps the user's name whenever it can, and a local that
    wants the same name gets a fresh one.

Invariants (tests/test_naming.py checks them on hostile programs)
-----------------------------------------------------------------
1. Within a scope, no name is given twice: a parameter is never assigned, a
   saved value never overwrites ``saved`` or ``dy``, two values never share a name.
2. No parameter or local of any scope equals a module name, and no module name
   equals a parameter or local of any scope, whichever is asked for first: a
   local never shadows a global the code reads, a global never hides a local.
   A builtin the code calls (``slice``) is bound as a module name like the rest,
   so a user's variable ``slice`` costs the builtin an alias (``slice_1``), not
   correctness.
3. A name is a valid identifier and never a keyword: a hint is sanitised first
   (non-word characters become ``_``, a leading digit gets ``v``, a keyword gets a
   trailing ``_``).
4. A taken name gets the first free variant ``hint_1``, ``hint_2``, ... of its
   hint: names depend only on the hints and the order they are asked for, which
   follows the graph, so the same program always prints the same text.
5. Derived names are built from their base's hint by the functions below:
   :func:`adjoint` (``x`` -> ``dx``; ``dz`` for an unnamed value), :func:`seed`
   (``dy``; ``dy0``, ``dy1`` for several outputs), :func:`output` (``y``,
   ``y1``...), :func:`model_output` (``first_out``, ``layer0_out``),
   :func:`pullback` (``first_out`` -> ``first_back``), :func:`attribute`
   (``x_shape``), :func:`part` (``dz_0``), :func:`temporary` (``t_h``: an unnamed
   value feeding ``h``, see :func:`fed_variables`), :func:`partial` (``dh_part``: one
   contribution to ``dh``), :data:`TEMP` (``t``). An unnamed value's adjoint is the
   adjoint of its hint (``dfc1_out``, ``dt_h``).
   They are hints: invariants 1-4 still decide the final name.

>>> module = ModuleNames()
>>> train = module.scope()
>>> train.params(["self", "y"]) + train.params([SAVED, seed(0, 1)])   # forward_train, backward
['self', 'y', 'saved', 'dy']
>>> train.fresh(adjoint("y"))                            # the adjoint of y: not the seed
'dy_1'
>>> module.module_name("dy")                             # a helper called dy: not a local
'dy_2'
>>> module.module_name("np"), train.fresh("np")
('np_1', 'np_2')
"""
from __future__ import annotations

import keyword
import re

FIXED = ("np", "fc", "Retrace")
FUNCTIONS = ("forward", "forward_train", "backward", "backward_params")
TEMP = "t"


def identifier(hint):
    """``hint`` as a valid, non-keyword identifier (invariant 3)."""
    name = re.sub(r"\W", "_", str(hint or TEMP))
    if name[0].isdigit():
        name = "v" + name
    if keyword.iskeyword(name) or name in ("None", "True", "False", "__builtins__"):
        name += "_"
    return name


def steps(hint):
    """The list a loop's training forward appends each trip's saved values to: ``h_steps``."""
    return f"{hint}_steps"


def taken(hint):
    """What a cond region's training forward saves for its backward: the taken branch's
    values, ``y_taken`` (the branch itself is known from the saved test)."""
    return f"{hint}_taken"


def adjoint(hint):
    """The adjoint's hint: ``d`` + the value's hint (Tangent's convention); ``dz`` if unnamed."""
    return "d" + hint if hint else "dz"


def temporary(fed):
    """Hint of an unnamed value that feeds the user's variable ``fed``: ``t_h`` (``t`` when it
    feeds none)."""
    return f"{TEMP}_{fed}" if fed else TEMP


def partial(adjoint_hint):
    """Hint of one contribution to an adjoint that is summed from several: ``dh_part``."""
    return f"{adjoint_hint}_part"


def fed_variables(nodes):
    """``{node id: name}``: for each unnamed node of ``nodes`` (in program order), the name
    of the variable it feeds, through other unnamed nodes; the earliest consumer decides.
    Variables are the user's (``h``) and adjoints (``dh``), not names the compiler made up
    for anything else (``meta["anon"]``: an output's ``y``, a partial's ``dh_part``)."""
    fed = {}
    for n in reversed(nodes):
        named = n.name and (not n.meta.get("anon") or n.meta.get("adjoint"))
        mine = n.name if named else fed.get(n.id)
        if mine is None:
            continue
        for a in n.inputs():
            if not a.name:
                fed[a.id] = mine
    return fed


def tangent(hint):
    """The tangent's hint (forward mode): ``x`` -> ``x_dot`` (JAX's convention); ``z_dot`` if
    unnamed. Not ``tx``: ``t`` is the temporary's hint, and ``dx`` is the adjoint."""
    return f"{hint}_dot" if hint else "z_dot"


def part(hint, i):
    """Hint of item ``i`` of a tuple-valued value (the adjoint of ``h, c = ...``'s pack: ``dz_0``)."""
    return f"{hint}_{i}"


def attribute(hint, attr):
    """Hint of ``x.shape`` and the like: ``x_shape``."""
    return f"{hint}_{attr}"


def seed(i, n):
    """Hint of the backward's seed for output ``i`` of ``n``: ``dy``, or ``dy0``, ``dy1``..."""
    return "dy" if n == 1 else f"dy{i}"


SEEDS = "dy"        # hint of the backward's parameter holding the seed(s)
SAVED = "saved"     # hint of the backward's parameter holding the saved values
SELF = "self"       # hint of a model method's first parameter


def output(i, n):
    """Hint of an otherwise unnamed output ``i`` of ``n``: ``y``, or ``y1``, ``y2``..."""
    return "y" if n == 1 else f"y{i + 1}"


def model_output(last):
    """Hint of a sub-model call's output: ``first_out``; ``layer0_out`` for ``self.layers[0]``."""
    return f"layer{last}_out" if isinstance(last, int) else f"{last}_out"


def pullback(hint):
    """Hint of a sub-model call's pullback closure: ``first_out`` -> ``first_back``."""
    return hint.removesuffix("_out") + "_back"


def _variants(hint):
    base = identifier(hint)
    yield base
    i = 1
    while True:
        yield f"{base}_{i}"
        i += 1


class ModuleNames:
    """All names of one generated module: its module names and the names of every scope."""

    def __init__(self):
        self.module = set(FIXED) | set(FUNCTIONS) | {"__builtins__"}
        self.local = set()          # every parameter and local of every scope

    def module_name(self, hint):
        """A fresh module name from ``hint``, free in the module and in every scope."""
        name = next(v for v in _variants(hint) if v not in self.module and v not in self.local)
        self.module.add(name)
        return name

    def scope(self):
        """A new scope (the names of one function, or of functions that share locals)."""
        return Scope(self)


class Scope:
    """Parameters and locals of one scope; every name is fresh in the scope and the module."""

    def __init__(self, module):
        self.module = module
        self.used = set()

    def fresh(self, hint):
        """A new name from ``hint``: the hint itself when free, else ``hint_1``, ``hint_2``..."""
        taken = self.module.module
        name = next(v for v in _variants(hint) if v not in self.used and v not in taken)
        self.used.add(name)
        self.module.local.add(name)
        return name

    def params(self, hints):
        """Names for a signature, in order (call before any local of the scope)."""
        return [self.fresh(h) for h in hints]
