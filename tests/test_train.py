"""The trainer: fitting quality, schedule, densification in the loop, exact resume, NaN
handling, extension hooks, metrics."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from feature3dgs.data import load_scene, make_synthetic_scene
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.utils.metrics import lpips_metric, lpips_unavailable_reason, psnr, ssim
from feature3dgs.run import RunDir, fit
from feature3dgs.training.config import TrainConfig
from feature3dgs.training.schedule import expon_lr
from feature3dgs.training.trainer import NonFiniteLossError, Trainer

QUIET = dict(progress=False, lpips=None, tensorboard=False, eval_every=0, checkpoint_every=0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = make_synthetic_scene(tmp_path_factory.mktemp("synth"), n_views=12, n_test=2, width=64, height=64,
                                seed=0, n_points=2000)
    return load_scene(root)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_200_steps_raises_test_psnr_by_8db(scene):
    cfg = TrainConfig(iterations=200, init="points", max_gaussians=6000, seed=0, **QUIET)
    tr = Trainer(scene, cfg)
    n0 = tr.model.num_gaussians
    before = tr.evaluate("test")
    result = tr.train()
    after = result.eval
    assert after.split == "test" and after.psnr - before.psnr >= 8.0, (before.psnr, after.psnr)
    assert after.ssim > before.ssim + 0.2
    assert result.step == 200 and tr.model.active_sh_degree == 3
    assert tr.model.num_gaussians != n0  # densification ran in a 200-step run


def test_schedule_defaults_scale_with_iterations():
    full = TrainConfig(iterations=30_000).resolved()
    assert (full.sh_up_every, full.densify_from, full.densify_until, full.densify_every,
            full.opacity_reset_every, full.lr_means_steps) == (1000, 500, 15_000, 100, 3000, 30_000)
    short = TrainConfig(iterations=3000).resolved()
    assert (short.sh_up_every, short.densify_from, short.densify_until, short.densify_every,
            short.opacity_reset_every, short.lr_means_steps) == (100, 50, 1500, 10, 300, 3000)
    tiny = TrainConfig(iterations=200).resolved()  # floors keep tiny runs sane
    assert (tiny.densify_from, tiny.densify_until, tiny.densify_every, tiny.opacity_reset_every) == (50, 100, 10, 300)
    explicit = TrainConfig(iterations=200, densify_every=3, opacity_reset_every=40).resolved()
    assert (explicit.densify_every, explicit.opacity_reset_every) == (3, 40)
    # B views per step for 1/B of the steps: the same schedule in images seen, floors included
    for b in (2, 5):
        batched = TrainConfig(iterations=200 // b, batch_size=b).resolved()
        assert (b * batched.densify_from, b * batched.densify_every) == (tiny.densify_from, tiny.densify_every)
        assert TrainConfig(iterations=200 // b).resolved(batch_size=b) == dataclasses.replace(batched, batch_size=None)
    seven_k = TrainConfig(iterations=7000, schedule_length=30_000).resolved()  # the 3DGS "7k" protocol
    assert (seven_k.densify_from, seven_k.densify_every, seven_k.lr_means_steps) == (500, 100, 30_000)
    assert expon_lr(0, 1e-2, 1e-4, 100) == pytest.approx(1e-2)
    assert expon_lr(50, 1e-2, 1e-4, 100) == pytest.approx(1e-3)
    assert expon_lr(500, 1e-2, 1e-4, 100) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="iterations"):
        TrainConfig(iterations=0).resolved()
    with pytest.raises(ValueError, match="init"):
        TrainConfig(init="bogus").resolved()


def test_densification_changes_n_only_on_schedule(scene):
    cfg = TrainConfig(iterations=60, init="points", feature_dim=3, densify_from=10, densify_every=10,
                      densify_until=45, opacity_reset_every=30, sh_up_every=20, max_gaussians=4000, **QUIET)
    tr = Trainer(scene, cfg)
    counts = [tr.model.num_gaussians]
    opacity_after = {}

    def record(trainer, step, logs):
        counts.append(trainer.model.num_gaussians)
        opacity_after[step] = float(trainer.model.opacities.detach().max())
        assert trainer.model.features.shape == (trainer.model.num_gaussians, 3)
        assert len(trainer.strategy.stats) == trainer.model.num_gaussians

    tr.callbacks.append(record)
    for _ in range(60):
        tr.train_step()
    changed = [s for s in range(1, 61) if counts[s] != counts[s - 1]]
    assert changed and set(changed) <= {20, 30, 40}  # densify_from < step < densify_until, every 10
    assert counts[20] > counts[19]  # the first densification grows the set
    assert opacity_after[30] <= 0.01 + 1e-6  # opacity reset at 30
    assert opacity_after[29] > 0.1
    assert tr.model.active_sh_degree == 3  # raised at 20, 40, 60


def _run_steps(trainer: Trainer, until: int) -> None:
    while trainer.step < until:
        trainer.train_step()


def test_resumed_run_equals_uninterrupted(scene, tmp_path):
    cfg = TrainConfig(iterations=40, init="points", feature_dim=2, random_background=True, seed=3,
                      densify_from=4, densify_every=6, densify_until=30, opacity_reset_every=20,
                      sh_up_every=9, max_gaussians=3000, **QUIET)
    a = Trainer(scene, cfg)
    _run_steps(a, 40)

    b = Trainer(scene, cfg, run=RunDir(tmp_path / "run"))
    _run_steps(b, 17)
    ckpt = b.save_checkpoint()
    assert ckpt.name == "ckpt_0000017.pt"
    del b
    c = Trainer.from_checkpoint(ckpt, scene=scene)
    assert c.step == 17
    _run_steps(c, 40)

    assert a.model.num_gaussians == c.model.num_gaussians and a.model.num_gaussians > 0
    assert a.model.active_sh_degree == c.model.active_sh_degree
    for k in a.model.params.keys():
        assert torch.equal(a.model.params[k], c.model.params[k]), k
    for ga, gc in zip(a.optimizer.param_groups, c.optimizer.param_groups):
        assert ga["name"] == gc["name"] and ga["lr"] == gc["lr"]
        sa, sc = a.optimizer.state[ga["params"][0]], c.optimizer.state[gc["params"][0]]
        for key in sa:
            assert torch.equal(sa[key], sc[key]), (ga["name"], key)
    assert torch.equal(a.strategy.stats.grad_accum, c.strategy.stats.grad_accum)
    assert torch.equal(a.generator.get_state(), c.generator.get_state())


def test_nan_loss_stops_with_step_and_writes_nothing(scene, tmp_path):
    def poison(trainer, batch, out):
        bad = torch.tensor(float("nan")) if batch.step == 3 else torch.tensor(0.0)
        return {"poison": bad}

    out_dir = tmp_path / "run"
    tr = Trainer(scene, TrainConfig(iterations=10, init="points", **QUIET), run=RunDir(out_dir), loss_fns=[poison])
    before = {k: v.detach().clone() for k, v in tr.model.params.items()}
    with pytest.raises(NonFiniteLossError, match="step 3") as info:
        tr.train()
    assert info.value.step == 3 and math.isnan(info.value.terms["poison"])
    assert tr.step == 2
    assert not (out_dir / "point_cloud.ply").exists() and not (out_dir / "metrics.json").exists()
    assert not list(out_dir.rglob("*.tmp")) and not list(out_dir.rglob(".*"))
    assert any(not torch.equal(before[k], v.detach()) for k, v in tr.model.params.items())  # 2 steps ran


def test_extension_hooks_feature_loss_and_decoder(scene, tmp_path):
    """What the feature-distillation stage builds on: features rendered, a loss on them through a
    1x1-conv decoder registered as a module, carried through densification and checkpoints."""
    D, T = 4, 6
    torch.manual_seed(0)
    teacher = {v.name: torch.rand(T, 64, 64) for v in scene.train_views}

    class Distill(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.render_features = True
            self.decoder = self.register_module("decoder", nn.Conv2d(D, T, 1), lr=1e-3)

        def loss_terms(self, batch, out):
            terms = super().loss_terms(batch, out)
            pred = self.decoder(out.features[None])[0]
            terms["feature"] = (pred - teacher[batch.view.name]).abs().mean()
            return terms

    cfg = TrainConfig(iterations=30, init="points", feature_dim=D, densify_from=5, densify_every=10,
                      densify_until=25, max_gaussians=3000, **QUIET)
    tr = Distill(scene, cfg, run=RunDir(tmp_path / "run"))
    w0 = tr.decoder.weight.detach().clone()
    f0 = tr.model.features.detach().clone()
    seen = []
    tr.callbacks.append(lambda t, s, logs: seen.append(logs))
    _run_steps(tr, 30)
    assert {"loss/l1", "loss/dssim", "loss/feature"} <= set(seen[-1])
    assert seen[-1]["loss"] == pytest.approx(sum(v for k, v in seen[-1].items() if k.startswith("loss/")), rel=1e-5)
    assert not torch.equal(tr.decoder.weight, w0)
    assert tr.model.num_gaussians != f0.shape[0] and tr.model.features.abs().sum() > 0
    ckpt = tr.save_checkpoint()
    back = Distill.from_checkpoint(ckpt, scene=scene)
    assert torch.equal(back.decoder.weight, tr.decoder.weight)
    assert torch.equal(back.model.features, tr.model.features)


def test_trainer_input_errors(scene):
    empty = dataclasses.replace(scene)
    empty.train_views = []
    with pytest.raises(ValueError, match="no training views"):
        Trainer(empty, TrainConfig(**QUIET))
    no_points = dataclasses.replace(scene)
    no_points.points = None
    with pytest.raises(ValueError, match="no sparse points"):
        Trainer(no_points, TrainConfig(init="points", **QUIET))
    tr = Trainer(no_points, TrainConfig(init="auto", init_random_points=300, **QUIET))  # falls back to random
    assert tr.model.num_gaussians == 300
    with pytest.raises(FileNotFoundError, match="not found"):
        fit("/definitely/not/a/scene", iterations=1, **QUIET)


def test_metrics_psnr_ssim_lpips(tmp_path, monkeypatch):
    a = torch.rand(3, 32, 32)
    b = (a + 0.1).clamp(0, 1)
    mse = float(((a - b) ** 2).mean())
    assert psnr(b, a) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert psnr(a, a) == float("inf")
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-5) and ssim(b, a) < 0.99
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    reason = lpips_unavailable_reason("alex")
    assert reason is not None and "alexnet-owt-7be5be79.pth" in reason and str(tmp_path / "hub") in reason
    assert lpips_metric("alex") is None
    fn = lpips_metric("alex", random_backbone=True)  # test-only: the number itself means nothing
    assert fn(a, a) == pytest.approx(0.0, abs=1e-6) and fn(b, a) > 0


def test_random_init_model_trains(scene):
    no_points = dataclasses.replace(scene)
    no_points.points = None
    cfg = TrainConfig(iterations=30, init_random_points=500, **QUIET)
    tr = Trainer(no_points, cfg)
    assert isinstance(tr.model, GaussianModel)
    first = tr.train_step()["loss"]
    _run_steps(tr, 30)
    assert tr.train_step()["loss"] < first


def test_fit_api_from_a_path(scene, tmp_path):
    tr = fit(scene.source_path, tmp_path / "run", iterations=12, init="points", max_gaussians=2500,
             keep_checkpoints=2, **{**QUIET, "checkpoint_every": 5})
    assert tr.step == 12 and tr.result.step == 12 and tr.result.eval.n_views == 2
    assert tr.config.data == str(scene.source_path)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["ckpt_0000010.pt", "ckpt_0000012.pt"]
    assert (tmp_path / "run" / "point_cloud.ply").is_file()
