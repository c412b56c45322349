"""Fault tests for checkpoints: SIGKILL at random moments during saves never costs the checkpoint, the temp
files killed writers leave are removed by the next save, and a resumed run continues exactly."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

import minidiff
from minidiff import checkpoint, nn
from minidiff.autograd import Tensor
from minidiff.train import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40


class _Wide(nn.Module):
    """One wide parameter (2 MiB of float32), so a save takes long enough for kills to land inside it."""
    name = "wide"

    def __init__(self):
        super().__init__()
        self.hparams = {}
        self.w = nn.Parameter(np.linspace(-1.0, 1.0, 2 ** 19, dtype=np.float32))

    def loss(self, batch, rng):
        target = Tensor(np.float32(batch[0].mean()))
        return minidiff.ops.mean((self.w - target) ** 2), {}


def _trainer(out_dir):
    cfg = TrainConfig(steps=STEPS, batch_size=4, lr=1e-2, warmup_steps=0, ema_decay=0.0, checkpoint_every=1,
                      progress=False, log_every=10 ** 6, seed=5)
    x = np.linspace(-1, 1, 64 * 4, dtype=np.float32).reshape(64, 1, 2, 2)
    return Trainer(_Wide(), cfg, x, np.zeros(64, np.int64), out_dir=out_dir)


def child(out_dir):
    """The process that gets killed: resume if a checkpoint exists, then train, saving after every step."""
    trainer = _trainer(out_dir)
    if os.path.exists(trainer.checkpoint_path()):
        trainer.resume()
    print("started", flush=True)
    trainer.fit()


def _spawn(out_dir):
    code = f"from tests.test_checkpoint_faults import child; child({str(out_dir)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"started", proc.stderr.read().decode()
    return proc


def _temporaries(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_sigkill_during_saves_never_loses_the_checkpoint_and_a_resumed_run_continues(tmp_path):
    path = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    steps_seen, orphans_seen = [], 0
    for _ in range(5):
        before = path.stat().st_mtime_ns if path.exists() else None
        proc = _spawn(tmp_path)
        deadline = time.time() + 60
        while time.time() < deadline and (path.stat().st_mtime_ns if path.exists() else None) == before:
            time.sleep(0.005)  # until this run has saved once, so every run makes progress
        time.sleep(rng.uniform(0.0, 0.02))  # a random moment within the next few steps, never past the end
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        orphans_seen += len(_temporaries(tmp_path))
        groups, state = checkpoint.load_checkpoint(path)  # always a whole checkpoint
        assert groups["params"]["w"].shape == (2 ** 19,)
        steps_seen.append(state["step"])
    assert steps_seen == sorted(steps_seen) and steps_seen[0] >= 1 and steps_seen[-1] < STEPS

    proc = _spawn(tmp_path)  # the resumed run: continues from the last checkpoint to the end
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert _temporaries(tmp_path) == [], "orphaned temp files left behind"
    groups, state = checkpoint.load_checkpoint(path)
    assert state["step"] == STEPS and len(state["history"]["loss"]) == STEPS
    uninterrupted = _trainer(None).fit()
    np.testing.assert_array_equal(groups["params"]["w"], uninterrupted.model.w.data)  # bit for bit
    assert state["history"]["loss"] == uninterrupted.history["loss"]
    print(f"kills at steps {steps_seen}, {orphans_seen} orphaned temp files seen before the resumed run")


def test_the_next_save_removes_orphans_of_dead_writers_and_keeps_a_live_writers(tmp_path):
    path = tmp_path / "model.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".model.safetensors.{dead.pid}.abc123.tmp"
    live = tmp_path / f".model.safetensors.{os.getppid()}.def456.tmp"   # our parent is alive
    other = tmp_path / ".other.safetensors.1.x.tmp"
    for f in (orphan, live, other):
        f.write_bytes(b"partial")
    checkpoint.save_file(path, {"a": np.arange(3.0)})
    assert not orphan.exists() and live.exists() and other.exists()
    np.testing.assert_array_equal(checkpoint.load_file(path)[0]["a"], np.arange(3.0))
    assert checkpoint.remove_orphaned_temporaries(path) == []
