"""`verinfer econ …`: the economics calculator (see `protocols/economics.py` for the math).

Wiring into `cluster/cli.py` (inside `build_parser`, after `sub = p.add_subparsers(...)`)::

    from cluster.econ_cli import add_parser as add_econ_parser
    add_econ_parser(sub)

`add_parser` sets `fn=run` on the `econ` parser, so `main`'s `args.fn(args)` works.

Commands (numbers accept decimals or fractions such as ``1/3``)::

    econ quorum   --r R --n N [--nodes M] [--json]
    econ min-n    --r R --target P [--nodes M] [--json]
    econ crossval --r R --n N --reward R --cost C --stake S
                  [--cheat-reward H] [--collusion-reward L] [--p P] [--json]

JSON keys:

* quorum   : ``probability``, ``model`` ("binomial" | "hypergeometric"), ``r``, ``n``,
             ``nodes``, ``dishonest`` (D = round(r*M), null without --nodes),
             ``binomial_probability`` (r**n, for comparison).
* min-n    : ``n`` (null if unreachable), ``probability`` at that n, ``model``, ``r``,
             ``target``, ``nodes``, ``dishonest``.
* crossval : ``min_p`` (null if no p in [0,1] makes honesty pay), ``min_p_closed_form``
             (whitepaper Corollary 1, C/((1-r)(R+S))) and ``min_p_lemma_form``
             (C/((1-r)(R+C+S)), what the lemmas give), both non-null only when the
             corollary's assumptions hold: N = 1, H = R and L = 2R (otherwise they
             describe a different game and are null); ``compute_multiplier_at_min_p``
             (1 + min_p*N); the inputs (``r``, ``n``, ``reward``, ``cost``, ``stake``,
             ``cheat_reward``, ``collusion_reward``); and, with --p, ``p``,
             ``honest_reward``, ``malicious_reward``, ``honesty_pays`` and
             ``compute_multiplier`` (1 + p*N).

Exit codes: 0 ok; 1 infeasible (no quorum size reaches the target / no check
probability makes honesty pay — the result is still printed, with nulls, and a
note goes to stderr); 2 bad input (r outside [0, 1), n < 1, negative amounts,
probabilities outside [0, 1]) with the message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction

from protocols import economics as econ

EXIT_OK, EXIT_INFEASIBLE, EXIT_USAGE = 0, 1, 2


def _number(text: str) -> Fraction:
    """argparse type: a finite decimal or fraction ("0.25", "1/3", "1e-6")."""
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `econ` and its subcommands on an argparse subparsers object."""
    e = subparsers.add_parser("econ", help="economics: quorum capture odds, minimum quorum, cross-validation p",
                              description="Economics calculator (math in protocols/economics.py).",
                              epilog="exit codes: 0 ok, 1 infeasible, 2 bad input")
    e.set_defaults(fn=run)
    sub = e.add_subparsers(dest="econ_cmd", required=True)

    q = sub.add_parser("quorum", help="probability that a quorum of N nodes is all dishonest")
    q.add_argument("--r", type=_number, required=True, help="fraction of dishonest nodes, in [0, 1)")
    q.add_argument("--n", type=int, required=True, help="quorum size N >= 1")
    q.add_argument("--nodes", type=int, default=None,
                   help="network size M: exact hypergeometric model with D = round(r*M) dishonest")
    q.add_argument("--json", action="store_true", help="print one JSON object")

    m = sub.add_parser("min-n", help="smallest quorum size with capture probability <= target")
    m.add_argument("--r", type=_number, required=True, help="fraction of dishonest nodes, in [0, 1)")
    m.add_argument("--target", type=_number, required=True, help="acceptable capture probability, in [0, 1]")
    m.add_argument("--nodes", type=int, default=None, help="network size M (hypergeometric model)")
    m.add_argument("--json", action="store_true", help="print one JSON object")

    c = sub.add_parser("crossval", help="minimum check probability p that makes honesty pay (Atoma App. A)")
    c.add_argument("--r", type=_number, required=True, help="fraction of dishonest nodes, in [0, 1)")
    c.add_argument("--n", type=int, required=True, help="number of verifiers N >= 1")
    c.add_argument("--reward", type=_number, required=True, help="reward R per request")
    c.add_argument("--cost", type=_number, required=True, help="execution cost C")
    c.add_argument("--stake", type=_number, required=True, help="collateral S slashed when caught")
    c.add_argument("--cheat-reward", type=_number, default=None, help="H (W1): cheat reward when unchecked (default R)")
    c.add_argument("--collusion-reward", type=_number, default=None,
                   help="L (W2): cheat reward when all checkers collude (default 2R)")
    c.add_argument("--p", type=_number, default=None, help="also evaluate both rewards at this check probability")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    sub.metavar = "{" + ",".join(sub.choices) + "}"  # (named so when missing)
    return e


