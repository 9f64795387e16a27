"""protocols.economics (pure math) and the `econ` CLI commands in cluster.econ_cli."""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction

import pytest

from protocols import economics as econ


def sig3(x: float) -> float:
    """x truncated to 3 significant figures (how the published figures are quoted)."""
    e = math.floor(math.log10(abs(x)))
    return math.floor(x / 10 ** (e - 2)) * 10 ** (e - 2)


# --- quorum capture -------------------------------------------------------------------
def test_published_quorum_figures():
    p5 = econ.p_all_dishonest(1 / 3, 5)
    p10 = econ.p_all_dishonest(1 / 3, 10)
    assert p5 == pytest.approx(1 / 243) and p10 == pytest.approx(1 / 59049)
    # published: 4.11e-3 and 1.69e-5 to 3 significant figures
    assert sig3(p5) == pytest.approx(4.11e-3) and sig3(p10) == pytest.approx(1.69e-5)
    # 1.6935e-5 also *rounds* to 1.69e-5; 1/243 = 4.1152e-3 would round to 4.12e-3, so the
    # published 4.11e-3 is the truncated value (off by 0.13%)
    assert f"{p10:.3g}" == "1.69e-05" and f"{p5:.3g}" == "0.00412"
    assert abs(p5 - 4.11e-3) / p5 < 1.3e-3
    assert econ.p_all_dishonest(Fraction(1, 3), 5, exact=True) == Fraction(1, 243)


def test_hypergeometric_exact_values():
    assert econ.p_all_dishonest_finite(10, 4, 2, exact=True) == Fraction(4 * 3, 10 * 9)
    assert econ.p_all_dishonest_finite(10, 4, 5) == 0.0  # more seats than dishonest nodes
    assert econ.p_all_dishonest_finite(10, 10, 5) == 1.0
    assert econ.p_all_dishonest_finite(10, 0, 1) == 0.0
    assert econ.p_all_dishonest_finite(10, 4, 1) == pytest.approx(0.4)


@pytest.mark.parametrize("n", [2, 5, 10])
def test_hypergeometric_below_binomial_and_converges(n):
    r = Fraction(1, 3)
    limit = float(r ** n)
    prev_gap = None
    for M in (30, 300, 3000, 30000, 300000):
        D = econ.dishonest_count(r, M)
        assert Fraction(D, M) == r
        finite = econ.p_all_dishonest_finite(M, D, n)
        assert finite <= limit
        gap = limit - finite
        if prev_gap is not None:
            assert gap < prev_gap
        prev_gap = gap
    assert finite == pytest.approx(limit, rel=1e-3)


def test_min_quorum_binomial():
    assert econ.min_quorum(1 / 3, 4.2e-3) == 5
    assert econ.min_quorum(1 / 3, 4.1e-3) == 6
    assert econ.min_quorum(1 / 3, 1 / 243) == 5  # boundary is inclusive (exact arithmetic)
    assert econ.min_quorum(1 / 3, 1.7e-5) == 10
    assert econ.min_quorum(1 / 3, 1e-6) == 13
    assert econ.min_quorum(0.0, 1e-9) == 1
    assert econ.min_quorum(0.9, 1.0) == 1
    for r, t in [(0.2, 1e-3), (0.49, 1e-9), (0.05, 0.5), (1 / 3, 1e-12)]:
        n = econ.min_quorum(r, t)
        assert econ.p_all_dishonest(r, n) <= t
        assert n == 1 or econ.p_all_dishonest(r, n - 1) > t


def test_min_quorum_finite():
    # M = 30, D = 10: finite odds drop faster than r**n
    n = econ.min_quorum(1 / 3, 1e-3, M=30)
    assert econ.p_all_dishonest_finite(30, 10, n) <= 1e-3 < econ.p_all_dishonest_finite(30, 10, n - 1)
    assert n <= econ.min_quorum(1 / 3, 1e-3)
    assert econ.min_quorum(None, 0.0, M=10, D=3) == 4  # more seats than dishonest nodes
    assert econ.min_quorum(0.5, 1e-3, M=4) == 3


