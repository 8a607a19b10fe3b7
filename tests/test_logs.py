"""The progress reporter's log lines: counts, rate and ETA."""

from __future__ import annotations

import pytest

from autointerp_full import logs


def at(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr(logs.time, "perf_counter", lambda: seconds)


def test_fast_work_is_counted_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    at(monkeypatch, 100.0)
    progress = logs.Progress(40_000, "caching", unit="tok")
    progress.done = 10_000
    at(monkeypatch, 110.0)
    assert progress.status() == "10000/40000 tok, 1,000.0 tok/s, ETA 00:30"


def test_slow_work_is_counted_per_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    at(monkeypatch, 0.0)
    progress = logs.Progress(23, "explain and score", unit="latent")
    progress.done = 2
    at(monkeypatch, 60.0)
    assert progress.status() == "2/23 latent, 2.0 latent/min, ETA 10:30"


def test_nothing_done_yet_has_no_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    at(monkeypatch, 0.0)
    progress = logs.Progress(5, "scoring", unit="latent")
    at(monkeypatch, 3.0)
    assert progress.status() == "0/5 latent, 0.0 latent/s"