def _f(x):
    return None if x is None else float(x)


def _check_r(r: Fraction) -> None:
    if not (0 <= r < 1):
        raise ValueError(f"--r must be in [0, 1), got {float(r):g}")


def _check_n(n: int, flag: str = "--n") -> None:
    if n < 1:
        raise ValueError(f"{flag} must be >= 1, got {n}")


def _check_nodes(nodes) -> None:
    if nodes is not None and nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {nodes}")


def _cmd_quorum(a) -> tuple[dict, int, str | None]:
    _check_r(a.r)
    _check_n(a.n)
    _check_nodes(a.nodes)
    out = {"model": "binomial", "r": _f(a.r), "n": a.n, "nodes": a.nodes, "dishonest": None,
           "binomial_probability": econ.p_all_dishonest(a.r, a.n)}
    if a.nodes is None:
        out["probability"] = out["binomial_probability"]
    else:
        d = econ.dishonest_count(a.r, a.nodes)
        out.update(model="hypergeometric", dishonest=d, probability=econ.p_all_dishonest_finite(a.nodes, d, a.n))
    return out, EXIT_OK, None


def _cmd_min_n(a) -> tuple[dict, int, str | None]:
    _check_r(a.r)
    _check_nodes(a.nodes)
    if not (0 <= a.target <= 1):
        raise ValueError(f"--target must be in [0, 1], got {float(a.target):g}")
    d = None if a.nodes is None else econ.dishonest_count(a.r, a.nodes)
    out = {"model": "binomial" if a.nodes is None else "hypergeometric", "r": _f(a.r), "target": _f(a.target),
           "nodes": a.nodes, "dishonest": d, "n": None, "probability": None}
    try:
        n = econ.min_quorum(a.r, a.target, M=a.nodes, D=d)
    except econ.Infeasible as exc:
        return out, EXIT_INFEASIBLE, str(exc)
    out["n"] = n
    out["probability"] = (econ.p_all_dishonest(a.r, n) if a.nodes is None
                          else econ.p_all_dishonest_finite(a.nodes, d, n))
    return out, EXIT_OK, None


def _cmd_crossval(a) -> tuple[dict, int, str | None]:
    _check_r(a.r)
    _check_n(a.n)
    for flag, v in (("--reward", a.reward), ("--cost", a.cost), ("--stake", a.stake),
                    ("--cheat-reward", a.cheat_reward), ("--collusion-reward", a.collusion_reward)):
        if v is not None and v < 0:
            raise ValueError(f"{flag} must be >= 0, got {float(v):g}")
    if a.p is not None and not (0 <= a.p <= 1):
        raise ValueError(f"--p must be in [0, 1], got {float(a.p):g}")
    R, C, S = a.reward, a.cost, a.stake
    H = R if a.cheat_reward is None else a.cheat_reward
    L = 2 * R if a.collusion_reward is None else a.collusion_reward
    out = {"r": _f(a.r), "n": a.n, "reward": _f(R), "cost": _f(C), "stake": _f(S),
           "cheat_reward": _f(H), "collusion_reward": _f(L),
           "min_p": None, "compute_multiplier_at_min_p": None,
           "min_p_closed_form": None, "min_p_lemma_form": None}
    code, note = EXIT_OK, None
    try:
        mp = econ.min_p(a.r, a.n, R, C, S, H, L, exact=True)
        out["min_p"] = float(mp)
        out["compute_multiplier_at_min_p"] = econ.compute_multiplier(mp, a.n)
    except econ.Infeasible as exc:
        code, note = EXIT_INFEASIBLE, str(exc)
    if a.n == 1 and H == R and L == 2 * R:
        for key, fn in (("min_p_closed_form", econ.min_p_closed_form), ("min_p_lemma_form", econ.min_p_lemma_form)):
            try:
                out[key] = fn(a.r, R, C, S)
            except econ.Infeasible:  # zero denominator (R + S = 0 with C > 0): stays null
                pass
    if a.p is not None:
        h = econ.honest_reward(a.p, a.r, a.n, R, C, exact=True)
        m = econ.malicious_reward(a.p, a.r, a.n, R, C, S, H, L, exact=True)
        out.update(p=_f(a.p), honest_reward=float(h), malicious_reward=float(m), honesty_pays=h > m,
                   compute_multiplier=econ.compute_multiplier(a.p, a.n))
    return out, code, note