def test_min_quorum_impossible_and_bad_input():
    with pytest.raises(ValueError):
        econ.min_quorum(1.0, 0.5)
    with pytest.raises(econ.Infeasible):
        econ.min_quorum(0.5, 0.0)
    with pytest.raises(econ.Infeasible):
        econ.min_quorum(None, 0.5, M=5, D=5)
    for bad in [(-0.1, 0.1), (1.1, 0.1), (0.3, -0.1), (0.3, 1.5), (float("nan"), 0.1)]:
        with pytest.raises(ValueError):
            econ.min_quorum(*bad)
    with pytest.raises(ValueError):
        econ.p_all_dishonest(0.3, 0)
    with pytest.raises(ValueError):
        econ.p_all_dishonest_finite(5, 6, 2)
    with pytest.raises(ValueError):
        econ.p_all_dishonest_finite(5, 2, 6)


# --- cross-validation ------------------------------------------------------------------------
EX = dict(r=0.5, R=1.2, C=1, S=250)  # whitepaper example: R = 1.2C, r = 1/2, S = 250C


def test_published_crossval_figures():
    closed = econ.min_p_closed_form(**EX)
    lemma = econ.min_p_lemma_form(**EX)
    exact = econ.min_p(EX["r"], 1, EX["R"], EX["C"], EX["S"])
    assert f"{closed:.5g}" == "0.0079618"
    assert f"{lemma:.5g}" == "0.0079302"
    assert f"{exact:.5g}" == "0.0079302"
    assert econ.min_p(EX["r"], 1, EX["R"], EX["C"], EX["S"], exact=True) == Fraction(10, 1261)
    assert econ.min_p(EX["r"], 1, EX["R"], EX["C"], EX["S"], H=1.2, L=2.4) == exact
    assert closed > exact  # the corollary is a (slightly) conservative sufficient condition


def test_rewards_match_binomial_forms_by_hand():
    # N = 2 by hand: weights (1-r)^2, 2r(1-r), r^2
    p, r, R, C, S, H, L = 0.3, 0.25, 2.0, 1.0, 10.0, 3.0, 5.0
    b = [(1 - r) ** 2, 2 * r * (1 - r), r ** 2]
    honest = (1 - p) * (R - C) + p * sum(b[i] * (i * R / 2 + R - C) for i in range(3))
    malicious = (1 - p) * H + p * r ** 2 * L + p * sum(b[i] * (i * R / 2 - C - S) for i in range(2))
    assert econ.honest_reward(p, r, 2, R, C) == pytest.approx(honest)
    assert econ.malicious_reward(p, r, 2, R, C, S, H, L) == pytest.approx(malicious)
    # collapsed form of honest: R - C + p r R
    assert econ.honest_reward(p, r, 2, R, C) == pytest.approx(R - C + p * r * R)


