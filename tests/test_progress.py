"""Plain progress lines when stderr is not a terminal: every 5%, at least every 30 s, and at the end."""

from __future__ import annotations

import re
import time

from potstill import progress
from potstill.progress import PlainTracker, clock_text, track

LINE = re.compile(
    r"^(?P<desc>.+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\), (?P<rate>[\d,.]+) (?P<unit>\S+)/s, "
    r"ETA (?P<eta>\d\d:\d\d|--:--)"
)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_five_percent_with_rate_and_eta():
    clock, lines = FakeClock(), []
    t = PlainTracker(200, "eval kd/test", clock=clock, emit=lines.append)
    for _ in range(200):
        clock.now += 0.5
        t.advance(1, tokens=20)
    assert len(lines) == 21  # the first item, then 5%, 10%, ... 100%
    assert lines[0] == "eval kd/test: 1/200 (0%), 40 tok/s, ETA 01:40"
    first, last = LINE.match(lines[1]).groupdict(), LINE.match(lines[-1]).groupdict()
    assert first == {
        "desc": "eval kd/test",
        "done": "10",
        "total": "200",
        "pct": "5",
        "rate": "40",
        "unit": "tok",
        "eta": "01:35",
    }  # 10 items in 5 s: 190 left take 95 s
    assert (last["done"], last["pct"], last["eta"]) == ("200", "100", "00:00")
    t.finish()
    assert len(lines) == 21  # the last line is not repeated


def test_a_line_at_least_every_30_seconds():
    clock, lines = FakeClock(), []
    t = PlainTracker(10_000, "generate", clock=clock, emit=lines.append)
    t.advance(1)  # the first item: a line at once
    clock.now += 29
    t.advance(1)
    t.tick()
    assert len(lines) == 1
    clock.now += 2  # 31 s since the last line, under 5% done
    t.advance(1)
    assert len(lines) == 2 and "3/10000 (0%)" in lines[-1] and "items/s" in lines[-1]
    clock.now += 45  # no item finished for 45 s: the heartbeat still prints
    t.tick()
    assert len(lines) == 3 and lines[-1].startswith("generate: 3/10000 (0%)")


def test_fields_and_small_totals():
    clock, lines = FakeClock(), []
    t = PlainTracker(3, "generate", clock=clock, emit=lines.append)
    for _ in range(3):
        clock.now += 1
        t.advance(1, tokens=5, retries=0, cost="$0.01")
    assert len(lines) == 3 and lines[-1].endswith("(100%), 5 tok/s, ETA 00:00, retries=0, cost=$0.01")


def test_track_prints_plain_lines_on_a_pipe(capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.05)
    with track(4, "capture") as bar:
        bar.advance(2, tokens=10)
        time.sleep(0.3)  # a slow batch: the heartbeat thread prints meanwhile
        bar.advance(2, tokens=10)
    err = capsys.readouterr().err.splitlines()
    assert all(LINE.match(x) for x in err) and len(err) >= 3
    assert err[0].startswith("capture: 2/4 (50%)") and err[-1].startswith("capture: 4/4 (100%)")
    assert any(x.startswith("capture: 2/4") for x in err[1:-1])  # heartbeat


def test_track_reports_where_a_failed_step_stopped(capsys):
    try:
        with track(100, "eval") as bar:
            bar.advance(1)
            bar.advance(1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("eval: 2/100 (2%)")


def test_clock_text():
    assert (clock_text(0), clock_text(95), clock_text(3599), clock_text(3723)) == ("00:00", "01:35", "59:59", "1:02:03")
