"""examples/char_rnn.py: a short run on a tiny text, its data layout, clipping and corpus."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import flux_compile as fc

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "char_rnn.py"


@pytest.fixture(scope="module")
def char_rnn():
    spec = importlib.util.spec_from_file_location("char_rnn_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                        # dataclasses look their module up here
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40


def tiny(tmp_path, *extra):
    text = tmp_path / "tiny.txt"
    text.write_text(TEXT, encoding="utf-8")
    return ["--text", str(text), "--hidden", "16", "--seq-len", "8", "--batch-size", "4",
            "--lr", "0.01", "--minutes", "1", "--log-every", "20", "--seed", "0", *extra]


def test_train_save_load_sample(char_rnn, tmp_path, capsys):
    model_file = tmp_path / "m.npz"
    result = char_rnn.main(tiny(tmp_path, "--steps", "60", "--save", str(model_file), "--sample", "40"))
    out = capsys.readouterr().out
    assert len(result.losses) == 60
    assert char_rnn.end_loss(result.losses) < result.losses[0] - 0.5, result.losses
    assert "loss at start" in out and "at end" in out

    for p in fc.params(result.model):                    # float32 stays float32 through training
        assert p.value.dtype == np.float32 and p.grad.dtype == np.float32
    xs = char_rnn.onehot(np.zeros((2, 8), dtype=np.int64), len(result.vocab), np.float32)
    assert fc.unroll(result.model, 8)(xs).dtype == np.float32

    assert model_file.exists()
    fresh = char_rnn.build(len(result.vocab), 16)
    fc.load(model_file, fresh)
    for (path, p), (_, q) in zip(fc.named_params(result.model), fc.named_params(fresh)):
        np.testing.assert_array_equal(q.value, p.value, err_msg=str(path))

    assert len(result.sample) == 40 and set(result.sample) <= set(TEXT)


def test_load_and_sample_only(char_rnn, tmp_path, capsys):
    model_file = tmp_path / "m.npz"
    first = char_rnn.main(tiny(tmp_path, "--steps", "5", "--save", str(model_file), "--sample", "0"))
    again = char_rnn.main(tiny(tmp_path, "--load", str(model_file), "--steps", "0", "--save", "",
                               "--sample", "25", "--temperature", "0.5"))
    assert again.losses == [] and len(again.sample) == 25
    assert again.vocab.chars == first.vocab.chars
    assert "--- sample, temperature 0.5" in capsys.readouterr().out


def test_windows_continue_each_row(char_rnn):
    """Row b of window k + 1 starts where row b of window k ended: state can carry over."""
    ids = np.arange(1000)
    rows, per_epoch = char_rnn.streams(ids, batch=4, seq_len=10)
    ws = list(char_rnn.windows(rows, 10))
    assert len(ws) == per_epoch == 24
    for (x0, y0), (x1, _) in zip(ws, ws[1:]):
        np.testing.assert_array_equal(x1[:, 0], y0[:, -1])
        np.testing.assert_array_equal(y0[:, :-1], x0[:, 1:])
    with pytest.raises(SystemExit, match="too short"):
        char_rnn.streams(np.arange(30), batch=4, seq_len=10)


def test_clip_grad_norm(char_rnn):
    m = fc.Affine(3, 4)
    m.W.grad[...] = 3.0                                 # norm sqrt(12 * 9 + 4 * 16) = sqrt(172)
    m.b.grad[...] = 4.0
    norm = char_rnn.clip_grad_norm(m, 1.0)
    assert norm == pytest.approx(np.sqrt(172))
    total = np.sqrt(sum(np.sum(p.grad ** 2) for p in fc.params(m)))
    assert total == pytest.approx(1.0, rel=1e-5)
    assert char_rnn.clip_grad_norm(m, 10.0) == pytest.approx(1.0, rel=1e-5)   # below: unchanged
    assert np.sqrt(sum(np.sum(p.grad ** 2) for p in fc.params(m))) == pytest.approx(1.0, rel=1e-5)


def test_stdlib_corpus_is_deterministic(char_rnn):
    a, b = char_rnn.stdlib_corpus(), char_rnn.stdlib_corpus()
    assert a == b and len(a) > 100_000
    assert a.isascii() and "\t" not in a