def _g(x) -> str:
    return "-" if x is None else f"{x:.6g}"


def _text(cmd: str, o: dict) -> str:
    if cmd == "quorum":
        lines = [f"P(all {o['n']} quorum members dishonest) = {_g(o['probability'])}   [{o['model']}]",
                 f"  r = {_g(o['r'])}"]
        if o["nodes"] is not None:
            lines[-1] += f", M = {o['nodes']} nodes, D = {o['dishonest']} dishonest"
            lines.append(f"  large-network r^n = {_g(o['binomial_probability'])}")
        return "\n".join(lines)
    if cmd == "min-n":
        where = f"r = {_g(o['r'])}" + ("" if o["nodes"] is None else f", M = {o['nodes']}, D = {o['dishonest']}")
        if o["n"] is None:
            return f"no quorum size reaches P(captured) <= {_g(o['target'])} ({where}) [{o['model']}]"
        return (f"minimum quorum n = {o['n']}  (P(captured) = {_g(o['probability'])} <= {_g(o['target'])})"
                f"   [{o['model']}]\n  {where}")
    lines = [f"cross-validation: r = {_g(o['r'])}, N = {o['n']}, R = {_g(o['reward'])}, C = {_g(o['cost'])}, "
             f"S = {_g(o['stake'])}, H = {_g(o['cheat_reward'])}, L = {_g(o['collusion_reward'])}"]
    if o["min_p"] is None:
        lines.append("  min p            : none — no check probability in [0, 1] makes honesty pay")
    else:
        lines.append(f"  min p            : {_g(o['min_p'])}   (honest > malicious for every p above; "
                     f"compute x{_g(o['compute_multiplier_at_min_p'])})")
    if o["min_p_closed_form"] is not None:
        lines.append(f"  corollary 1      : {_g(o['min_p_closed_form'])}   C/((1-r)(R+S)), conservative")
        lines.append(f"  lemma form       : {_g(o['min_p_lemma_form'])}   C/((1-r)(R+C+S))")
    if "p" in o:
        verdict = "honesty pays" if o["honesty_pays"] else "cheating pays (or ties)"
        lines.append(f"  at p = {_g(o['p'])}: honest {_g(o['honest_reward'])}, malicious "
                     f"{_g(o['malicious_reward'])} -> {verdict}; compute x{_g(o['compute_multiplier'])}")
    return "\n".join(lines)


_COMMANDS = {"quorum": _cmd_quorum, "min-n": _cmd_min_n, "crossval": _cmd_crossval}


def run(args) -> int:
    """Execute a parsed `econ` command; returns the exit code."""
    cmd = getattr(args, "econ_cmd", None)
    if cmd not in _COMMANDS:
        print("verinfer econ: choose one of: " + ", ".join(_COMMANDS), file=sys.stderr)
        return EXIT_USAGE
    try:
        out, code, note = _COMMANDS[cmd](args)
    except ValueError as exc:  # bad input (economics.Infeasible is handled inside the commands)
        print(f"verinfer econ {cmd}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(out) if args.json else _text(cmd, out))
    if note:
        print(f"verinfer econ {cmd}: {note}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m cluster.econ_cli econ quorum …`) until cli.py wires it in."""
    p = argparse.ArgumentParser(prog="verinfer")
    add_parser(p.add_subparsers(dest="cmd", required=True))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
