"""One emitter per array library: how generated NumPy-level code is spelled for NumPy,
PyTorch or JAX.

The rules, autodiff and passes work in NumPy terms; codegen writes NumPy source. An
:class:`Emitter` retargets that source (:func:`retarget`): every ``np.*`` call, every
``fc.*`` function and every kernel from ``flux_compile.rules`` is looked up in the
backend's table and respelled (``np.tanh`` -> ``torch.tanh`` / ``jnp.tanh``). A
primitive the table lacks is a :class:`CompileError` naming it. Functions of the
package written in NumPy terms (``fc.softmax``, ``unbroadcast``...) without a
backend kernel of their own are *ported*: the same function run with ``np`` bound
to the backend's NumPy-like namespace.

torch code runs torch kernels on tensors with ``requires_grad`` False (the gradient
is the generated backward, no tape); JAX code never writes into an array: a
gradient accumulation ``self.W.grad += g`` becomes ``self.W.grad = self.W.grad + g``.
torch and JAX are imported only when their emitter is first used.
"""
from __future__ import annotations

import ast
import builtins
import inspect
import re
import types

import numpy as np

from .errors import CompileError, Retrace
from .torchnumpy import TORCH_DIRECT, TorchNumpy, _dims  # noqa: F401

BACKENDS = ("numpy", "torch", "jax")


class BackendMissing(ImportError):
    """The array library of a backend is not installed."""


def _pkg_module(obj):
    mod = getattr(obj, "__module__", None) or ""
    return mod if mod.startswith("flux_compile") else None


class Emitter:
    """How one array library spells the primitives of generated code.

    ``direct``: NumPy names the library has with NumPy's signature (spelled
    ``<prefix>.name``); ``shim``: the library's NumPy-like namespace (for
    everything else, and for ported functions); ``kernels``: the library's own
    versions of package functions, by name; ``fc_direct``: ``fc.*`` functions with a
    library spelling."""

    name = "numpy"
    prefix = "np"
    pure = False                 # gradient accumulation returned, never written in place

    def __init__(self):
        self._ported = {}

    # -- the tables -------------------------------------------------------------
    def namespace(self):
        """Module globals every generated module of this backend starts from."""
        return {"np": np, "Retrace": Retrace}

    def header(self):
        return ["import numpy as np"]

    def np_name(self, dotted):
        """Spelling of ``np.<dotted>`` (``"linalg.inv"``), or None when the library lacks it."""
        return "np." + dotted

    def fc_name(self, name, obj):
        return None

    def kernel(self, name, obj):
        """(spelling, object) for a package function bound in generated code under ``name``."""
        return name, obj

    def convert_constant(self, value):
        return value

    # -- porting ------------------------------------------------------------------
    def np_namespace(self):
        return np

    def port(self, fn):
        """``fn`` (a package function in NumPy terms) with ``np`` bound to the backend's
        NumPy-like namespace; the package functions it calls ported the same way."""
        if fn in self._ported:
            return self._ported[fn]
        if not inspect.isfunction(fn) or not _pkg_module(fn):
            return fn
        glob = dict(fn.__globals__)
        ported = types.FunctionType(fn.__code__, glob, fn.__name__, fn.__defaults__, fn.__closure__)
        ported.__kwdefaults__ = fn.__kwdefaults__
        ported.__doc__ = fn.__doc__
        self._ported[fn] = ported
        glob["np"] = self.np_namespace()
        for key, value in list(glob.items()):
            if inspect.isfunction(value) and _pkg_module(value) and key in fn.__code__.co_names:
                glob[key] = self.kernel(key, value)[1] if self.has_kernel(key) else self.port(value)
        return ported

    def has_kernel(self, name):
        return False


NUMPY = Emitter()


class TableEmitter(Emitter):
    """An emitter with a table of kernels (``self.kernels``); a package function the table
    lacks is ported (run with ``np`` bound to the backend's namespace)."""

    def has_kernel(self, name):
        return name in self.kernels

    def kernel(self, name, obj):
        if name in self.kernels:
            return name, self.kernels[name]
        special = self.special_kernel(name, obj)
        return name, special if special is not None else self.port(obj)

    def special_kernel(self, name, obj):
        """A kernel built for this backend from the NumPy one, or None."""
        if name == "matmul_grad_b":
            return _flat_matmul_grad_b(self.port(obj))
        return None


# ------------------------------------------------------------------------------ torch

