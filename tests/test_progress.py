"""The training display: what fits at 80 and 120 columns, plain lines in logs, the run's ETA."""

import io
import re

import pytest
from helpers import FakeTime
from rich.console import Console

from flowerft.cli.progress_display import training_display
from flowerft.cli.run_clock import RunClock
from flowerft.cli.train_command import phase_table
from flowerft.config_files import make_config
from flowerft.training.summary import PhaseResult, summarize

TIME = re.compile(r"\d:\d\d:\d\d")


def test_run_clock_waits_for_fine_tuning_before_giving_an_eta():
    now = FakeTime()
    clock = RunClock({"head": 2, "finetune": 3}, now=now)
    clock.begin_epoch("head", 0, 10)
    for _ in range(10):
        now.t += 0.01
        clock.end_step()
    clock.end_epoch()
    assert clock.eta() is None and "fine-tuning" in clock.waiting()
    assert clock.summary().startswith("run 1/5 epochs, ETA once fine-tuning")
    clock.begin_epoch("finetune", 0, 10)
    for _ in range(4):  # the first step (tracing) is not timed; the next three take 2 s each
        now.t += 2.0
        clock.end_step()
    # 6 steps left in this epoch and 2 more epochs of 10 steps, at 2 s a step
    assert clock.eta() == pytest.approx(6 * 2 + 2 * 10 * 2)
    assert clock.summary() == "run 2/5 epochs, ETA 0:00:52"
    for _ in range(6):
        now.t += 2.0
        clock.end_step()
    clock.end_epoch()  # the measured epoch (20 s) now sets the pace
    assert clock.eta() == pytest.approx(2 * 20)
    clock.begin_epoch("finetune", 1, 10)
    assert clock.epochs_done == 3 and clock.eta() == pytest.approx(2 * 20)
    clock.end_epoch()
    clock.begin_epoch("finetune", 2, 10)
    clock.end_epoch()
    assert clock.eta() == 0 and clock.summary() == "run 5/5 epochs, ETA 0:00:00"


def drive(display, phase, config, epoch, steps, done, logs):
    """What Keras calls on the display's callback for `done` steps of absolute epoch `epoch`."""
    (callback,) = display.callbacks(phase, config)
    callback.set_params({"steps": steps, "epochs": epoch + 1})
    callback.on_epoch_begin(epoch)
    for _ in range(done):
        callback.on_train_batch_end(0, logs)
    return callback


def rendered(display, width):
    out = Console(width=width, force_terminal=True, record=True, file=io.StringIO())
    out.print(display.progress.get_renderable())
    return out.export_text().splitlines()


LOGS = {"loss": 0.123456, "accuracy": 0.9375}
FINAL = {"loss": 0.1, "accuracy": 0.95, "val_loss": 0.2, "val_accuracy": 0.9}


@pytest.mark.parametrize("width", [80, 100, 120])
def test_a_terminal_row_keeps_bar_steps_and_times_and_fits_the_width(width):
    console = Console(width=width, force_terminal=True, file=io.StringIO())
    config = make_config(epochs_head=5, epochs_finetune=10)
    with training_display(console) as display:
        callback = drive(display, "finetune", config, epoch=7, steps=82, done=15, logs=LOGS)
        lines = rendered(display, width)
    row = next(line for line in lines if line.startswith("finetune 3/10"))
    assert "━" in row and "15/82" in row and len(TIME.findall(row)) == 2, row
    assert all(len(line) <= width for line in lines), lines
    assert "loss 0.123  acc 0.938" in row  # whole metrics only: at 80 columns, two fit
    run = next(line for line in lines if line.startswith("run"))
    assert "7/15" in run and "fine-tuning" not in run  # no ETA yet: not even fine-tuning has a speed
    callback.on_epoch_end(7, FINAL)
    row = next(line for line in rendered(display, width) if line.startswith("finetune 3/10"))
    assert "15/82" in row and "val_acc 0.900" in row  # a finished epoch leads with its validation accuracy


def test_narrow_terminals_drop_metrics_first():
    console = Console(width=66, force_terminal=True, file=io.StringIO())
    with training_display(console) as display:
        drive(display, "head", make_config(epochs_head=2, epochs_finetune=1), epoch=0, steps=82, done=5, logs=LOGS)
        row = next(line for line in rendered(display, 66) if line.startswith("head 1/2"))
    assert "5/82" in row and len(TIME.findall(row)) == 2 and "loss" not in row


