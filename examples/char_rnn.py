"""A character-level language model: two LSTM layers trained with truncated backprop through time.

    python examples/char_rnn.py                          # 3 minutes on stdlib docstrings (offline)
    python examples/char_rnn.py --text input.txt --minutes 30 --plot curve.png
    python examples/char_rnn.py --load char_rnn.npz --steps 0 --sample 500 --temperature 0.6

The model is ``fc.Chain(fc.LSTM(N, 256), fc.LSTM(256, 256), fc.Affine(256, N))``
for ``N`` distinct characters: each step reads one character (one-hot) and
outputs logits for the next. ``fc.unroll(model, 50)`` runs it over
(batch, 50, N) windows; its forward and backward through time are generated
source (``fc.source(seq, "backward")`` prints the time loop and the LSTM step).

Training, per window of ``seq_len`` characters::

    logits, back = seq.pullback(onehot(chars[t]))            # (batch, T, N)
    loss, (dlogits, _) = fc.grad(fc.logitcrossentropy, logits.reshape(-1, N), chars[t + 1])
    back(dlogits.reshape(logits.shape), input_grads=False)   # backprop through time, weights only
    clip_grad_norm(model, 5.0)
    model.update(adam)

The text is cut into ``batch`` contiguous streams; consecutive windows of a
stream are consecutive batches, so the LSTM state carries over from one batch
to the next (truncated BPTT) and is reset once per pass over the text.
Without ``--text`` the corpus is built offline, deterministically, from the
docstrings of a fixed list of standard-library modules.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import string
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

import flux_compile as fc
import flux_compile.init

STDLIB_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions",
    "functools", "glob", "gzip", "hashlib", "heapq", "html", "http.client", "inspect", "io", "itertools",
    "json", "logging", "math", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "shutil",
    "socket", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "time", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)


# ------------------------------------------------------------------------------
# data


def stdlib_corpus(modules=STDLIB_MODULES):
    """Docstrings of modules, their classes, functions and methods, joined by blank lines.

    Deterministic for a given Python version: modules in the order given, names
    sorted, each docstring once, only printable ASCII kept.
    """
    docs, seen = [], set()

    def add(doc):
        if isinstance(doc, str):
            doc = inspect.cleandoc(doc)
            if doc and doc not in seen:
                seen.add(doc)
                docs.append(doc)

    with warnings.catch_warnings():             # e.g. typing.io's deprecation warning
        warnings.simplefilter("ignore")
        for name in modules:
            try:
                mod = importlib.import_module(name)
            except ImportError:                 # a Python built without it (e.g. no _socket)
                continue
            add(mod.__doc__)
            for key in sorted(vars(mod)):
                obj = vars(mod)[key]
                if not (inspect.isclass(obj) or inspect.isfunction(obj)) or getattr(obj, "__module__", None) != name:
                    continue                    # skip re-exports: each object under its own module
                add(obj.__doc__)
                if inspect.isclass(obj):
                    for attr in sorted(vars(obj)):
                        member = vars(obj)[attr]
                        if isinstance(member, (staticmethod, classmethod)):
                            member = member.__func__
                        if inspect.isfunction(member) or isinstance(member, property):
                            add(member.__doc__)
    keep = set(string.printable) - set("\t\r\x0b\x0c")
    return "".join(ch for ch in "\n\n".join(docs) if ch in keep)


class Vocab:
    """The characters of a text, sorted; ``encode`` to int indices and ``decode`` back."""

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def of(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        return np.array([self.index[ch] for ch in text], dtype=np.int64)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def streams(ids, batch, seq_len):
    """Cut ``ids`` into ``batch`` contiguous rows, each a whole number of windows plus one.

    Row ``b`` of window ``k`` continues row ``b`` of window ``k - 1``: the
    condition for carrying the recurrent state from batch to batch.
    """
    windows = (len(ids) - 1) // (batch * seq_len)
    if windows < 1:
        raise SystemExit(f"the text has {len(ids)} characters: too short for batch {batch} x "
                         f"seq-len {seq_len} (needs at least {batch * seq_len + 1})")
    length = windows * seq_len
    return np.stack([ids[b * length: b * length + length + 1] for b in range(batch)]), windows


def windows(rows, seq_len):
    """Yield (inputs, targets) index arrays of shape (batch, seq_len), in order along the text."""
    for k in range((rows.shape[1] - 1) // seq_len):
        chunk = rows[:, k * seq_len: k * seq_len + seq_len + 1]
        yield chunk[:, :-1], chunk[:, 1:]


def onehot(ids, n, dtype):
    """One-hot rows: ids of any shape -> shape + (n,)."""
    return np.eye(n, dtype=dtype)[ids]


# ------------------------------------------------------------------------------
# model and training


def build(n_chars, hidden, dtype=np.float32):
    """Two LSTM layers and a linear read-out to next-character logits, all in ``dtype``."""
    model = fc.Chain(fc.LSTM(n_chars, hidden), fc.LSTM(hidden, hidden), fc.Affine(hidden, n_chars))
    return cast(model, dtype)


def cast(model, dtype):
    """Convert every Param (value and gradient) of ``model`` to ``dtype``, in place."""
    for _, p in fc.named_params(model):
        p.value = p.value.astype(dtype)
        p.grad = np.zeros_like(p.value)
    return model


def clip_grad_norm(model, max_norm):
    """Scale all gradients by ``max_norm / norm`` when their global norm exceeds ``max_norm``.

    Returns the norm before clipping (as ``torch.nn.utils.clip_grad_norm_``).
    """
    grads = [p.grad for p in fc.params(model)]
    norm = float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads)))
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            g *= scale
    return norm


def train_step(model, seq, opt, inputs, targets, n_chars, max_norm):
    """One window: forward through time, loss, backward through time, clip, update. Returns the loss."""
    xs = onehot(inputs, n_chars, model[0].Wx.dtype)
    logits, back = seq.pullback(xs)                                  # (batch, T, N)
    loss, (dlogits, _) = fc.grad(fc.logitcrossentropy, logits.reshape(-1, n_chars), targets.reshape(-1))
    back(dlogits.reshape(logits.shape), input_grads=False)     # no gradient for the one-hot inputs
    clip_grad_norm(model, max_norm)
    model.update(opt)
    return float(loss)


# ------------------------------------------------------------------------------
# sampling


def sample(model, vocab, n, temperature=1.0, prime="\n", rng=None):
    """``n`` characters generated one at a time after warming the state up on ``prime``.

    Logits are divided by ``temperature`` before the softmax: below 1 the
    text is more conservative, above 1 more surprising.
    """
    rng = np.random.default_rng(rng)
    prime = "".join(ch for ch in prime if ch in vocab.index) or vocab.chars[0]
    dtype = model[0].Wx.dtype
    step = fc.unroll1(model)
    model.reset()
    for ch in prime[:-1]:
        step(onehot(vocab.encode(ch), len(vocab), dtype))
    last, out = vocab.index[prime[-1]], []
    for _ in range(n):
        logits = step(onehot(np.array([last]), len(vocab), dtype))[0].astype(np.float64)
        p = np.exp((logits - logits.max()) / temperature)
        last = int(rng.choice(len(vocab), p=p / p.sum()))
        out.append(last)
    model.reset()
    return vocab.decode(out)


# ------------------------------------------------------------------------------
# saving, plotting


def save(path, model, vocab, hidden):
    """The weights with ``fc.save`` and, next to them, the vocabulary and size as JSON."""
    fc.save(path, model)
    with open(meta_path(path), "w", encoding="utf-8") as f:
        json.dump({"chars": vocab.chars, "hidden": hidden}, f)


def load(path, dtype=np.float32):
    """(model, vocab, hidden) from files written by :func:`save`."""
    with open(meta_path(path), encoding="utf-8") as f:
        meta = json.load(f)
    vocab = Vocab(meta["chars"])
    model = fc.load(path, build(len(vocab), meta["hidden"], dtype))
    return model, vocab, meta["hidden"]


def meta_path(path):
    path = os.fspath(path)
    return (path[:-4] if path.endswith(".npz") else path) + ".json"


def plot(losses, path, smooth=20):
    """Loss per step and its moving average, as a PNG (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, no plot written", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss per step")
    if len(losses) >= smooth:
        ax.plot(steps[smooth - 1:], np.convolve(losses, np.ones(smooth) / smooth, "valid"),
                label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title("char-rnn training curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------


@dataclass
class Result:
    """What :func:`main` returns: the trained model, its vocabulary, the loss curve and the sample."""
    model: object
    vocab: Vocab
    losses: list = field(default_factory=list)
    sample: str = ""


def end_loss(losses, last=10):
    """The mean of the last few losses (one batch is noisy)."""
    return float(np.mean(losses[-last:]))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", metavar="FILE", help="train on this text file (default: stdlib docstrings)")
    ap.add_argument("--minutes", type=float, default=3.0, help="stop training after this long (default 3)")
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: time limit)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    ap.add_argument("--clip", type=float, default=5.0, help="maximum global gradient norm")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=50, metavar="K", help="print a progress line every K steps")
    ap.add_argument("--save", default="char_rnn.npz", metavar="PATH", help="'' to skip saving")
    ap.add_argument("--load", metavar="PATH", help="start from a model saved by this script")
    ap.add_argument("--plot", metavar="PNG", help="write the loss curve here")
    ap.add_argument("--sample", type=int, default=300, metavar="N", help="characters to sample at the end")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--prime", default="The ", help="text that warms up the state before sampling")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    dtype = np.dtype(args.dtype)
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text, source = f.read(), args.text
    else:
        text, source = stdlib_corpus(), f"docstrings of {len(STDLIB_MODULES)} stdlib modules"
    flux_compile.init.seed(args.seed)                       # the initial weights
    if args.load:
        model, vocab, hidden = load(args.load, dtype)
        unknown = set(text) - set(vocab.chars)
        if unknown:
            raise SystemExit(f"{args.load} does not know the characters {''.join(sorted(unknown))!r}")
    else:
        vocab, hidden = Vocab.of(text), args.hidden
        model = build(len(vocab), hidden, dtype)
    print(f"{source}: {len(text):,} characters, {len(vocab)} distinct; "
          f"LSTM {hidden} x 2, {sum(p.size for p in fc.params(model)):,} parameters, {dtype}")

    rows, per_epoch = streams(vocab.encode(text), args.batch_size, args.seq_len)
    seq = fc.unroll(model, args.seq_len)
    opt = fc.optim.Adam(args.lr)
    losses, epoch, start = [], 0, time.perf_counter()
    max_steps = float("inf") if args.steps is None else args.steps
    deadline = start + 60 * args.minutes
    while len(losses) < max_steps and time.perf_counter() < deadline:
        epoch += 1
        model.reset()                                       # state carries across batches, not epochs
        for inputs, targets in windows(rows, args.seq_len):
            losses.append(train_step(model, seq, opt, inputs, targets, len(vocab), args.clip))
            n = len(losses)
            if n == 1 or n % args.log_every == 0:
                took = time.perf_counter() - start
                print(f"step {n:5d}  epoch {epoch} ({(n - 1) % per_epoch + 1}/{per_epoch})  "
                      f"loss {losses[-1]:.4f}  mean of last 10 {end_loss(losses):.4f}  "
                      f"{took / n:.2f} s/step  {took:.0f} s", flush=True)
            if len(losses) >= max_steps or time.perf_counter() >= deadline:
                break
    took = time.perf_counter() - start
    if losses:
        print(f"trained {len(losses)} steps in {took:.0f} s: loss at start {losses[0]:.4f}, "
              f"at end {end_loss(losses):.4f} (mean of the last {min(10, len(losses))} steps)")
        if args.plot and plot(losses, args.plot):
            print(f"loss curve written to {args.plot}")
    if args.save:
        save(args.save, model, vocab, hidden)
        print(f"model saved to {args.save} (vocabulary in {meta_path(args.save)})")
    text_out = ""
    if args.sample:
        text_out = sample(model, vocab, args.sample, args.temperature, args.prime, rng=args.seed)
        print(f"--- sample, temperature {args.temperature}, after {args.prime!r} ---")
        print(args.prime + text_out)
    return Result(model, vocab, losses, text_out)


if __name__ == "__main__":
    main()
