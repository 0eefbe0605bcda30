"""Progress of long loops: log lines with rate and ETA in batch logs, a heartbeat during one slow item."""

from __future__ import annotations

import io
import re
import time

import pytest

from ctpipe.progress import Progress, choose_mode, format_seconds, status_line, track


def test_status_line_has_count_rate_and_eta() -> None:
    line = status_line("prep", 3, 10, "volumes", 6.0)
    assert line == "prep: 3/10 volumes (30%), 0.5 volumes/s, elapsed 6 s, ETA 14 s"
    assert "50 s/volume," in status_line("prep", 1, 10, "volumes", 50.0)  # slow items: seconds per item
    assert "20 s/batch," in status_line("eval", 1, 3, "batches", 20.0)
    assert "ETA" not in status_line("prep", 10, 10, "volumes", 5.0)
    assert format_seconds(185) == "3 min 05 s" and format_seconds(3720) == "1 h 02 min"


def test_log_mode_off_a_terminal_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTPIPE_PROGRESS", raising=False)
    assert choose_mode(io.StringIO()) == "log"  # a pipe / batch log
    monkeypatch.setenv("CTPIPE_PROGRESS", "off")
    assert choose_mode(io.StringIO()) == "off"
    monkeypatch.setenv("CTPIPE_PROGRESS", "loud")
    with pytest.raises(ValueError, match="CTPIPE_PROGRESS"):
        choose_mode(io.StringIO())


def test_heartbeat_speaks_while_one_item_is_slow() -> None:
    stream = io.StringIO()
    with Progress(2, "eval", "batches", interval_s=0.2, stream=stream, mode="log") as progress:
        time.sleep(1.0)  # one slow item: the loop itself never gets to print
        progress.update()
        progress.update()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("eval: 0/2 batches (0%)")
    heartbeats = [line for line in lines if re.match(r"eval: 0/2 batches .*elapsed \d+ s, ETA unknown", line)]
    assert len(heartbeats) >= 2
    assert lines[-1].startswith("eval: done, 2 batches in")


def test_track_counts_every_item_and_reports_rate() -> None:
    stream = io.StringIO()
    seen = []
    for item in track(range(5), "prep", "files", interval_s=0.05, stream=stream, mode="log"):
        time.sleep(0.03)
        seen.append(item)
    assert seen == list(range(5))
    text = stream.getvalue()
    assert re.search(r"prep: [1-4]/5 files \(\d+%\), [\d.]+ files/s, elapsed \d+ s, ETA \d+ s", text), text
    assert text.splitlines()[-1].startswith("prep: done, 5 files in")


def test_off_mode_is_silent() -> None:
    stream = io.StringIO()
    assert list(track([1, 2], "x", stream=stream, mode="off")) == [1, 2]
    assert stream.getvalue() == ""


def test_bar_mode_draws_tqdm_instead_of_log_lines() -> None:
    stream = io.StringIO()
    assert list(track(range(3), "infer", "volumes", stream=stream, mode="bar")) == [0, 1, 2]
    text = stream.getvalue()
    assert "infer: 100%" in text and "3/3" in text and "ETA" not in text and "done," not in text
