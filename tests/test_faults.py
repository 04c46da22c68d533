"""Runs survive faults: SIGKILL at random points (during steps and during saves) and resume ends
in the same model as an uninterrupted run; Ctrl-C stops between steps with a checkpoint (exit
130); an interrupted final save is finished or undone; --overwrite keeps the old run until the
new one has a checkpoint; stale temporary files are removed; a full disk is one clean line."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feature3dgs.cli.main import main
from feature3dgs.data import make_synthetic_scene
from feature3dgs.run import RunDir
from feature3dgs.utils.transaction import JOURNAL, PENDING, FolderTransaction, recover

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
#: a run of a few seconds: tiny scene, one thread, no evaluation but the final one
OPTIONS = ["--iterations", str(STEPS), "--no-progress", "--threads", "1", "--lpips", "none", "--no-tensorboard",
           "--eval-every", "0", "--init-random-points", "400", "--max-gaussians", "1500", "--seed", "3"]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return make_synthetic_scene(tmp_path_factory.mktemp("faults") / "scene", n_views=5, n_test=1, width=24, height=24,
                                n_points=300)


def train_cmd(scene_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "feature3dgs", "train", "--data", str(scene_dir), "--out", str(out), *OPTIONS, *extra]


def run_to_end(cmd: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def reference_ply(scene_dir, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("reference") / "run"
    run_to_end(train_cmd(scene_dir, out, "--checkpoint-every", "0"))
    return (out / RunDir.PLY).read_bytes()


def test_sigkill_five_times_then_resume_gives_the_same_model(scene_dir, reference_ply, tmp_path):
    out = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    while kills < 5:
        resume = ["--resume"] if RunDir(out).checkpoints() else []
        # saving every step makes a kill land inside a checkpoint write about as often as in a step
        proc = subprocess.Popen(train_cmd(scene_dir, out, "--checkpoint-every", "1", *resume), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(3.0, 7.0))
        if proc.poll() is not None:  # finished before the kill: start over to get five real kills
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            proc.stderr.close()
            shutil.rmtree(out)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        kills += 1
    run_to_end(train_cmd(scene_dir, out, "--resume") if RunDir(out).checkpoints() else train_cmd(scene_dir, out))
    assert (out / RunDir.PLY).read_bytes() == reference_ply
    assert json.loads((out / RunDir.METRICS).read_text())["step"] == STEPS
    assert not list(out.rglob("*.tmp")) and not (out / PENDING).exists()
    assert [p.name for p in RunDir(out).checkpoints()] == [f"ckpt_{STEPS:07d}.pt"]


def test_ctrl_c_stops_between_steps_with_a_checkpoint(scene_dir, reference_ply, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(scene_dir, out, "--checkpoint-every", "0", "--iterations", "100000"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / RunDir.LOG).exists() and time.time() < deadline:  # training has started
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a 100 000-step run behind
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    (ckpt,) = RunDir(out).checkpoints()
    step = int(ckpt.stem.split("_")[1])
    assert step > 0 and RunDir(out).load_checkpoint()["step"] == step
    # and the interrupted run continues exactly: finish it at STEPS if it stopped before
    if step < STEPS:
        run_to_end(train_cmd(scene_dir, out, "--resume", "--iterations", str(STEPS)))
        assert (out / RunDir.PLY).read_bytes() == reference_ply


def test_an_interrupted_commit_is_finished_or_undone(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("old a")
    (folder / "b.txt").write_text("old b")
    # killed before the journal: every old file stays
    t = FolderTransaction(folder)
    t.path("a.txt").write_text("new a")
    assert recover(folder) == "rolled back"
    assert (folder / "a.txt").read_text() == "old a" and not (folder / PENDING).exists()
    # killed after the journal and one rename: recovery finishes the rest
    t = FolderTransaction(folder)
    t.path("a.txt").write_text("new a")
    t.path("sub/c.txt").parent.mkdir(parents=True)
    t.path("sub/c.txt").write_text("new c")
    t.remove("b.txt")
    (folder / PENDING / JOURNAL).write_text(json.dumps({"files": ["a.txt", "sub/c.txt"], "remove": ["b.txt"]}))
    os.replace(t.path("a.txt"), folder / "a.txt")
    assert recover(folder) == "completed"
    assert (folder / "a.txt").read_text() == "new a" and (folder / "sub" / "c.txt").read_text() == "new c"
    assert not (folder / "b.txt").exists() and not (folder / PENDING).exists()


def test_a_failed_final_save_leaves_the_previous_outputs(scene_dir, tmp_path, monkeypatch, capsys):
    """Disk full while the final outputs are written: one clean line, exit 2, and the run folder
    still holds the previous step's outputs (not some files of each)."""
    out = tmp_path / "run"
    args = ["train", "--data", str(scene_dir), "--out", str(out), *OPTIONS[2:], "--iterations", "6"]
    assert main(args) == 0
    # (config.json and log.csv describe the resumed run from its start: not part of the final outputs)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts
              and p.name not in (RunDir.LOG, RunDir.CONFIG)}
    from feature3dgs.model import ply

    real = ply.save_ply

    def full_disk(model, path):
        real(model, path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("feature3dgs.run.save_ply", full_disk)
    assert main(["train", "--out", str(out), "--resume", "--iterations", "9", "--no-progress",
                 "--checkpoint-every", "0"]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err
    after = {p: p.read_bytes() for p in before}
    assert after == before and not (out / PENDING).exists()
    assert [p.name for p in RunDir(out).checkpoints()] == ["ckpt_0000006.pt"]


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(scene_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--data", str(scene_dir), "--out", str(out), *OPTIONS[2:], "--iterations", "4"]) == 0
    old_ply = (out / RunDir.PLY).read_bytes()
    from feature3dgs.training.trainer import Trainer

    def crash(self):
        raise RuntimeError("simulated crash before the first checkpoint")

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["train", "--data", str(scene_dir), "--out", str(out), *OPTIONS[2:], "--iterations", "4",
              "--overwrite", "--seed", "9"])
    monkeypatch.undo()
    # the next start finds the old run set aside and no new checkpoint: it is restored
    notes = RunDir(out).prepare(resume=True)
    assert any("restored" in n for n in notes)
    assert (out / RunDir.PLY).read_bytes() == old_ply and RunDir(out).checkpoints()
    # an --overwrite that gets to its first checkpoint drops the old run
    assert main(["train", "--data", str(scene_dir), "--out", str(out), *OPTIONS[2:], "--iterations", "4",
                 "--overwrite", "--checkpoint-every", "2"]) == 0
    assert not (out / RunDir.REPLACED).exists()


def test_stale_temp_files_are_removed_on_resume(scene_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(scene_dir), "--out", str(out), *OPTIONS[2:], "--iterations", "3"]) == 0
    stale = out / RunDir.CHECKPOINTS / ".ckpt_0000004.pt.abc123.tmp"
    stale.write_bytes(os.urandom(1000))
    assert main(["train", "--out", str(out), "--resume", "--iterations", "4", "--no-progress"]) == 0
    assert not stale.exists()


def test_resume_refuses_a_corrupt_checkpoint(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(scene_dir), "--out", str(out), *OPTIONS[2:], "--iterations", "3"]) == 0
    (ckpt,) = RunDir(out).checkpoints()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    assert main(["train", "--out", str(out), "--resume", "--iterations", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and str(ckpt) in err