class TorchEmitter(TableEmitter):
    name = "torch"
    prefix = "torch"

    def __init__(self, device="cpu"):
        super().__init__()
        try:
            import torch
        except ImportError as e:
            raise BackendMissing("the torch backend needs PyTorch: pip install flux_compile[torch]") from e
        self.torch = torch
        self.device = torch.device(device)
        self.tnp = TorchNumpy(torch, self.device)
        self.kernels = torch_kernels(torch, self.tnp)

    def namespace(self):
        return {"torch": self.torch, "tnp": self.tnp, "Retrace": Retrace}

    def header(self):
        return ["import torch",
                "# tnp: flux_compile's NumPy-signature functions in torch (flux_compile.emitters.TorchNumpy)"]

    def np_namespace(self):
        return self.tnp

    def np_name(self, dotted):
        if dotted in TORCH_DIRECT:
            return "torch." + dotted
        if "." not in dotted and dotted in dir(TorchNumpy) + ["float32", "float64", "newaxis", "pi", "e",
                                                               "inf", "nan"]:
            return "tnp." + dotted
        return None

    def fc_name(self, name, obj):
        return {"sigmoid": "torch.sigmoid", "relu": "torch.relu", "σ": "torch.sigmoid"}.get(name)

    def special_kernel(self, name, obj):
        if name == "extremum_mask":
            return self._extremum_mask()
        return super().special_kernel(name, obj)

    def _extremum_mask(self):
        """Where ``a`` attains its reduced extremum ``y``, ties sharing equally (torch dtypes)."""
        from .rules.helpers import normalize_axis, restore_axes
        restore, torch = self.port(restore_axes), self.torch

        def extremum_mask(a, y, axis=None, keepdims=False):
            hit = a == restore(y, tuple(a.shape), axis, keepdims)
            count = torch.sum(hit, dim=tuple(normalize_axis(axis, a.ndim)), keepdim=True)
            return (hit / count).to(a.dtype if a.is_floating_point() else torch.float64)
        return extremum_mask

    def convert_constant(self, value):
        if isinstance(value, np.ndarray):
            return self.torch.as_tensor(value, device=self.device)
        return value


def torch_kernels(torch, tnp):
    """torch versions of the package kernels whose NumPy code writes into arrays or calls
    array methods torch spells differently."""

    def unbroadcast(g, shape):
        shape = tuple(shape)
        if tuple(g.shape) == shape:
            return g
        extra = g.ndim - len(shape)
        if extra > 0:
            g = g.sum(dim=tuple(range(extra)))
        elif extra < 0:
            return torch.broadcast_to(g, shape).clone()
        ones = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
        if ones:
            g = g.sum(dim=ones, keepdim=True)
        if tuple(g.shape) != shape:
            g = torch.broadcast_to(g, shape).clone()
        return g

    def sum_grad(g, shape, axis=None, keepdims=False):
        from .rules.helpers import normalize_axis
        if not keepdims and axis is not None:
            for a in sorted(normalize_axis(axis, len(shape))):
                g = g.unsqueeze(a)
        elif not keepdims:
            g = g.reshape((1,) * len(shape))
        return torch.broadcast_to(g, tuple(shape)).clone()

    def getitem_grad(g, shape, index, dtype=None):
        from .rules.helpers_shape import _is_basic_index
        out = torch.zeros(tuple(shape), dtype=g.dtype if dtype is None else tnp.dtype(dtype), device=g.device)
        if _is_basic_index(index):
            out[index] = g
            return out
        # advanced indexing: repeated indices add up (np.add.at), by flat positions
        where = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(tuple(shape))[index]
        positions = torch.as_tensor(where.reshape(-1), device=g.device)
        out.view(-1).index_add_(0, positions, torch.broadcast_to(g, where.shape).reshape(-1).to(out.dtype))
        return out

    def stack_grads(dxs, xs):
        if any(d is None for d in dxs):
            return None
        return torch.stack(dxs, dim=1).to(xs.dtype) if xs.is_floating_point() else None

    def conv2d(x, W, stride=1, padding=0):
        return torch.nn.functional.conv2d(x, W, stride=stride, padding=padding)

    def conv2d_grad_x(dy, W, shape, stride, padding):
        return torch.nn.grad.conv2d_input(tuple(int(n) for n in shape), W, dy, stride=stride, padding=padding)

    def conv2d_grad_w(dy, x, shape, stride, padding):
        return torch.nn.grad.conv2d_weight(x, tuple(int(n) for n in shape), dy, stride=stride, padding=padding)

    def maxpool2d(x, k, stride=None):
        return torch.nn.functional.max_pool2d(x, k, stride=k if stride is None else stride)

    def maxpool2d_grad(dy, x, k, stride):
        # each window's adjoint to its first maximum, as the NumPy kernel and PyTorch
        _, idx = torch.nn.functional.max_pool2d(x, k, stride=k if stride is None else stride, return_indices=True)
        out = torch.zeros_like(x).flatten(2)
        out.scatter_add_(2, idx.flatten(2), dy.flatten(2))
        return out.reshape(x.shape)

    def avgpool2d(x, k, stride=None):
        return torch.nn.functional.avg_pool2d(x, k, stride=k if stride is None else stride)

    return {"unbroadcast": unbroadcast, "sum_grad": sum_grad, "getitem_grad": getitem_grad,
            "stack_grads": stack_grads, "conv2d": conv2d, "conv2d_grad_x": conv2d_grad_x,
            "conv2d_grad_w": conv2d_grad_w, "maxpool2d": maxpool2d, "maxpool2d_grad": maxpool2d_grad,
            "avgpool2d": avgpool2d,
            "inplace_result": _inplace_kernel(torch.Tensor, torch.can_cast, lambda r, d: r.to(d))}


