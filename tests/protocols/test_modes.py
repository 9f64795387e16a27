"""One spec per mode: members drawn, runs escrowed, attestation and sealing, N rules."""

import pytest

from protocols import modes
from protocols.errors import InvalidParams


@pytest.mark.parametrize("mode, n, members, escrowed", [
    ("sampling", 3, 3, 3), ("cross-validation", 2, 1, 3), ("obfuscated", 2, 3, 3), ("tee", 1, 1, 1)])
def test_members_and_escrow_per_mode(mode, n, members, escrowed):
    s = modes.spec(mode)
    assert s.members(n) == members and s.escrowed_runs(n) == escrowed


def test_sealing_and_attestation_follow_the_mode():
    assert modes.spec("tee").attested and modes.spec("tee").sealed(False)
    assert not modes.spec("sampling").sealed(False) and modes.spec("sampling").sealed(True)
    assert modes.spec("obfuscated").pseudonymous and not modes.spec("sampling").pseudonymous


def test_n_rules_and_unknown_modes_are_typed_errors():
    modes.spec("sampling").check_n(5, 5)
    for bad in (0, 6, True, "3"):
        with pytest.raises(InvalidParams):
            modes.spec("sampling").check_n(bad, 5)
    with pytest.raises(InvalidParams, match="n must be 1"):
        modes.spec("tee").check_n(2, 5)
    with pytest.raises(InvalidParams, match="not served"):
        modes.spec("fast-and-loose")
    assert modes.MODES == ("sampling", "cross-validation", "obfuscated", "tee")
