"""Differential fuzzing in CI: generated programs (tests/fuzzgen.py) checked against NumPy,
autograd on the same source and finite differences; stale-cache, dtype, double-back and
input-mutation checks included.

A program may pass, or be refused with ``fc.CompileError``; a wrong number or any other
exception fails - unless its bug class is in KNOWN_BROKEN, where it is an expected failure.
When a class is fixed, ``test_bug_class_fixed[<class>]`` XPASSes: delete the class from
KNOWN_BROKEN, and every program of that class must pass from then on.

Thousands of programs: ``python tools/fuzz.py --count 2000 --group closure``.
"""
import functools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import flux_compile as fc
import fuzzgen
from fuzzgen import GROUPS, check, classify, generate

# bug class (fuzzgen.BUG_CLASSES) -> who is fixing it; delete an entry once it is fixed
KNOWN_BROKEN = {
    # bug class (fuzzgen.BUG_CLASSES) -> why it is still expected to fail; empty: every class
    # found so far (stale values, name collisions, list indices, pytrees, float32 promotion,
    # late rejection) is fixed and guarded by the seeds below. Known and not fixed (no CI seed
    # hits it; guarded by a strict xfail in test_fuzz_regressions.py): float32-promotion through
    # `v += w` where w is float64 (NumPy's in-place op keeps v's dtype; the compiled v = v + w
    # promotes) - 6 of 1,750 programs in jvp_ops / newops_mixed
}

SEEDS_PER_GROUP = 5
# plus seeds that hit each known bug class, so that test_bug_class_fixed XPASSes only on a fix
CLASS_SEEDS = [("core", 11), ("core", 38), ("core", 36), ("names", 0), ("pytree", 1), ("ops", 36),
               # turn 2 (each failed on main before its fix): jvp of np.where / concatenate with a
               # global or a closure cell; np.r_ with a float in float32; np.average(returned=True)[0]
               ("jvp_tree", 6), ("jvp_tree", 17), ("newops", 468), ("newops", 3095),
               # turn 3: a Param first read inside a loop region and again after it (wrong value,
               # wrong Param gradient, a crash before the fix of frontend.param_node)
               ("loops_model", 248), ("loops_model", 400), ("loops_model", 427)]
CI_CASES = [(group, seed) for group in sorted(GROUPS) for seed in range(SEEDS_PER_GROUP)] + CLASS_SEEDS

pytestmark = pytest.mark.filterwarnings("ignore")


@functools.lru_cache(maxsize=None)
def outcome(group, seed):
    prog = generate(seed, GROUPS[group])
    result = check(prog)
    return prog, result, classify(prog, result)


def expect_correct(prog, result, cls):
    assert result.outcome != "invalid", f"the generator wrote an invalid program: {result.message}\n{result.source}"
    if result.outcome in ("ok", "rejected"):
        return
    if cls in KNOWN_BROKEN:
        pytest.xfail(f"known bug class {cls}: {result.message.splitlines()[0]}")
    pytest.fail(f"bug class {cls}: {result.message}\n{result.source}", pytrace=False)


@pytest.mark.parametrize("group,seed", CI_CASES)
def test_fuzz_program(group, seed):
    expect_correct(*outcome(group, seed))


@pytest.mark.parametrize("cls", sorted(fuzzgen.BUG_CLASSES))
def test_bug_class_fixed(cls):
    """Every seed picked to hit a class passes; a class in KNOWN_BROKEN is an expected failure
    (XPASS then means it is fixed: delete it from KNOWN_BROKEN)."""
    seen = [(g, s) for g, s in CI_CASES if outcome(g, s)[2] == cls]
    if seen and cls in KNOWN_BROKEN:
        pytest.xfail(f"{cls} still fails for {seen}: {KNOWN_BROKEN[cls]}")
    assert not seen, f"{cls} fails for {seen}"