def test_redirected_output_gets_one_whole_plain_line_per_epoch_at_once():
    stream = io.StringIO()
    console = Console(file=stream, width=80)  # not a terminal: a log file, a pipe, CI
    config = make_config(epochs_head=1, epochs_finetune=3)
    with training_display(console) as display:
        assert display.progress is None
        display.notify("run dir: runs/x")
        callback = drive(display, "head", config, epoch=0, steps=4, done=4, logs=LOGS)
        assert stream.getvalue() == "run dir: runs/x\n"  # nothing per step
        callback.on_epoch_end(0, FINAL)
        first = stream.getvalue().splitlines()[-1]  # written when the epoch ends, not at exit
        callback = drive(display, "finetune", config, epoch=3, steps=4, done=4, logs=LOGS)
        callback.on_epoch_end(3, FINAL)
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert first.startswith("head 1/1  4/4 steps") and "val_acc 0.900  val_loss 0.200  acc 0.950  loss 0.100" in first
    assert len(first) > 80  # not cut to a terminal's width
    # A resumed run's third fine-tuning epoch is numbered as such (Keras's epoch index 3 = head 1 + 2).
    assert text.splitlines()[-1].startswith("finetune 3/3  4/4 steps")


def test_summary_row_shows_the_best_epoch_with_its_own_loss():
    head = PhaseResult("head", 2)
    head.add_history([
        {"epoch": 1, "val_accuracy": 0.8, "val_loss": 0.5},
        {"epoch": 2, "val_accuracy": 0.7, "val_loss": 0.3},
    ])
    assert (head.best_epoch, head.best_epoch_val_loss, head.best_val_loss) == (1, 0.5, 0.3)
    metrics = summarize(head, PhaseResult("finetune", 0), "checkpoints/final.keras")
    out = Console(width=120, record=True, file=io.StringIO())
    out.print(phase_table(metrics))
    row = next(line for line in out.export_text().splitlines() if "head" in line)
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    # phase, epochs, best epoch, its val acc, its val loss (not the phase's lowest), last val acc, last val loss
    assert cells[:7] == ["head", "2/2", "1", "80.0%", "0.5000", "70.0%", "0.3000"]
    assert metrics["phases"]["head"]["best_epoch_val_loss"] == 0.5


def test_a_redirected_train_log_gets_each_epoch_as_it_ends(tmp_path):
    """`flowerft train > log` (nohup, cluster logs): an epoch's line is there while training goes on."""
    import subprocess
    import sys

    from helpers import make_image_folder

    folder = make_image_folder(tmp_path / "flowers", per_class=8)
    # Xception: each fine-tuning epoch takes seconds (and saves 80 MB of state), so the two epochs
    # left after the first line cannot both be over by the time the test looks.
    args = [sys.executable, "-m", "flowerft", "train", "--data-dir", str(folder), "--weights", "none",
            "--image-size", "71", "--batch-size", "4", "--epochs-head", "1", "--epochs-finetune", "3",
            "--run-dir", str(tmp_path / "run")]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in child.stdout:
        seen.append(line)
        if line.startswith("finetune 1/3"):
            break
    running = child.poll() is None  # two fine-tuning epochs still to go
    rest = child.stdout.read()
    assert child.wait() == 0, "".join(seen) + rest
    assert running, "the first fine-tuning epoch's line arrived only when the run ended"
    text = "".join(seen) + rest
    assert "\x1b" not in text and "\r" not in text
    epochs = [line for line in text.splitlines() if line.startswith(("head ", "finetune "))]
    assert [line.split("  ")[0] for line in epochs] == ["head 1/1", "finetune 1/3", "finetune 2/3", "finetune 3/3"]
    assert all("val_acc" in line and "val_loss" in line and "| run " in line for line in epochs)


def test_long_runs_keep_their_counts_whole_and_the_screen_shows_the_current_epoch():
    console = Console(width=80, height=20, force_terminal=True, file=io.StringIO())
    config = make_config(epochs_head=0, epochs_finetune=100)
    with training_display(console) as display:
        for epoch in range(30):
            callback = drive(display, "finetune", config, epoch=epoch, steps=1200, done=1200, logs=LOGS)
            callback.on_epoch_end(epoch, FINAL)
        drive(display, "finetune", config, epoch=30, steps=1200, done=7, logs=LOGS)
        lines = rendered(display, 80)
    assert len(lines) <= 20 and all(len(line) <= 80 for line in lines), lines
    assert any(line.startswith("finetune 31/100 ") and "7/1200" in line for line in lines)
    assert "━" * 20 in next(line for line in lines if line.startswith("finetune 30/100 "))  # the bar keeps its width


