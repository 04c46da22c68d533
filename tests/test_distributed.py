"""Data-parallel training on torch.distributed with gloo, 2 processes of 1 thread each, through the
real entry point: two ranks of one camera each equal one process with two cameras per step; with
density control both ranks keep identical models (the trainer checks their fingerprints and the
run would stop otherwise); killing one rank makes the other stop with a clear error and no final
outputs; distillation shards the teacher's extraction over the ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from feature3dgs.data import make_synthetic_scene
from feature3dgs.distill.cache import FeatureCache
from feature3dgs.model.ply import load_ply
from feature3dgs.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--no-progress", "--threads", "1", "--lpips", "none", "--no-tensorboard", "--eval-every", "0",
         "--checkpoint-every", "0", "--init-random-points", "600", "--seed", "5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict:
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


_LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_stray_ranks():
    """Whatever a test asserts, no rank it started outlives it."""
    yield
    while _LAUNCHED:
        p = _LAUNCHED.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def launch(args: list[str], world: int = 2, port: int | None = None) -> list[subprocess.Popen]:
    """``python -m feature3dgs ARGS`` as ``world`` ranks, with the environment torchrun sets."""
    port = port or free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "feature3dgs", *args], cwd=ROOT, env=rank_env(r, world, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    _LAUNCHED.extend(procs)
    return procs


def wait_all(procs, timeout: float = 600) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return make_synthetic_scene(tmp_path_factory.mktemp("dist") / "scene", n_views=6, n_test=1, width=32, height=32,
                                n_points=400)


def params_of(path: Path) -> dict:
    return {k: v.detach() for k, v in load_ply(path).params.items()}


def test_two_ranks_equal_one_process_with_batch_two(scene_dir, tmp_path):
    """K steps without density control: 2 processes x 1 camera == 1 process x 2 cameras per step
    (the same cameras: the view order comes from one seed), to float tolerance."""
    common = ["train", "--data", str(scene_dir), "--iterations", "12", "--densify-from", "1000", *QUIET]
    single = subprocess.run([sys.executable, "-m", "feature3dgs", *common, "--out", str(tmp_path / "one"),
                             "--batch-size", "2", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    results = wait_all(launch([*common, "--out", str(tmp_path / "two"), "--device", "cpu"]))
    assert all(rc == 0 for rc, _, _ in results), [e[-1500:] for _, _, e in results]
    a, b = params_of(tmp_path / "one" / RunDir.PLY), params_of(tmp_path / "two" / RunDir.PLY)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # only rank 0 wrote: one PLY, one metrics.json, the printed summary once
    assert json.loads((tmp_path / "two" / RunDir.METRICS).read_text())["step"] == 12
    assert "done:" in results[0][1] and "done:" not in results[1][1]


def test_a_two_rank_checkpoint_resumes_in_one_process(scene_dir, tmp_path):
    """Resume works with another world size: the checkpoint 2 ranks wrote at step 6, continued
    by 1 process (which keeps the run's 2 cameras per step), ends where the 2 ranks ended at step 12."""
    common = ["train", "--data", str(scene_dir), "--iterations", "12", "--densify-from", "1000", *QUIET]
    results = wait_all(launch([*common, "--out", str(tmp_path / "two"), "--device", "cpu",
                               "--checkpoint-every", "6", "--keep-checkpoints", "2"]))
    assert all(rc == 0 for rc, _, _ in results), [e[-1500:] for _, _, e in results]
    checkpoints = sorted((tmp_path / "two" / "checkpoints").iterdir())
    step6 = [c for c in checkpoints if "6" in c.stem and "12" not in c.stem]
    assert len(step6) == 1, checkpoints
    resumed = subprocess.run([sys.executable, "-m", "feature3dgs", *common, "--out", str(tmp_path / "one"),
                              "--device", "cpu", "--resume", str(step6[0])],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = params_of(tmp_path / "one" / RunDir.PLY), params_of(tmp_path / "two" / RunDir.PLY)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert json.loads((tmp_path / "one" / RunDir.METRICS).read_text())["step"] == 12


def test_with_density_control_both_ranks_keep_identical_models(scene_dir, tmp_path):
    """Density control runs on statistics reduced over the ranks and random draws from one seed;
    the trainer compares the ranks' fingerprints after every change and every 100 steps (a
    mismatch would stop the run with an error), so a clean exit means identical replicas."""
    results = wait_all(launch(["train", "--data", str(scene_dir), "--out", str(tmp_path / "run"), "--iterations", "60",
                               "--densify-from", "5", "--densify-every", "5", "--densify-until", "50",
                               "--device", "cpu", *QUIET]))
    assert all(rc == 0 for rc, _, _ in results), [e[-1500:] for _, _, e in results]
    metrics = json.loads((tmp_path / "run" / RunDir.METRICS).read_text())
    assert metrics["n_gaussians"] != 600  # density control changed the set (and every rank agreed)


def test_replica_check_catches_diverged_models():
    """The fingerprint check itself, on a gloo group of one process per rank, fed different models."""
    code = ("import os, torch; from feature3dgs.training.distributed import init_from_env, DistributedError\n"
            "d = init_from_env('cpu')\n"
            "fp = torch.tensor([10.0, 1.5 + (d.rank if os.environ.get('DIVERGE') else 0), 3.0])\n"
            "try:\n    d.check_replicas(fp, 7); print('agree')\n"
            "except DistributedError as e:\n    print('diverged:', e)\n"
            "d.shutdown()\n")
    for diverge, expect in (("", "agree"), ("1", "diverged: the model replicas diverged by step 7")):
        port = free_port()
        procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**rank_env(r, 2, port), "DIVERGE": diverge},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
        for rc, out, err in wait_all(procs, 120):
            assert rc == 0 and out.startswith(expect), err[-1000:]


def test_killing_one_rank_stops_the_other_with_a_clear_error(scene_dir, tmp_path):
    out = tmp_path / "run"
    procs = launch(["train", "--data", str(scene_dir), "--out", str(out), "--iterations", "100000", "--device", "cpu",
                    *QUIET])
    deadline = time.time() + 180
    while not (out / RunDir.LOG).exists() and time.time() < deadline:  # rank 0 is training
        time.sleep(0.2)
    time.sleep(1.0)
    procs[1].send_signal(signal.SIGKILL)
    rc, _, err = wait_all(procs[:1], 180)[0]
    procs[1].wait()
    assert rc == 1, err[-1500:]
    assert "another rank has stopped or crashed" in err and "Traceback" not in err
    assert not (out / RunDir.PLY).exists() and not (out / RunDir.METRICS).exists()


def test_distill_shards_the_teacher_extraction(scene_dir, tmp_path):
    cache = tmp_path / "cache"
    results = wait_all(launch(["distill", "--data", str(scene_dir), "--out", str(tmp_path / "run"), "--teacher", "clip",
                               "--random-weights-for-testing", "--render-dim", "8", "--iterations", "6",
                               "--cache-dir", str(cache), "--device", "cpu", *QUIET]))
    assert all(rc == 0 for rc, _, _ in results), [e[-1500:] for _, _, e in results]
    (c,) = FeatureCache.find(cache)
    assert len(c.names()) == 7  # every train and test view, extracted once between the two ranks
    extracted = [int(line.split()[3].rstrip(",")) for _, _, e in results for line in e.splitlines()
                 if line.startswith("teacher features: extracted ")]
    assert sorted(extracted) == [3, 4]
    assert load_ply(tmp_path / "run" / RunDir.PLY).feature_dim == 8