@settings(max_examples=20, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(r=st.randoms(use_true_random=False), group=st.sampled_from(sorted(GROUPS)))
def test_fuzz_hypothesis(r, group):
    """Hypothesis draws every choice of the generator (and shrinks them on a failure)."""
    prog = fuzzgen.Generator(7, GROUPS[group], r=r).generate()
    result = check(prog)
    assert result.outcome != "invalid", result.message + "\n" + result.source
    if result.outcome in ("ok", "rejected"):
        return
    cls = classify(prog, result)
    assert cls in KNOWN_BROKEN, f"bug class {cls}: {result.message}\n{result.source}"


# --------------------------------------------------------------------------------------------
# the fuzzer's own checks catch what they claim to: a broken fc.grad is reported as wrong


def _first_ok(group, start=0):
    for seed in range(start, start + 200):
        prog = generate(seed, GROUPS[group])
        if check(prog).outcome == "ok":
            return prog
    raise AssertionError(f"no passing program in group {group}")


def _wrap_grad(monkeypatch, change):
    real = fc.grad

    def grad(f, *args):
        return change(f, args, *real(f, *args))
    monkeypatch.setattr(fc, "grad", grad)


def test_checker_catches_a_wrong_gradient(monkeypatch):
    prog = _first_ok("core")
    _wrap_grad(monkeypatch, lambda f, args, v, g: (v, tuple(x * 1.001 for x in g)))
    r = check(prog)
    assert (r.outcome, r.check) == ("wrong", "first_grad"), r


def test_checker_catches_a_wrong_value(monkeypatch):
    prog = _first_ok("core")
    _wrap_grad(monkeypatch, lambda f, args, v, g: (v + 1e-6, g))
    r = check(prog)
    assert (r.outcome, r.check) == ("wrong", "first_value"), r


def test_checker_catches_stale_results(monkeypatch):
    """A 'compiler' that returns its first answer for every later call of the same code."""
    prog = _first_ok("globals")
    memo = {}
    _wrap_grad(monkeypatch, lambda f, args, v, g: memo.setdefault(f.__code__, (v, g)))
    r = check(prog)
    assert r.outcome == "wrong" and r.check.startswith(("fresh", "rebatch")), r
    assert classify(prog, r) == "stale-values"


def test_checker_catches_modified_inputs(monkeypatch):
    prog = _first_ok("core")

    def mutate(f, args, v, g):
        args[0][...] = 0
        return v, g
    _wrap_grad(monkeypatch, mutate)
    r = check(prog)
    assert (r.outcome, r.check) == ("wrong", "inputs_modified"), r


def test_checker_catches_float64_gradients_for_float32(monkeypatch):
    prog = _first_ok("core")
    _wrap_grad(monkeypatch, lambda f, args, v, g: (v, tuple(np.asarray(x, np.float64) for x in g)))
    r = check(prog)
    assert (r.outcome, r.check) == ("wrong", "float32_grad_dtype"), r


def test_compile_error_counts_as_rejected_other_errors_as_crash(monkeypatch):
    prog = _first_ok("core")

    def refuse(f, *args):
        raise fc.CompileError("not supported here")
    monkeypatch.setattr(fc, "grad", refuse)
    assert check(prog).outcome == "rejected"

    def crash(f, *args):
        raise KeyError("boom")
    monkeypatch.setattr(fc, "grad", crash)
    assert check(prog).outcome == "crash"


def test_checker_catches_a_model_whose_second_back_does_not_accumulate(monkeypatch):
    prog = _first_ok("submodel")
    from flux_compile.model import Model
    real = Model._pullback            # what m.back and m.pullback both run

    def pullback(self, *args, **kwargs):
        out, back = real(self, *args, **kwargs)

        def back_resetting(dy=None, input_grads=True):
            self.zero_grad()
            return back(dy, input_grads)
        return out, back_resetting
    monkeypatch.setattr(Model, "_pullback", pullback)
    r = check(prog)
    assert (r.outcome, r.check) == ("wrong", "double_back"), r


# --------------------------------------------------------------------------------------------
# the generator


def test_generation_is_deterministic():
    for group in GROUPS:
        assert generate(3, GROUPS[group]).source() == generate(3, GROUPS[group]).source()
    assert generate(3, GROUPS["all"]).source() != generate(4, GROUPS["all"]).source()


def test_name_pool_holds_the_names_generated_code_uses():
    """Every function the generated code calls (runtime helpers) and the names it binds in its
    headers (saved, dy, self) are in the pool the generator draws user identifiers from."""
    called, bound = set(), set()
    for seed in range(12):
        prog = generate(seed, GROUPS["core"])
        with fuzzgen.Run(prog) as run:
            inst = fuzzgen.Instance(prog, fuzzgen.ENV, seed)
            fuzzgen._set_module_state(run.mods["fc"], prog, inst)
            f = getattr(run.mods["fc"], prog.entry)
            try:
                text = fc.source(f, "all", args=tuple(inst.args))
            except Exception:
                continue
        called |= set(re.findall(r"(?<![\w.])([A-Za-z_]\w*)\(", text)) - {"def", "forward", "backward",
                                                                            "forward_train", "backward_params"}
        bound |= set(re.findall(r"def \w+\(([^)]*)\)", text)[0].replace(" ", "").split(","))
    assert called, "no generated source was read"
    assert called <= set(fuzzgen.NAME_POOL), sorted(called - set(fuzzgen.NAME_POOL))
    assert {"dy", "saved", "self", "unbroadcast", "sum_grad", "getitem_grad"} <= set(fuzzgen.NAME_POOL)


def test_shrinking_keeps_the_failure_and_drops_the_rest(monkeypatch):
    prog = _first_ok("core")
    _wrap_grad(monkeypatch, lambda f, args, v, g: (v + 1.0, g))
    r = check(prog)
    small = fuzzgen.shrink(prog, r, fuzzgen.CHECKS)
    assert check(small).key == r.key
    assert sum(map(len, small.blocks)) <= sum(map(len, prog.blocks))
    assert len(small.blocks) == 0 and len(small.returns) == 1


# --------------------------------------------------------------------------------------------
# the turn-2 groups' own checks: forward mode, dict key order, library layers against torch


def _first_ok_where(group, wanted, start=0):
    for seed in range(start, start + 200):
        prog = generate(seed, GROUPS[group])
        if wanted(prog) and check(prog).outcome == "ok":
            return prog
    raise AssertionError(f"no passing program in group {group}")


def test_checker_catches_a_wrong_jvp(monkeypatch):
    prog = _first_ok("jvp")
    real = fc.jvp
    monkeypatch.setattr(fc, "jvp", lambda f, p, t: (lambda v, dv: (v, dv * 1.001))(*real(f, p, t)))
    r = check(prog)
    assert (r.outcome, r.check) == ("wrong", "jvp_fd"), r
    assert classify(prog, r) == "jvp"


def test_checker_catches_a_jvp_that_only_jax_sees(monkeypatch):
    """A tangent off by less than the finite-difference tolerance is caught by jax.jvp."""
    prog = _first_ok_where("jvp", lambda p: "[0] = " not in p.source())
    real = fc.jvp
    monkeypatch.setattr(fc, "jvp", lambda f, p, t: (lambda v, dv: (v, dv * (1 + 1e-6)))(*real(f, p, t)))
    r = check(prog)
    assert (r.outcome, r.check) == ("wrong", "jvp_jax"), r


def test_checker_catches_code_reused_for_another_dict_key_order(monkeypatch):
    """A 'compiler' that keys its cache on the dict's values in order, not on the keys."""
    prog = _first_ok_where("patterns", lambda p: any(isinstance(s, dict) for _, s in p.args))
    real, first_keys = fc.grad, {}

    def grad(f, *args):
        v, g = real(f, *args)
        out = []
        for a, ga in zip(args, g):
            if isinstance(ga, dict):
                keys = first_keys.setdefault(f.__code__, list(ga))
                ga = dict(zip(keys, [ga[k] for k in a]))
            out.append(ga)
        return v, tuple(out)
    monkeypatch.setattr(fc, "grad", grad)
    r = check(prog)
    assert r.outcome == "wrong" and r.check.startswith("dict_order"), r
    assert classify(prog, r) == "dict-order"


def test_checker_catches_a_layer_stack_disagreeing_with_torch(monkeypatch):
    import fuzzlayers
    stack = next(s for s in map(fuzzlayers.generate_stack, range(100)) if "AvgPool2d" in s.text)
    assert check(stack).outcome == "ok"
    import torch.nn.functional as F
    real = F.avg_pool2d
    monkeypatch.setattr(F, "avg_pool2d", lambda h, k, s: real(h, k, s) * 1.001)
    r = check(stack)
    assert (r.outcome, r.check) == ("wrong", "value"), r
    assert classify(stack, r) == "layers"


def test_checker_catches_running_statistics_that_torch_does_not_give(monkeypatch):
    import fuzzlayers
    stack = next(s for s in map(fuzzlayers.generate_stack, range(100))
                 if "BatchNorm" in s.text and not any(s.stats))
    import torch.nn.functional as F
    real = F.batch_norm
    monkeypatch.setattr(F, "batch_norm", lambda h, rm, rv, g, b, tr, mom, eps: real(h, rm, rv, g, b, tr, mom * 1.01, eps))
    r = check(stack)
    assert (r.outcome, r.check) == ("wrong", "running_mean"), r


def test_new_groups_use_what_they_are_for():
    """The turn-2 groups do write the constructs they are named for."""
    text = "".join(generate(s, GROUPS["newops"]).source() for s in range(300))
    for construct in ("np.fft.", "np.linalg.svd", "np.linalg.eig", "np.angle", "np.average", "prepend=",
                      "append=", "np.select", "sliding_window_view", "np.r_[", "np.c_["):
        assert construct in text, construct
    text = "".join(generate(s, GROUPS["patterns_model"]).source() for s in range(40))
    for construct in ("assert ", "float(", "super().forward(x)", ".forward(self, x)"):
        assert construct in text, construct
    text = "".join(generate(s, GROUPS["layers"]).source() for s in range(60))
    for layer in ("Conv2d", "MaxPool2d", "AvgPool2d", "LayerNorm", "Embedding", "BatchNorm", "Dense", "float32"):
        assert layer in text, layer