@pytest.mark.parametrize("N", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("r", [0.0, 0.1, 1 / 3, 0.5, 0.9])
def test_min_p_is_the_exact_crossing(N, r):
    R, C, S = 1.2, 1.0, 50.0
    pstar = econ.min_p(r, N, R, C, S, exact=True)
    assert 0 < pstar < 1
    # exactly equal at the crossing
    assert econ.honest_reward(pstar, r, N, R, C, exact=True) == econ.malicious_reward(pstar, r, N, R, C, S, exact=True)
    eps = Fraction(1, 10 ** 9)
    assert econ.honest_reward(pstar + eps, r, N, R, C, exact=True) > econ.malicious_reward(pstar + eps, r, N, R, C, S, exact=True)
    assert econ.honest_reward(pstar - eps, r, N, R, C, exact=True) < econ.malicious_reward(pstar - eps, r, N, R, C, S, exact=True)
    assert econ.honest_reward(1, r, N, R, C) > econ.malicious_reward(1, r, N, R, C, S)
    # with H = R, L = 2R the threshold is C / ((1 - r^N)(R + C + S))
    rq = Fraction(str(r)) if isinstance(r, float) else Fraction(r)
    assert pstar == Fraction(1) / ((1 - rq ** N) * (Fraction("1.2") + 1 + 50))


def test_min_p_monotone_in_stake():
    for N in (1, 3):
        ps = [econ.min_p(0.3, N, 1.2, 1.0, S) for S in (0, 1, 10, 100, 1000, 10000)]
        assert all(a > b for a, b in zip(ps, ps[1:]))
    cf = [econ.min_p_closed_form(0.3, 1.2, 1.0, S) for S in (0, 10, 1000)]
    assert cf[0] > cf[1] > cf[2]


def test_min_p_edge_cases():
    # free execution: honesty pays for every p > 0
    assert econ.min_p(0.3, 2, 1.2, 0.0, 10.0) == 0.0
    # a cheat that earns less than honest work even unchecked: pays already at p = 0
    assert econ.min_p(0.3, 2, 1.2, 0.2, 10.0, H=0.5) == 0.0
    # a huge collusion reward: no p works
    with pytest.raises(econ.Infeasible):
        econ.min_p(0.3, 3, 1.2, 1.0, 0.0, L=100.0)
    # r = 1: every checker colludes, nobody is ever caught
    with pytest.raises(econ.Infeasible):
        econ.min_p(1.0, 1, 1.2, 1.0, 250.0)
    for bad in [dict(r=-0.1), dict(C=-1), dict(S=-1), dict(N=0), dict(R=float("inf"))]:
        kw = dict(r=0.3, N=1, R=1.2, C=1.0, S=10.0) | bad
        with pytest.raises(ValueError):
            econ.min_p(**kw)
    with pytest.raises(ValueError):
        econ.honest_reward(1.5, 0.3, 1, 1.2, 1.0)


def test_compute_multiplier():
    assert econ.compute_multiplier(0, 5) == 1.0
    assert econ.compute_multiplier(1, 5) == 6.0
    assert econ.compute_multiplier(0.01, 3) == pytest.approx(1.03)
    assert econ.compute_multiplier(Fraction(1, 4), 2, exact=True) == Fraction(3, 2)


def test_module_is_pure():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(econ))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "math", "fractions", "decimal", "numbers", "typing"}