def test_micro_batches_are_counted_as_the_batches_they_make_up():
    stream = io.StringIO()
    console = Console(file=stream, width=80)
    config = make_config(epochs_head=0, epochs_finetune=1, batch_size=16, micro_batch=4)
    with training_display(console) as display:
        (callback,) = display.callbacks("finetune", config)
        callback.set_params({"steps": 40, "epochs": 1})  # Keras's steps: 10 batches of 4 micro-batches
        callback.on_epoch_begin(0)
        for step in range(40):
            callback.on_train_batch_end(step, LOGS)
        callback.on_epoch_end(0, FINAL)
    assert stream.getvalue().startswith("finetune 1/1  10/10 steps"), stream.getvalue()


def test_a_log_says_why_there_is_no_eta_yet_once():
    stream = io.StringIO()
    config = make_config(epochs_head=3, epochs_finetune=2)
    with training_display(Console(file=stream, width=80)) as display:
        for epoch in range(3):
            drive(display, "head", config, epoch=epoch, steps=2, done=2, logs=LOGS).on_epoch_end(epoch, FINAL)
    lines = stream.getvalue().splitlines()
    assert sum("ETA once fine-tuning has run a few steps" in line for line in lines) == 1, lines
    assert lines[-1].endswith("| run 3/5 epochs")


def test_at_80_columns_the_start_line_breaks_between_words_and_the_run_row_keeps_its_note():
    console = Console(width=80, force_terminal=True, record=True, file=io.StringIO())
    start = ("training on CPU (2 cores): float32, cache memory, xception at 224 px, batch 16 in micro-batches of 4, "
             "recipe flowerft; weights none: from scratch, the whole network and its BatchNorm learn")
    config = make_config(epochs_head=5, epochs_finetune=10)
    with training_display(console) as display:
        display.notify(start)
        drive(display, "head", config, epoch=0, steps=82, done=5, logs=LOGS)
        lines = rendered(display, 80)
    text = console.export_text()  # the recording also holds the live rows (without their cursor moves)
    printed = text[text.index("training on"):].splitlines()[:3]
    assert all(len(line.rstrip()) <= 80 for line in printed), printed
    assert " ".join(" ".join(printed).split()).startswith(start), printed  # wrapped between words, none cut in two
    assert len(printed[0].split()) > 1 and all(line == line.rstrip() or line.endswith(" ") for line in printed)
    run = next(line for line in lines if line.startswith("run"))
    assert run.rstrip().endswith("ETA after head phase"), run  # whole, not cut to "ETA once fine-tuni..."


def test_at_80_columns_the_summary_headers_take_one_line():
    metrics = summarize(PhaseResult("head", 5), PhaseResult("finetune", 10), "checkpoints/final.keras")
    out = Console(width=80, record=True, file=io.StringIO())
    out.print(phase_table(metrics))
    lines = out.export_text().splitlines()
    header = next(i for i, line in enumerate(lines) if "phase" in line)
    assert "last loss" in lines[header] and "time" in lines[header]
    assert "━" in lines[header + 1] or "─" in lines[header + 1] or "┡" in lines[header + 1], lines  # rule right below


def test_at_80_columns_the_summary_shows_every_value_whole():
    metrics = summarize(PhaseResult("head", 5), PhaseResult("finetune", 10), "checkpoints/final.keras")
    metrics["phases"]["finetune"].update(epochs_run=10, best_epoch=12, best_val_accuracy=0.975, best_epoch_val_loss=0.1234,
                                         last_val_accuracy=0.97, last_val_loss=0.1345, wall_time_s=1234.4)
    out = Console(width=80, record=True, file=io.StringIO())
    out.print(phase_table(metrics))
    text = out.export_text()
    assert "…" not in text and "1234 s" in text and "0.1345" in text, text


def test_with_patience_the_eta_is_an_upper_bound_and_a_phase_ended_early_shortens_the_run():
    import types

    stream = io.StringIO()
    config = make_config(epochs_head=4, epochs_finetune=3, patience=1)
    with training_display(Console(file=stream, width=80)) as display:
        for epoch in range(2):  # early stopping ends the head phase after 2 of its 4 epochs
            callback = drive(display, "head", config, epoch=epoch, steps=2, done=2, logs=LOGS)
            callback.on_epoch_end(epoch, FINAL)
        callback._model = types.SimpleNamespace(stop_training=True)
        callback.on_train_end()
        callback = drive(display, "finetune", config, epoch=4, steps=5, done=5, logs=LOGS)
        callback.on_epoch_end(4, FINAL)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("finetune 1/3") and "| run 3/5 epochs, ETA at most " in last, last
