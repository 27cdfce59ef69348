"""How ``watch`` draws: in place on a terminal, changed lines only elsewhere."""

from __future__ import annotations

import pytest

from core4celery.cli.watch import Screen, View, bar


def test_bar_shows_fraction_and_percent() -> None:
    assert bar(0.5) == "[##########..........]  50%"
    assert bar(None) == "[....................]    -"
    assert bar(1.0).endswith("100%")


def test_terminal_redraws_the_block_in_place(capsys: pytest.CaptureFixture[str]) -> None:
    screen = Screen(tty=True)
    screen.show(View({"a": "job a 10%", "b": "job b 0%"}))
    first = capsys.readouterr().out
    screen.show(View({"a": "job a 20%", "b": "job b 5%"}))
    second = capsys.readouterr().out
    assert "\x1b[" not in first and first == "job a 10%\njob b 0%\n"
    assert second.startswith("\x1b[2F\x1b[J") and second.endswith("job a 20%\njob b 5%\n")


def test_pipe_prints_only_changed_lines(capsys: pytest.CaptureFixture[str]) -> None:
    screen = Screen(tty=False)
    screen.show(View({"a": "job a 10%", "b": "job b 0%"}))
    screen.show(View({"a": "job a 10%", "b": "job b 50%"}))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "\x1b" not in "".join(lines)
    assert lines[-1].endswith("job b 50%") and lines[0].endswith("job a 10%")