# --- CLI ----------------------------------------------------------------------------------------
def _run(capsys, *argv):
    from cluster import econ_cli

    parser = argparse.ArgumentParser(prog="verinfer")
    econ_cli.add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(list(argv))
    assert args.fn is econ_cli.run
    code = econ_cli.run(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_quorum_json(capsys):
    code, out, _ = _run(capsys, "econ", "quorum", "--r", "1/3", "--n", "5", "--json")
    d = json.loads(out)
    assert code == 0 and d["model"] == "binomial" and d["n"] == 5
    assert d["probability"] == pytest.approx(1 / 243)
    code, out, _ = _run(capsys, "econ", "quorum", "--r", "0.3333", "--n", "10", "--nodes", "300", "--json")
    d = json.loads(out)
    assert code == 0 and d["model"] == "hypergeometric" and d["dishonest"] == 100
    assert d["probability"] == pytest.approx(econ.p_all_dishonest_finite(300, 100, 10))
    assert d["probability"] < d["binomial_probability"]


def test_cli_quorum_text(capsys):
    code, out, _ = _run(capsys, "econ", "quorum", "--r", "1/3", "--n", "5")
    assert code == 0 and "0.00411523" in out and "binomial" in out


def test_cli_min_n_json(capsys):
    code, out, _ = _run(capsys, "econ", "min-n", "--r", "1/3", "--target", "1e-6", "--json")
    d = json.loads(out)
    assert code == 0 and d["n"] == 13 and d["probability"] <= 1e-6 and d["model"] == "binomial"
    code, out, _ = _run(capsys, "econ", "min-n", "--r", "1/3", "--target", "1e-3", "--nodes", "30", "--json")
    d = json.loads(out)
    assert code == 0 and d["n"] == econ.min_quorum(1 / 3, 1e-3, M=30) and d["model"] == "hypergeometric"
    code, out, err = _run(capsys, "econ", "min-n", "--r", "0.5", "--target", "0", "--json")
    assert code == 1 and json.loads(out)["n"] is None and err


def test_cli_crossval_json(capsys):
    code, out, _ = _run(capsys, "econ", "crossval", "--r", "0.5", "--n", "1", "--reward", "1.2", "--cost", "1",
                        "--stake", "250", "--p", "0.01", "--json")
    d = json.loads(out)
    assert code == 0
    assert f"{d['min_p']:.5g}" == "0.0079302"
    assert f"{d['min_p_closed_form']:.5g}" == "0.0079618"
    assert f"{d['min_p_lemma_form']:.5g}" == "0.0079302"
    assert d["honest_reward"] > d["malicious_reward"] and d["honesty_pays"] is True
    assert d["cheat_reward"] == 1.2 and d["collusion_reward"] == 2.4
    assert d["compute_multiplier"] == pytest.approx(1.01)
    # N > 1: the N = 1 closed forms are null; no --p, no reward keys
    code, out, _ = _run(capsys, "econ", "crossval", "--r", "0.5", "--n", "3", "--reward", "1.2", "--cost", "1",
                        "--stake", "250", "--json")
    d = json.loads(out)
    assert code == 0 and d["min_p_closed_form"] is None and d["min_p_lemma_form"] is None
    assert d["min_p"] == pytest.approx(1 / ((1 - 0.125) * 252.2))
    assert "honest_reward" not in d and "malicious_reward" not in d


def test_cli_crossval_infeasible(capsys):
    code, out, err = _run(capsys, "econ", "crossval", "--r", "0.3", "--n", "3", "--reward", "1.2", "--cost", "1",
                          "--stake", "0", "--collusion-reward", "100", "--json")
    assert code == 1 and json.loads(out)["min_p"] is None and "honesty" in err


def test_cli_crossval_text(capsys):
    code, out, _ = _run(capsys, "econ", "crossval", "--r", "0.5", "--n", "1", "--reward", "1.2", "--cost", "1",
                        "--stake", "250")
    assert code == 0 and "0.00793021" in out and "0.00796178" in out


@pytest.mark.parametrize("argv", [
    ["econ", "quorum", "--r", "1", "--n", "5"],
    ["econ", "quorum", "--r", "-0.1", "--n", "5"],
    ["econ", "quorum", "--r", "0.3", "--n", "0"],
    ["econ", "quorum", "--r", "0.3", "--n", "5", "--nodes", "3"],
    ["econ", "min-n", "--r", "1.5", "--target", "0.01"],
    ["econ", "min-n", "--r", "0.3", "--target", "2"],
    ["econ", "crossval", "--r", "0.3", "--n", "0", "--reward", "1", "--cost", "1", "--stake", "1"],
    ["econ", "crossval", "--r", "0.3", "--n", "1", "--reward", "1", "--cost", "-1", "--stake", "1"],
    ["econ", "crossval", "--r", "0.3", "--n", "1", "--reward", "1", "--cost", "1", "--stake", "-5"],
    ["econ", "crossval", "--r", "0.3", "--n", "1", "--reward", "-1", "--cost", "1", "--stake", "1"],
    ["econ", "crossval", "--r", "0.3", "--n", "1", "--reward", "1", "--cost", "1", "--stake", "1", "--p", "1.5"],
])
def test_cli_bad_input_exit_2(capsys, argv):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == "" and err.strip()


def test_cli_unparseable_number_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        _run(capsys, "econ", "quorum", "--r", "abc", "--n", "5")
    assert exc.value.code == 2