# ------------------------------------------------------------------------------ JAX

class JaxEmitter(TableEmitter):
    name = "jax"
    prefix = "jnp"
    pure = True

    def __init__(self):
        super().__init__()
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as e:
            raise BackendMissing("the JAX backend needs JAX: pip install flux_compile[jax]") from e
        self.jax, self.jnp = jax, jnp
        self.kernels = jax_kernels(jax, jnp)

    def namespace(self):
        return {"jnp": self.jnp, "jax": self.jax, "Retrace": Retrace}

    def header(self):
        return ["import jax", "import jax.numpy as jnp"]

    def np_namespace(self):
        return self.jnp

    def np_name(self, dotted):
        obj = self.jnp
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return "jnp." + dotted

    def fc_name(self, name, obj):
        return {"relu": "jax.nn.relu"}.get(name)


    def convert_constant(self, value):
        if isinstance(value, np.ndarray):
            return self.jnp.asarray(value)
        return value


def jax_kernels(jax, jnp):
    """JAX versions of the package kernels whose NumPy code writes into arrays."""

    def getitem_grad(g, shape, index, dtype=None):
        pads = _slice_pads(index, tuple(shape))
        if pads is not None:        # contiguous slices: a pad, which XLA fuses (a scatter it does not)
            return jnp.pad(g.astype(g.dtype if dtype is None else dtype), pads)
        return jnp.zeros(tuple(shape), dtype=g.dtype if dtype is None else dtype).at[index].add(g)

    def stack_grads(dxs, xs):
        if any(d is None for d in dxs):
            return None
        return jnp.stack(dxs, axis=1).astype(xs.dtype) if jnp.issubdtype(xs.dtype, jnp.floating) else None

    def conv2d(x, W, stride=1, padding=0):
        s, p = _pair(stride), _pair(padding)
        return jax.lax.conv_general_dilated(x, W, s, [(p[0], p[0]), (p[1], p[1])])

    def conv2d_grad_x(dy, W, shape, stride, padding):
        _, vjp = jax.vjp(lambda x: conv2d(x, W, stride, padding), jnp.zeros(tuple(shape), dy.dtype))
        return vjp(dy)[0]

    def conv2d_grad_w(dy, x, shape, stride, padding):
        _, vjp = jax.vjp(lambda W: conv2d(x, W, stride, padding), jnp.zeros(tuple(shape), dy.dtype))
        return vjp(dy)[0]

    def maxpool2d(x, k, stride=None):
        (kh, kw), (sh, sw) = _pair(k), _pair(k if stride is None else stride)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, kh, kw), (1, 1, sh, sw), "VALID")

    def maxpool2d_grad(dy, x, k, stride):
        _, vjp = jax.vjp(lambda x: maxpool2d(x, k, stride), x)
        return vjp(dy)[0]

    def avgpool2d(x, k, stride=None):
        (kh, kw), (sh, sw) = _pair(k), _pair(k if stride is None else stride)
        s = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, (1, 1, kh, kw), (1, 1, sh, sw), "VALID")
        return s / (kh * kw)

    return {"getitem_grad": getitem_grad, "stack_grads": stack_grads, "conv2d": conv2d,
            "conv2d_grad_x": conv2d_grad_x, "conv2d_grad_w": conv2d_grad_w, "maxpool2d": maxpool2d,
            "maxpool2d_grad": maxpool2d_grad, "avgpool2d": avgpool2d,
            "inplace_result": _inplace_kernel(jax.Array, lambda a, b: jnp.can_cast(a, b, casting="same_kind"),
                                              lambda r, d: r.astype(d))}


