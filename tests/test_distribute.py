"""tf.distribute: mirrored replicas and multi-worker training give a single device's weights.

Each test runs TensorFlow in subprocesses: logical devices and collective ops can only be set
up before TensorFlow starts, and a multi-worker run is several processes by nature.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import assert_same_weights, assert_trained, one_line_error, save_tiny_pretrained, tiny_base_under_head
from typer.testing import CliRunner

from flowerft.cli import app

runner = CliRunner()
TRAIN = ["--weights", "none", "--backbone", "mobilenet", "--image-size", "32", "--batch-size", "4",
         "--epochs-head", "2", "--epochs-finetune", "2"]


def pretrained(folder: Path) -> list[str]:
    """TRAIN from a "pretrained" tiny base (its weights file beside `folder`): BatchNorm stays frozen.

    From scratch (--weights none) BatchNorm learns each replica's batch statistics, which differ
    from the whole batch's: only pretrained runs (the README's claim) equal one device.
    """
    return ["--weights", str(folder.parent / "tiny_pretrained.weights.h5"), *TRAIN[2:]]
EXPECTED_EPOCHS = [("head", 1), ("head", 2), ("finetune", 3), ("finetune", 4)]
QUIET = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

# Every run trains helpers' tiny base, whose weights move in a few steps: an all-reduce that
# lost or scaled a replica's gradients would change the base's weights, not just a bias.
TINY = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from helpers import tiny_base_under_head
"""
WORKER = TINY + """
from flowerft.cli import app
with tiny_base_under_head():
    app(sys.argv[1:])
"""
MIRRORED = TINY + """
import tensorflow as tf

# Two logical CPU devices stand in for two GPUs; TensorFlow allows this before it starts.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from flowerft.cli import app
with tiny_base_under_head():
    app(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def folder(image_folders):
    # 36 training images and 6 validation ones: every batch of 4 splits evenly in two.
    folder = image_folders(per_class=16)
    save_tiny_pretrained(folder.parent / "tiny_pretrained.weights.h5")
    return folder


@pytest.fixture(scope="module")
def one_device(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    with tiny_base_under_head():
        result = runner.invoke(app, ["train", "--data-dir", str(folder), *pretrained(folder), "--distribute", "none", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert_trained(run)  # the base and the head learned from their start: equal weights compare something
    return run


def history(run):
    return [(r["phase"], r["epoch"]) for r in json.loads((run / "history.json").read_text())]


def test_two_mirrored_replicas_give_the_weights_of_one_device(folder, one_device, tmp_path):
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-c", MIRRORED, "train", "--data-dir", str(folder), *pretrained(folder),
                          "--distribute", "mirrored", "--run-dir", str(run)],
                         capture_output=True, text=True, env=QUIET, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MirroredStrategy, 2 replicas" in out.stdout
    assert_same_weights(run, one_device, rtol=1e-5, atol=1e-7)  # global batch 4 = 2 + 2 per step, BatchNorm frozen


def free_ports(n):
    """Ports free now. The workers' gRPC servers must bind them themselves, so another process can
    take one in between: start_workers' callers retry on "Could not start gRPC server"."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


PORT_TAKEN = "Could not start gRPC server"
# The README: "If a worker dies, the others stop within seconds".
LOST_WORKER_SECONDS = 20


def start_workers(folder, run, cwd, *extra):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        env = {**QUIET, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, "train", "--data-dir", str(folder), *pretrained(folder), "--distribute", "multiworker",
             "--run-dir", str(run), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd))
    return workers


def train_workers(folder, run, cwd, *extra, attempts=3):
    """Both workers to the end, started again on new ports if a port was taken before they bound it."""
    for _ in range(attempts):
        outputs = finish(start_workers(folder, run, cwd, *extra))
        if not any(PORT_TAKEN in err for _, _, err in outputs):
            return outputs
    pytest.fail(f"no free ports for the workers in {attempts} attempts")


def finish(workers, timeout=240):
    """Each worker's (exit code, stdout, stderr); a worker that could not bind its port stops the others,
    which would wait for it forever."""
    deadline, outputs = time.monotonic() + timeout, {}
    while len(outputs) < len(workers):
        for index, worker in enumerate(workers):
            if index not in outputs:
                try:
                    out, err = worker.communicate(timeout=0.5)  # reads the pipes while it waits
                    outputs[index] = (worker.returncode, out, err)
                except subprocess.TimeoutExpired:
                    pass
        if any(PORT_TAKEN in err for _, _, err in outputs.values()) and len(outputs) < len(workers):
            for worker in workers:
                worker.kill()
        elif time.monotonic() > deadline:
            for worker in workers:
                worker.kill()
            pytest.fail("a worker did not finish in time")
    return [outputs[index] for index in range(len(workers))]


