"""sollol_ops.timings: the phases `up --timings` prints, and the parser the benchmark reads them with."""

from __future__ import annotations

import time

import pytest

from sollol_ops import timings


def test_phases_are_back_to_back_and_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    clock = timings.PhaseClock(enabled=True)
    clock.mark(timings.FIRST_PHASE)
    time.sleep(0.01)
    clock.mark("work")
    clock.mark("nothing")
    clock.report()
    err = capsys.readouterr().err
    parsed = timings.parse_lines(err + "unrelated line\nsollol-ops: timing: broken x\n")
    assert [n for n, _ in parsed] == [timings.FIRST_PHASE, "work", "nothing"]
    first, work, nothing = (s for _, s in parsed)
    assert first > 0  # this interpreter started before the test
    assert work >= 0.01 > nothing >= 0
    total = float(err.strip().splitlines()[-1].rsplit(" ", 1)[1])
    assert total == pytest.approx(sum(s for _, s in parsed), abs=1e-3)


def test_silent_unless_enabled(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = timings.PhaseClock()
    clock.mark("a")
    clock.report()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(timings.TRACE_ENV, "0")
    assert not timings.wanted()
    monkeypatch.setenv(timings.TRACE_ENV, "1")
    assert timings.wanted() and timings.wanted(True)
