"""``Compiled``: the generated functions of one model class (or function) for one structure.

One constructor, :meth:`Compiled.__init__`, used by every producer: the pipeline
(``compiler.build``), the disk cache (``cache``) and templates such as
``fc.unroll``'s time loop (``sequences``). Everything it holds is set there, so no
producer assembles one by hand.
"""
from __future__ import annotations

from .errors import ModelError, called_submodel, error_message, model_error_type
from .guards import compile_checks, compile_reader
from .sourceimports import BOUND_NOTE, section_imports

FUNCTIONS = ("forward", "forward_train", "backward", "backward_params")


def _always(root, args):
    return True


def _nothing(root, args):
    return ()


def sections(source):
    """Split the module text into its functions (for ``fc.source(m, which)``). Each one
    shown alone runs as shown: it starts with the import lines of the names it reads;
    ``forward`` also with the header's comments."""
    out, cur, header = {}, None, []
    for line in source.splitlines(True):
        if line.startswith("def "):
            cur = line[4:line.index("(")]
            out[cur] = [line]
            continue
        if cur is None:
            header.append(line)
        else:
            out[cur].append(line)
    comments = [line for line in header if line.startswith("#") and not line.startswith(BOUND_NOTE)]
    shown = {}
    for k, v in out.items():
        body = "".join(v).rstrip("\n") + "\n"
        top = (comments if k == "forward" else []) + section_imports(header, body)
        shown[k] = "".join(top) + ("\n" if top else "") + body
    return shown


def inlined_owner(loc):
    """``self.fc1: Dense.forward`` for a line of an inlined sub-model's forward, else None."""
    owner = getattr(loc, "owner", "") or ""
    return owner if ": " in owner else None


def _class_of(loc, root):
    """The model class whose forward ``loc`` is in: ``Dense`` for ``self.fc1: Dense.forward``."""
    owner = inlined_owner(loc)
    if owner is None:
        return root
    name = owner.partition(": ")[2].rpartition("<locals>.")[2]
    return name[:-len(".forward")] if name.endswith(".forward") else name


def inlined_frames(loc, root, direction):
    """The model trace of a line of an inlined sub-model, as if each model had run its own
    code: the sub-model's line first, then each caller's line naming the sub-model it called."""
    frames = [(f"{_class_of(loc, root)} ({direction})", f"{loc.filename}:{loc.lineno}", loc.text)]
    while loc.via:
        expr, caller = loc.via
        frames.append((f"{_class_of(caller, root)} ({direction})", f"{caller.filename}:{caller.lineno}",
                       f"{caller.text}  [{expr}]"))
        loc = caller
    return frames


_split_sections = sections      # the constructor's ``sections=`` keyword hides the name there


class Compiled:
    """Generated functions of one model class (or function) for one structure.

    ``namespace`` is the executed module (it holds ``forward`` and, for a model or
    ``fc.grad``, ``forward_train``, ``backward`` and ``backward_params``); ``source`` its text, ``filename`` the name it
    was compiled under and ``linemap`` its line -> user statement map."""

    def __init__(self, label, owner, namespace, source, filename, *, linemap=None, n_outputs=None,
                 input_names=(), state_names=(), graph=None, train_graph=None, deps=(),
                 guarded=False, from_disk=False, rebuild=None, inlined=(), objects=None,
                 step_model=None, source_hash=None, sections=None):
        self.label = label
        self.owner = owner
        self.forward = namespace["forward"]
        self.forward_train = namespace.get("forward_train")   # a transform's module (fc.jvp) has
        self.backward = namespace.get("backward")             # only the function it is for
        self.backward_params = namespace.get("backward_params")   # the backward without input gradients
        self.source = source
        self._sections = None if sections is None else dict(sections)    # made when first shown
        self.filename = filename
        self.linemap = dict(linemap or {})
        self.n_outputs = n_outputs     # None: one output; k: a tuple of k
        self.input_names = list(input_names)
        self.state_names = list(state_names)  # recurrent state: extra inputs after the user's, outputs after
        self.graph = graph             # the inference graph
        self.train_graph = train_graph  # the joint (forward + backward) graph
        self.deps = list(deps)         # (namespace, name, function) looked up while compiling
        self.guarded = guarded         # has guards: other variants may exist for other paths
        self.from_disk = from_disk
        self.rebuild = rebuild         # re-runs the pipeline (for the graph of a disk-cache hit)
        self.inlined = list(inlined)   # functions inlined into the code (the disk cache checks them)
        self.namespace_objects = dict(objects or {})   # the objects the generated module names
        self.step_model = step_model   # a template's step model (fc.unroll), shown by fc.source
        self.hash = source_hash        # sha256 of the user's source it was built from
        self.alternatives = [self]
        self.guards = []               # (path, kind, expected): see guards.py
        self.free_paths = []           # paths of the arrays read at run time (extra inputs, in order)
        self.check = _always
        self.read_free = _nothing      # read_free(root, args) -> the values of the extra inputs

    @property
    def sections(self):
        """The module's functions, each shown alone (``fc.source(m, which)``)."""
        if self._sections is None:
            self._sections = _split_sections(self.source)
        return self._sections

    def show_as(self, other):
        """Show ``other``'s module and map errors by its lines: a wrapper's text follows the
        generated module that ran last (``fc.unroll``'s one per state shape, unrolled.py)."""
        self.source, self.filename, self.linemap = other.source, other.filename, dict(other.linemap)
        self.graph, self.train_graph, self._sections = other.graph, other.train_graph, None

    def set_guards(self, baked, free_paths):
        """Guards as ``{(path, kind): expected}``; arrays at ``free_paths`` are extra inputs."""
        identity = {path for path, kind in baked if kind == "is"}     # implies the same code
        self.guards = [(path, kind, expected) for (path, kind), expected in baked.items()
                       if not (kind == "code" and path in identity)]
        self.free_paths = list(free_paths)
        self.check = compile_checks(self.guards)
        self.read_free = compile_reader(self.free_paths)

    def current(self, root=None, args=()):
        """False once a function the code was built from has been redefined, or (given the
        root: the model instance or the function) once a value it baked in has changed."""
        for ns, name, fn in self.deps:
            if ns.get(name) is not fn:
                return False
        return root is None or self.check(root, args)

    # -- errors inside generated code -------------------------------------------
    def translate(self, exc, direction="forward"):
        """Re-raise ``exc`` as a ModelError naming the user's statement, or return None."""
        tb = exc.__traceback__
        lineno = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.filename:
                lineno = tb.tb_lineno
            tb = tb.tb_next
        if lineno is None or not self.linemap:
            return None
        loc = self.linemap.get(lineno)
        if loc is not None and loc.via:
            frames = inlined_frames(loc, self.owner, direction)
        else:
            where = f"{loc.filename}:{loc.lineno}" if loc else f"{self.filename}:{lineno}"
            text = loc.text if loc else ""
            callee = called_submodel(self.filename, lineno)   # which layer, when the line calls one
            frames = [(f"{self.owner} ({direction})", where, f"{text}  [{callee}]" if callee else text)]
        if isinstance(exc, ModelError):
            exc.trace.extend(frames)
            return exc
        cls = model_error_type(type(exc))
        try:
            new = cls(error_message(exc), frames)
        except Exception:
            new = ModelError(f"{type(exc).__name__}: {exc}", frames)
        return new