def _inplace_kernel(array_type, can_cast, cast):
    """``inplace_result`` (rules.helpers) for a backend: its array type, same_kind test and cast."""
    def inplace_result(r, target):
        if not isinstance(target, array_type):
            return r
        if tuple(r.shape) != tuple(target.shape):
            raise ValueError(f"non-broadcastable output operand with shape {tuple(target.shape)} doesn't "
                             f"match the broadcast shape {tuple(r.shape)}")
        if not can_cast(r.dtype, target.dtype):
            raise TypeError(f"Cannot cast {r.dtype} to {target.dtype} with casting rule 'same_kind'")
        return cast(r, target.dtype)
    return inplace_result


def _flat_matmul_grad_b(general):
    """``matmul_grad_b`` with one GEMM when a batch of rows meets a matrix (``x @ W`` with
    ``x`` (B, T, k)): ``x`` flattened to (B*T, k), instead of B products summed after."""
    def matmul_grad_b(g, a, b_shape):
        if len(b_shape) == 2 and a.ndim > 2 and g.ndim == a.ndim:
            return a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
        return general(g, a, b_shape)
    return matmul_grad_b


def _slice_pads(index, shape):
    """``[(before, after)]`` per axis when ``index`` is contiguous slices only, else None."""
    index = index if isinstance(index, tuple) else (index,)
    if len(index) > len(shape) or not all(isinstance(i, slice) for i in index):
        return None
    pads = []
    for i, n in enumerate(shape):
        start, stop, step = (index[i] if i < len(index) else slice(None)).indices(n)
        if step != 1:
            return None
        stop = max(stop, start)
        pads.append((start, n - stop))
    return pads


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# ------------------------------------------------------------------------------ retargeting

_EMITTERS = {}


