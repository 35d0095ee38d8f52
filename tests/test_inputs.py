"""tests/inputs.py: a missing input skips the test, saying why, except under CI=true, where it fails it."""

from __future__ import annotations

import pytest

from tests.inputs import missing_input


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_a_missing_input_skips_with_its_reason(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="no frobnicator on PATH"):
        missing_input("no frobnicator on PATH")


@pytest.mark.parametrize("ci", ["true", "True", "1"])
def test_under_ci_a_missing_input_fails_with_its_reason(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="no frobnicator on PATH; CI=true, so it must be there"):
        missing_input("no frobnicator on PATH")
