"""A long run says what it will cost, once fine-tuning has run a few steps, with what would cut it."""

import io

from helpers import FakeTime
from rich.console import Console

from flowerft import precision
from flowerft.cli.progress_display import Display
from flowerft.cli.run_clock import RunClock, cost_line
from flowerft.config_files import make_config


def watched_run(config, monkeypatch, native_bfloat16=False):
    """A display on a fake clock, as `flowerft train` makes it for a log file, in its fine-tune phase."""
    auto = "bfloat16" if native_bfloat16 else "float32"  # what --precision auto would pick here
    monkeypatch.setattr(precision, "resolve", lambda p: auto if p == "auto" else p)
    out, now = io.StringIO(), FakeTime()
    display = Display(Console(file=out, width=120))
    display.clock = RunClock(now=now)
    display.callbacks("finetune", config)
    display.clock.begin_epoch("finetune", 0, 100)

    def steps(n, seconds):
        for _ in range(n):
            now.t += seconds
            display.clock.end_step()
            display.check_cost()
        return out.getvalue().splitlines()

    return steps


def test_a_run_with_hours_left_says_so_once_with_the_measured_options(monkeypatch):
    steps = watched_run(make_config(epochs_head=5, epochs_finetune=10, precision="float32"), monkeypatch,
                        native_bfloat16=True)
    assert steps(3, 9.0) == []  # the first step (tracing) is not timed: two timed steps are too few
    lines = steps(1, 9.0)
    # 3 timed steps of 9 s; 96 steps left in this epoch and 9 epochs of 100: 8,964 s.
    assert len(lines) == 1 and lines[0].startswith("about 2 h 29 min left; ")
    assert "--finetune-blocks 4 measured 3.6x faster" in lines[0] and "--precision bfloat16 1.5x" in lines[0]
    assert len(steps(20, 9.0)) == 1  # said once


def test_a_run_with_less_than_an_hour_left_says_nothing(monkeypatch):
    steps = watched_run(make_config(epochs_head=5, epochs_finetune=10), monkeypatch)
    assert steps(30, 3.4) == []  # about 56 minutes left


def test_only_options_not_in_use_are_offered():
    hours = 2 * 3600.0
    line = cost_line(hours, make_config(finetune_blocks=4, precision="bfloat16"), native_bfloat16=True)
    assert line == "about 2 h 00 min left"
    line = cost_line(hours, make_config(augment=True), native_bfloat16=False)
    assert "--finetune-blocks 4 measured 1.6x faster" in line and "bfloat16" not in line
    assert cost_line(3600.0, make_config(), native_bfloat16=True) is None