def running_workers(folder, run, cwd, *extra, attempts=3):
    """Two workers past their first epoch (started again on new ports if a port was taken)."""
    progress = run / "state" / "progress.json"
    for _ in range(attempts):
        workers = start_workers(folder, run, cwd, *extra)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and all(w.poll() is None for w in workers):
            if progress.is_file() and json.loads(progress.read_text())["epochs_done"] >= 1:
                return workers
            time.sleep(0.05)
        outputs = finish(workers, timeout=30)
        assert any(PORT_TAKEN in err for _, _, err in outputs), f"the run ended before a worker could be killed: {outputs}"
    pytest.fail(f"no free ports for the workers in {attempts} attempts")


def summary_rows(stdout):
    """The summary table's rows without their last cell (wall time, which each process measures)."""
    return [line.rsplit("│", 2)[0] for line in stdout.splitlines() if line.startswith(("│ head", "│ finetune"))]


def test_two_workers_on_loopback_train_as_one_device_and_only_the_chief_writes(folder, one_device, tmp_path):
    run = tmp_path / "run"
    (tmp_path / "w").mkdir()
    outputs = train_workers(folder, run, tmp_path / "w")
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
        assert "MultiWorkerMirroredStrategy, 2 replicas" in out
    (_, chief, _), (_, other, _) = outputs
    assert summary_rows(chief) == summary_rows(other) and summary_rows(chief)  # the workers agree
    assert history(run) == EXPECTED_EPOCHS
    for name in ("config.yaml", "metrics.json", "splits.json", "checkpoints/final.keras"):
        assert (run / name).is_file(), name
    assert not (run / "state").exists()
    assert (tmp_path / "w" / "runs" / "latest").read_text().splitlines()[0] == str(run)  # the chief's pointer only
    key = hashlib.sha1(str(run).encode()).hexdigest()[:12]
    assert not (Path(tempfile.gettempdir()) / f"flowerft-worker1-{key}").exists()  # the other worker's folder is gone
    assert_same_weights(run, one_device, rtol=1e-5, atol=1e-7)


def test_a_killed_worker_then_both_restarted_with_resume_finish_the_run(folder, tmp_path):
    run = tmp_path / "run"
    workers = running_workers(folder, run, tmp_path, "--resume")
    progress = run / "state" / "progress.json"
    workers[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    try:  # the chief notices its peer is gone (a collective fails) and stops with one line
        _, err = workers[0].communicate(timeout=120)
        chief_stopped_after = time.monotonic() - killed
        assert workers[0].returncode == 1 and "lost another worker" in err and "Traceback" not in err
    except subprocess.TimeoutExpired:
        workers[0].kill()
        workers[0].communicate()
        chief_stopped_after = None
    workers[1].communicate()
    saved = json.loads(progress.read_text())

    outputs = train_workers(folder, run, tmp_path, "--resume")  # the same command, both restarted
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
    assert f"resuming {run} from" in outputs[0][1] and "resuming " in outputs[1][1]  # the other from its copy
    assert history(run) == EXPECTED_EPOCHS  # every epoch once
    assert saved["epochs_done"] >= 1
    key = hashlib.sha1(str(run).encode()).hexdigest()[:12]
    assert not (Path(tempfile.gettempdir()) / f"flowerft-worker1-{key}").exists()  # the killed worker's too
    assert chief_stopped_after is not None, "the chief waited forever for the killed worker (it had to be killed too)"
    assert chief_stopped_after < LOST_WORKER_SECONDS, f"the chief stopped {chief_stopped_after:.0f} s after its peer died"


def test_multiworker_without_tf_config_or_run_dir_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    message = one_line_error(runner.invoke(app, ["train", *TRAIN, "--distribute", "multiworker", "--run-dir", "r"]))
    assert "TF_CONFIG" in message
    message = one_line_error(runner.invoke(app, ["train", *TRAIN, "--distribute", "multiworker"]))
    assert "needs --run-dir" in message
    monkeypatch.setenv("TF_CONFIG", "{not json")
    message = one_line_error(runner.invoke(app, ["train", *TRAIN, "--distribute", "multiworker", "--run-dir", "r"]))
    assert "TF_CONFIG must be JSON" in message
    message = one_line_error(runner.invoke(app, ["train", *TRAIN, "--distribute", "gpus"]))
    assert "distribute: must be one of auto, none, mirrored, multiworker, tpu" in message