def emitter(name, device=None):
    """The emitter of backend ``name`` ("numpy", "torch", "jax"); one per (name, device)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    key = (name, str(device) if device is not None else None)
    if key not in _EMITTERS:
        _EMITTERS[key] = NUMPY if name == "numpy" else \
            TorchEmitter(device or "cpu") if name == "torch" else JaxEmitter()
    return _EMITTERS[key]


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Retarget(ast.NodeTransformer):
    def __init__(self, em, objects, label):
        self.em, self.objects, self.label = em, objects, label
        self.namespace = em.namespace()
        self.missing = []

    def lacks(self, what):
        if what not in self.missing:
            self.missing.append(what)
        return ast.Name(id="_missing_", ctx=ast.Load())

    def visit_Attribute(self, node):
        dotted = _dotted(node)
        if dotted and dotted.startswith("np."):
            spelled = self.em.np_name(dotted[3:])
            return _expr(spelled) if spelled else self.lacks(dotted)
        if dotted and dotted.startswith("fc.") and dotted.count(".") == 1:
            fn = getattr(self.objects.get("fc"), dotted[3:], None)
            spelled = self.em.fc_name(dotted[3:], fn)
            if spelled:
                return _expr(spelled)
            if fn is None:
                return self.lacks(dotted)
            name = "fc_" + dotted[3:]
            self.namespace[name] = self.em.port(fn)
            return ast.Name(id=name, ctx=ast.Load())
        self.generic_visit(node)
        return node

    def visit_Name(self, node):
        name = node.id
        if name in self.objects and name not in ("np", "fc", "Retrace") and name not in self.namespace:
            obj = self.objects[name]
            if callable(obj) and _pkg_module(obj):
                self.namespace[name] = self.em.kernel(name, obj)[1]
            elif callable(obj) and not isinstance(obj, np.ndarray):
                if getattr(builtins, name, None) is not obj:
                    self.lacks(f"{name} ({getattr(obj, '__module__', '?')})")
                    return node
            else:
                self.namespace[name] = self.em.convert_constant(obj)
        return node

    def visit_Assign(self, node):
        if _is_kept_buffers(node.value, self.objects):      # the NumPy module's Buffers: not here
            return None
        self.generic_visit(node)
        return node

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "matmul" and isinstance(f.value, ast.Name) \
                and f.value.id not in self.objects and len(node.args) == 3 and not node.keywords:
            # buffers.matmul(key, a, b): a @ b written into a kept NumPy array; here a @ b
            return self.visit(ast.BinOp(left=node.args[1], op=ast.MatMult(), right=node.args[2]))
        node = _without_buffer(node)
        if not isinstance(node, ast.Call):
            return self.visit(node)
        self.generic_visit(node)
        f = node.func
        if self.em.name == "torch" and isinstance(f, ast.Attribute) and f.attr in ("astype", "copy"):
            if f.attr == "astype":
                return ast.Call(func=_expr("tnp.astype"), args=[f.value] + node.args, keywords=node.keywords)
            return ast.Call(func=ast.Attribute(value=f.value, attr="clone", ctx=ast.Load()), args=[], keywords=[])
        return node

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        if self.em.pure and isinstance(node.target, ast.Attribute):
            load = ast.Attribute(value=node.target.value, attr=node.target.attr, ctx=ast.Load())
            return ast.Assign(targets=[node.target], value=ast.BinOp(left=load, op=node.op, right=node.value))
        return node


def _is_kept_buffers(value, objects):
    from .buffers import Buffers
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
        and objects.get(value.func.id) is Buffers


_ARITHMETIC = {"add": ast.Add, "subtract": ast.Sub, "multiply": ast.Mult, "divide": ast.Div}


def _without_buffer(node):
    """The NumPy code's buffer reuse undone (``np.tanh(z, out=z)`` is ``np.tanh(z)``;
    ``np.add(a, b, out=reuse(a, b))`` is ``a + b``): torch and JAX arrays manage their own
    memory, and JAX has no ``out=``."""
    if not any(k.arg == "out" for k in node.keywords):
        return node
    keywords = [k for k in node.keywords if k.arg != "out"]
    f = node.func
    if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "np"
            and f.attr in _ARITHMETIC and len(node.args) == 2 and not keywords):
        return ast.BinOp(left=node.args[0], op=_ARITHMETIC[f.attr](), right=node.args[1])
    return ast.Call(func=node.func, args=node.args, keywords=keywords)


def _expr(text):
    return ast.parse(text, mode="eval").body


_COMMENT = re.compile(r"^(\s+)#(.*)$")
_MARKER = re.compile(r"""^(\s*)(?:'|\"\"\")@@C (\d+)@@(?:'|\"\"\")$""")


def retarget(source, objects, em, label):
    """``(source, namespace)``: NumPy generated ``source`` (whose module globals are
    ``objects``) spelled for emitter ``em``. A primitive the backend lacks is a
    CompileError naming it."""
    if em is NUMPY:
        return source, dict(objects)
    lines = source.splitlines()
    head = [line for line in lines if line.startswith("#") and not line.startswith("# bound by")]
    comments, body = [], []
    for line in lines:
        if line.startswith(("import ", "from ", "#")):
            continue
        m = _COMMENT.match(line)
        if m:                       # a comment in a body: kept through the AST as a string statement
            comments.append(m.group(2))
            line = f"{m.group(1)}'@@C {len(comments) - 1}@@'"
        body.append(line)
    tree = ast.parse("\n".join(body))
    rt = _Retarget(em, objects, label)
    tree = ast.fix_missing_locations(rt.visit(tree))
    if rt.missing:
        raise CompileError(f"the {em.name} backend has no kernel for {', '.join(rt.missing)} "
                           f"(used by the generated code of {label})",
                           hint=f"run this model on NumPy (fc.to(m, 'numpy')), or add the primitive to "
                                f"flux_compile/emitters.py's {em.name} table")
    out = []
    for line in ast.unparse(tree).splitlines():
        m = _MARKER.match(line)
        if line.startswith("def ") and out:
            out.append("")
        out.append(f"{m.group(1)}#{comments[int(m.group(2))]}" if m else line)
    head = [c.replace("flux_compile", f"flux_compile ({em.name} backend)", 1) if c.startswith("# generated")
            else c for c in head]
    text = "\n".join(head[:1] + em.header() + head[1:]) + "\n\n" + "\n".join(out) + "\n"
    return text, rt.namespace


__all__ = ["BACKENDS", "BackendMissing", "Emitter", "TorchEmitter", "JaxEmitter", "emitter", "retarget"]
