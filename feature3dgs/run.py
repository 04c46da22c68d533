"""The run folder: the one module that knows its layout and reads and writes its files.

A ``feature3dgs train`` / ``distill`` output folder (and every scene the applications and the
viewer save) holds::

    config.json            {"feature3dgs_version", "config": TrainConfig, "scene": {...}, "device"}
    point_cloud.ply        the Gaussians, with features and class logits (feature3dgs.model.ply)
    checkpoints/ckpt_*.pt  resumable training state (feature3dgs.training.checkpoint)
    log.csv, tensorboard/  training curves (feature3dgs.training.log)
    metrics.json           the final evaluation
    renders/<split>/       the final renders
    decoder.pt             the 1x1-conv decoder (absent when D_render = D_teacher)
    distill_config.json    {"format": 2, "config": DistillConfig, "teacher": TeacherInfo, dims}
    feature_metrics.json   student vs teacher on the test views
    renders/features/      render | student | teacher panels, and pca.pt (their colours)
    semantic.json          {"class_names": [...]} of the per-Gaussian class logits
    viewer_edits.json      the edits a viewer session saved

:class:`RunDir` is that folder: the training and distillation sinks
(:class:`~feature3dgs.training.sink.RunSink`, :class:`~feature3dgs.distill.distill.DistillSink`),
and the readers. :class:`Run` is a trained scene loaded for the applications, the CLI and the
viewer (:func:`load_run`): model, decoder, configs and, rebuilt on demand, the teacher.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from feature3dgs.distill.distill import DistillConfig, TeacherInfo
from feature3dgs.distill.teachers import build_teacher
from feature3dgs.model.camera import Camera
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.model.gaussians import SEMANTICS, GaussianModel
from feature3dgs.model.ply import load_ply, save_ply
from feature3dgs.training import checkpoint as ckpt
from feature3dgs.training.config import TrainConfig
from feature3dgs.training.log import TrainLog
from feature3dgs.training.trainer import Trainer, load_scene_for
from feature3dgs.utils.io import (
    atomic_open,
    atomic_write_text,
    check_writable_dir,
    remove_stale_temp_files,
)
from feature3dgs.utils.transaction import PENDING, FolderTransaction
from feature3dgs.utils.transaction import recover as recover_transaction
from feature3dgs.utils.visualize import FeaturePCA
from feature3dgs.version import __version__

__all__ = ["RunDir", "Run", "DistillRecord", "load_run", "load_model", "fit"]

PathLike = Union[str, Path]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 JSON file") from None


def _read_object(path: Path) -> dict:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


@dataclass
class DistillRecord:
    """distill_config.json: how a run's features were distilled."""

    config: DistillConfig
    teacher: TeacherInfo
    render_dim: int
    teacher_dim: int

    def to_dict(self) -> dict:
        return {"format": 2, "config": self.config.to_dict(), "teacher": dataclasses.asdict(self.teacher),
                "render_dim": self.render_dim, "teacher_dim": self.teacher_dim}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path) -> "DistillRecord":
        try:
            if d.get("format") == 2:
                cfg = {k: v for k, v in d["config"].items() if k in {f.name for f in dataclasses.fields(DistillConfig)}}
                return cls(DistillConfig(**cfg), TeacherInfo(**d["teacher"]), int(d["render_dim"]), int(d["teacher_dim"]))
            # the flat layout of earlier versions
            kind = d.get("teacher") if d.get("teacher") in ("sam", "clip", "lseg") else None
            cfg = DistillConfig(teacher=kind or "sam", checkpoint=d.get("checkpoint"), teacher_model=d.get("model"),
                                weights_dir=d.get("weights_dir"), random_weights=bool(d.get("random_weights")),
                                render_dim=d.get("render_dim"))
            info = TeacherInfo(kind=kind, name=str(kind), dim=int(d["teacher_dim"]),
                               random_weights=bool(d.get("random_weights")), cache_key="")
            return cls(cfg, info, int(d["render_dim"]), int(d["teacher_dim"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a feature3dgs distillation record ({type(e).__name__}: {e})") from None


class RunDir:
    """A run folder (see the module docstring): where training and distillation write, and
    what the applications and the viewer read."""

    CONFIG = "config.json"
    PLY = "point_cloud.ply"
    CHECKPOINTS = "checkpoints"
    LOG = "log.csv"
    TENSORBOARD = "tensorboard"
    METRICS = "metrics.json"
    RENDERS = "renders"
    DECODER = "decoder.pt"
    DISTILL = "distill_config.json"
    FEATURE_METRICS = "feature_metrics.json"
    FEATURE_RENDERS = Path("renders") / "features"
    PCA = Path("renders") / "features" / "pca.pt"
    SEMANTIC = "semantic.json"
    EDITS = "viewer_edits.json"

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"run folder {self.path} exists and is not a folder")
        self._txn: Optional[FolderTransaction] = None
        self._replacing = False  # this process set the previous run aside (train --overwrite)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: Union[str, Path]) -> Path:
        return self.path / name

    def is_run(self) -> bool:
        """True when the folder holds a trained model (point_cloud.ply)."""
        return (self.path / self.PLY).is_file()

    # ------------------------------------------------------------------ consistency
    #: where ``train --overwrite`` keeps the previous run until the new one's first checkpoint
    REPLACED = ".replaced"

    def _target(self, name: Union[str, Path]) -> Path:
        """Where a write of ``name`` goes: the staging copy inside a :meth:`transaction`."""
        return self._txn.path(name) if self._txn is not None else self.path / name

    @contextmanager
    def transaction(self) -> Iterator["RunDir"]:
        """Every write inside takes effect together when the block ends (and none when it
        raises): the final outputs of a run are never a mix of two steps (utils.transaction)."""
        if self._txn is not None:  # nested: part of the outer one
            yield self
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._txn = FolderTransaction(self.path)
        try:
            yield self
        except BaseException:
            self._txn.abort()
            raise
        else:
            self._txn.commit()
        finally:
            self._txn = None
        self._forget_replaced()

    def prepare(self, resume: bool) -> list[str]:
        """Before a run writes here: check the folder can be written, finish or undo an
        interrupted commit, restore a run an interrupted ``--overwrite`` set aside, and remove
        stale temporary files of killed writes. Returns what was done, one line each."""
        check_writable_dir(self.path, "the run folder (--out)")
        done = []
        outcome = recover_transaction(self.path)
        if outcome != "none":
            done.append(f"an interrupted save was {outcome}")
        replaced = self.path / self.REPLACED
        if replaced.is_dir() and not self._replacing:  # set aside by an earlier, interrupted process
            if self.checkpoints():
                shutil.rmtree(replaced, ignore_errors=True)
            else:
                for item in replaced.iterdir():
                    os.replace(item, self.path / item.name)
                replaced.rmdir()
                done.append("restored the run an interrupted --overwrite had set aside")
        stale = remove_stale_temp_files(self.path)
        if stale:
            done.append(f"removed {stale} stale temporary file(s) of interrupted writes")
        return done

    def set_aside(self) -> None:
        """``--overwrite``: move the current run's files into ``.replaced/``; they are deleted once
        the new run has saved its first checkpoint, and restored by :meth:`prepare` if it never does."""
        replaced = self.path / self.REPLACED
        if replaced.exists():
            shutil.rmtree(replaced)
        replaced.mkdir(parents=True)
        self._replacing = True
        for item in list(self.path.iterdir()):
            if item.name not in (self.REPLACED, PENDING):
                os.replace(item, replaced / item.name)

    def _forget_replaced(self) -> None:
        if (self.path / self.REPLACED).is_dir() and self.checkpoints():
            shutil.rmtree(self.path / self.REPLACED, ignore_errors=True)

    # ------------------------------------------------------------------ training (RunSink)
    def write_config(self, config: TrainConfig, scene_info: Mapping[str, Any], device: str) -> None:
        _write_json(self._target(self.CONFIG), {"feature3dgs_version": __version__, "config": config.to_dict(),
                                                "scene": dict(scene_info), "device": device})

    def open_log(self, tensorboard: bool, append: bool) -> TrainLog:
        return TrainLog(self.path / self.LOG, self.path / self.TENSORBOARD if tensorboard else None, append=append)

    def save_checkpoint(self, state: dict, step: int, keep: int) -> Path:
        name = Path(self.CHECKPOINTS) / ckpt.checkpoint_path("", step).name
        path = ckpt.save_checkpoint(state, self._target(name))
        # keep the newest `keep` of this run's (steps up to this one; later ones, e.g. of another
        # run that wrote here, are left alone); inside a transaction, when it commits
        mine = [p for p in self.checkpoints() if ckpt.checkpoint_step(p) < step]
        for old in mine[:max(len(mine) - (max(int(keep), 1) - 1), 0)]:
            if self._txn is not None:
                self._txn.remove(old.relative_to(self.path))
            else:
                old.unlink(missing_ok=True)
        if self._txn is None:
            self._forget_replaced()
        return path

    def latest_checkpoint(self) -> Optional[Path]:
        return ckpt.latest_checkpoint(self.path / self.CHECKPOINTS)

    def checkpoints(self) -> list[Path]:
        return ckpt.list_checkpoints(self.path / self.CHECKPOINTS)

    def load_checkpoint(self, path: Optional[PathLike] = None) -> dict:
        """A checkpoint (default: the latest) read weights-only (see feature3dgs.training.checkpoint)."""
        target = Path(path) if path is not None else self.latest_checkpoint()
        if target is None:
            raise FileNotFoundError(f"no checkpoint (ckpt_*.pt) in {self.path / self.CHECKPOINTS}")
        return ckpt.load_checkpoint(target)

    def render_dir(self, split: str) -> Path:
        return self._target(Path(self.RENDERS) / split)

    def write_model(self, model: GaussianModel) -> Path:
        return save_ply(model, self._target(self.PLY))

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        _write_json(self._target(self.METRICS), dict(metrics))

    # ------------------------------------------------------------------ distillation (DistillSink)
    def write_distillation(self, config: DistillConfig, teacher: TeacherInfo, render_dim: int,
                           decoder: Optional[FeatureDecoder]) -> None:
        self.write_decoder(decoder)
        self.write_distill_record(DistillRecord(config, teacher, render_dim, teacher.dim))

    def write_decoder(self, decoder: Optional[FeatureDecoder]) -> None:
        """decoder.pt (removed when ``decoder`` is None: D_render = D_teacher)."""
        if decoder is None:
            if self._txn is not None:
                self._txn.remove(self.DECODER)
            else:
                (self.path / self.DECODER).unlink(missing_ok=True)
            return
        with atomic_open(self._target(self.DECODER), "wb") as f:
            torch.save(decoder.to_dict(), f)

    def write_distill_record(self, record: DistillRecord) -> None:
        _write_json(self._target(self.DISTILL), record.to_dict())

    def feature_render_dir(self) -> Path:
        return self._target(self.FEATURE_RENDERS)

    def write_feature_pca(self, pca: FeaturePCA) -> None:
        with atomic_open(self._target(self.PCA), "wb") as f:
            torch.save(pca.to_dict(), f)

    def write_feature_metrics(self, metrics: dict) -> None:
        _write_json(self._target(self.FEATURE_METRICS), metrics)

    # ------------------------------------------------------------------ applications
    def write_class_names(self, class_names: Sequence[str]) -> Path:
        """semantic.json: the names of the K classes of the per-Gaussian logits."""
        if isinstance(class_names, str):
            raise ValueError("class_names must be a list of names, not a single string")
        names = list(class_names)
        if not names or any(not isinstance(n, str) or not n.strip() for n in names):
            raise ValueError(f"class_names must be a non-empty list of non-empty strings, got {names!r}")
        _write_json(self._target(self.SEMANTIC), {"class_names": names})
        return self.path / self.SEMANTIC

    def write_edit_log(self, source: Optional[str], edits: list[dict]) -> None:
        _write_json(self._target(self.EDITS), {"source": source, "edits": edits})

    def copy_log_from(self, other: "RunDir") -> None:
        """Copy another run's training curves (log.csv) here (an edited scene keeps its curves)."""
        if (other.path / other.LOG).is_file():
            target = self._target(self.LOG)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(other.path / other.LOG, target)

    # ------------------------------------------------------------------ readers
    def read_config_record(self) -> dict:
        """config.json as written ({} when absent)."""
        p = self.path / self.CONFIG
        return _read_object(p) if p.is_file() else {}

    def read_train_config(self) -> Optional[TrainConfig]:
        """The run's TrainConfig, or None when the folder has no config.json."""
        rec = self.read_config_record()
        if not rec:
            return None
        cfg = rec.get("config")
        if not isinstance(cfg, dict):
            raise ValueError(f"{self.path / self.CONFIG}: 'config' must be a JSON object")
        try:
            return TrainConfig.from_dict(cfg)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.path / self.CONFIG}: {e}") from None

    def read_model(self, device: Union[str, torch.device] = "cpu") -> GaussianModel:
        return load_ply(self.path / self.PLY, device=device)

    def read_decoder(self, device: Union[str, torch.device] = "cpu") -> Optional[FeatureDecoder]:
        p = self.path / self.DECODER
        return FeatureDecoder.load(p).to(device).eval() if p.is_file() else None

    def read_distill_record(self) -> Optional[DistillRecord]:
        p = self.path / self.DISTILL
        return DistillRecord.from_dict(_read_object(p), p) if p.is_file() else None

    def read_class_names(self) -> Optional[list[str]]:
        p = self.path / self.SEMANTIC
        if not p.is_file():
            return None
        names = _read_object(p).get("class_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{p}: 'class_names' must be a list of strings")
        return names

    def read_feature_pca(self) -> Optional[FeaturePCA]:
        p = self.path / self.PCA
        if not p.is_file():
            return None
        return FeaturePCA.from_dict(torch.load(p, map_location="cpu", weights_only=True))

    def log_path(self) -> Optional[Path]:
        p = self.path / self.LOG
        return p if p.is_file() else None

    def load(self, device: Union[str, torch.device] = "cpu", model: Optional[GaussianModel] = None) -> "Run":
        """The trained scene in this folder (``model`` instead of its PLY when given)."""
        if model is None:
            if not self.is_run():
                raise FileNotFoundError(f"{self.path} holds no {self.PLY} (is it a training or distillation "
                                        "output folder?)")
            model = self.read_model(device)
        decoder = self.read_decoder(device)
        if decoder is not None and model.feature_dim != decoder.in_dim:
            raise ValueError(f"{self.path / self.DECODER} takes {decoder.in_dim} channels but the Gaussians in "
                             f"{self.path / self.PLY} carry {model.feature_dim}")
        names = self.read_class_names()
        if names is not None and SEMANTICS in model.params and len(names) != model.params[SEMANTICS].shape[1]:
            raise ValueError(f"{self.path / self.SEMANTIC} names {len(names)} classes but the Gaussians carry "
                             f"{model.params[SEMANTICS].shape[1]} logits")
        rec = self.read_config_record()
        return Run(model=model, decoder=decoder, run_dir=self.path, train_config=self.read_train_config(),
                   scene_info=rec.get("scene") or {}, distillation=self.read_distill_record(), class_names=names)


@dataclass
class Run:
    """A trained scene: Gaussians (with distilled features), their decoder, and how they were made.

    Attributes:
        model: the Gaussians; ``model.features`` is (N, D_render).
        decoder: lifts D_render to D_teacher channels, or None when they are equal.
        run_dir: the folder it was loaded from (None for a bare .ply or checkpoint).
        train_config: the run's TrainConfig (None when unknown).
        scene_info: config.json's description of the training scene ({} when unknown).
        distillation: the teacher record (None for RGB-only runs).
        class_names: names of the semantic classes when the model carries class logits.
    """

    model: GaussianModel
    decoder: Optional[FeatureDecoder] = None
    run_dir: Optional[Path] = None
    train_config: Optional[TrainConfig] = None
    scene_info: dict = field(default_factory=dict)
    distillation: Optional[DistillRecord] = None
    class_names: Optional[list[str]] = None
    teacher_override: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def teacher_kind(self) -> Optional[str]:
        """'sam', 'clip', 'lseg', or None (no teacher network: RGB-only or a prepared cache)."""
        return self.distillation.teacher.kind if self.distillation is not None else None

    @property
    def has_semantics(self) -> bool:
        return SEMANTICS in self.model.params

    @property
    def semantic_logits(self) -> Optional[Tensor]:
        """(N, K) per-Gaussian class logits, or None."""
        return self.model.params[SEMANTICS] if self.has_semantics else None

    # ------------------------------------------------------------------ teacher
    def teacher(self, weights_dir: Optional[str] = None):
        """The teacher the run was distilled from, built once (same weights, or the same seeded
        tiny random model when it was distilled from one). Never downloads.

        Raises:
            ValueError: the run records no teacher network.
            FileNotFoundError: the teacher's weights are not on disk.
        """
        if self.teacher_override is None:
            if self.teacher_kind is None:
                raise ValueError("this scene records no teacher (no distill_config.json naming one); SAM prompts "
                                 "and text queries need the teacher it was distilled from")
            dc = self.distillation.config
            self.teacher_override = build_teacher(
                self.teacher_kind, checkpoint=dc.checkpoint, model=dc.teacher_model,
                weights_dir=weights_dir or dc.weights_dir, random_weights=self.distillation.teacher.random_weights,
                allow_download=False)
            self.teacher_override.to(self.device)
        return self.teacher_override

    def set_teacher(self, teacher) -> None:
        """Use an already built teacher (e.g. one shared between scenes)."""
        self.teacher_override = teacher

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """(n, D_teacher) L2-normalised text embeddings from the (language) teacher."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {prompts!r}")
        teacher = self.teacher()
        if not hasattr(teacher, "encode_text"):
            raise ValueError(f"the scene was distilled from {teacher.name}, which has no text encoder; "
                             "text queries need a CLIP or LSeg scene")
        with torch.no_grad():
            return teacher.encode_text(list(prompts)).to(self.device)

    # ------------------------------------------------------------------ data and rendering
    def load_data(self, **overrides: Any):
        """The training scene (cameras, images, labels) this run was fitted to; ``overrides``
        replace scene options (``data``, ``width``, ...; None values are ignored)."""
        base = self.train_config or TrainConfig()
        cfg = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
        if not cfg.data:
            raise ValueError("the run does not record its scene (config.json has no 'data'); pass data=...")
        return load_scene_for(cfg)

    def render_features(self, camera: Camera, decoded: bool = True) -> Tensor:
        """(D, H, W) features at ``camera`` (decoded to D_teacher when ``decoded``), no grad."""
        if self.model.features is None:
            raise ValueError("the model has no features to render")
        with torch.no_grad():
            feats = self.model.render(camera, features=self.model.features).features
            return self.decoder(feats) if (decoded and self.decoder is not None) else feats

    def with_model(self, model: GaussianModel) -> "Run":
        """The same scene (decoder, teacher, configs) around another (e.g. edited) model."""
        return dataclasses.replace(self, model=model)

    # ------------------------------------------------------------------ saving
    def save(self, out_dir: PathLike) -> Path:
        """Write the scene as a run folder that :func:`load_run` reads back.

        Refuses to write into the folder the scene was loaded from (an edit never overwrites its
        original). Every file is written atomically. Returns the PLY path.
        """
        out = RunDir(out_dir)
        if self.run_dir is not None and out.path.resolve() == Path(self.run_dir).resolve():
            raise ValueError(f"refusing to overwrite the original scene in {out.path}; choose another output folder")
        out.path.mkdir(parents=True, exist_ok=True)
        ply = out.write_model(self.model)
        out.write_decoder(self.decoder)
        if self.distillation is not None:
            out.write_distill_record(self.distillation)
        if self.train_config is not None:
            out.write_config(self.train_config, self.scene_info, str(self.device))
        if self.class_names is not None:
            out.write_class_names(self.class_names)
        return ply


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> GaussianModel:
    """Gaussians from a run folder, a Gaussian .ply or a checkpoint .pt."""
    p = Path(path)
    if p.is_dir():
        return RunDir(p).load(device).model
    if not p.is_file():
        raise FileNotFoundError(f"not found: {p} (give a run folder, a Gaussian .ply or a checkpoint .pt)")
    if p.suffix.lower() == ".pt":
        return GaussianModel.from_raw_state(ckpt.load_checkpoint(p)["model"]).to(device)
    return load_ply(p, device=device)


def load_run(path: PathLike, device: Union[str, torch.device] = "cpu") -> Run:
    """Load a run folder (or its point_cloud.ply, or a bare Gaussian .ply) as a :class:`Run`.

    Raises:
        FileNotFoundError: the folder or its PLY is missing.
        ValueError: a file is malformed, or the decoder does not fit the Gaussians' features.
    """
    p = Path(path)
    if p.is_dir():
        return RunDir(p).load(device)
    if p.is_file():
        if p.suffix.lower() != ".ply":
            raise ValueError(f"expected a run folder or a .ply file, got {p}")
        folder = RunDir(p.parent)
        has_run_files = any((p.parent / n).is_file() for n in (RunDir.CONFIG, RunDir.DISTILL, RunDir.DECODER))
        model = load_ply(p, device=device)
        return folder.load(device, model=model) if has_run_files else Run(model=model)
    raise FileNotFoundError(f"scene not found: {p}")


def fit(data: Union[PathLike, Any], out_dir: Optional[PathLike] = None, config: Optional[TrainConfig] = None,
        **overrides: Any) -> Trainer:
    """Load a scene (a path, or a Scene object) and train on it, writing a run folder to
    ``out_dir`` when given; returns the trained Trainer (``.model``, ``.result``).
    ``overrides`` set TrainConfig fields."""
    cfg = config or TrainConfig()
    if isinstance(data, (str, Path)):
        cfg = dataclasses.replace(cfg, data=str(data), **overrides)
        if not Path(data).exists():
            raise FileNotFoundError(f"scene path not found: {data}")
        scene = load_scene_for(cfg)
    else:
        cfg = dataclasses.replace(cfg, **overrides)
        scene = data
    trainer = Trainer(scene, cfg, run=RunDir(out_dir) if out_dir is not None else None)
    trainer.train()
    return trainer
