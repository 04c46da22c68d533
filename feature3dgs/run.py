"""A trained feature scene on disk, loaded for the applications, the CLI and the viewer.

A ``feature3dgs distill`` (or ``train``) output folder holds::

    point_cloud.ply       the Gaussians, with their features (and semantic logits when fitted)
    config.json           the training config: the scene path and its loader options
    decoder.pt            the 1x1-conv decoder (absent when D_render = D_teacher)
    distill_config.json   the teacher: name, checkpoint, model, random_weights, dims
    semantic.json         class names of the per-Gaussian logits (feature3dgs.apps.semantic)
    log.csv               training curves (step, elapsed_s, tag, value)

:func:`load_feature_scene` reads such a folder (or a bare .ply) into a :class:`FeatureScene`,
which rebuilds the teacher on demand (its SAM prompt decoder or its text encoder are needed at
query time) and saves edited copies without ever overwriting the original.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from feature3dgs.model.camera import Camera
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.model.gaussians import GaussianModel

__all__ = ["FeatureScene", "load_feature_scene", "SEMANTIC_PARAM", "SEMANTIC_FILE"]

PathLike = Union[str, Path]
#: name of the per-Gaussian class-logit parameter in ``GaussianModel.params`` (feature3dgs.apps.semantic)
SEMANTIC_PARAM = "semantics"
#: file of a run folder that names the semantic classes: {"class_names": [...]}
SEMANTIC_FILE = "semantic.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


@dataclass
class FeatureScene:
    """Gaussians with distilled features, their decoder and the teacher they were distilled from.

    Attributes:
        model: the Gaussians; ``model.features`` is (N, D_render).
        decoder: lifts D_render to D_teacher channels, or None when they are equal.
        run_dir: the folder it was loaded from (None for a bare .ply).
        distill_config: contents of distill_config.json ({} when the scene has no teacher).
        train_config: the "config" entry of config.json ({} when absent).
        class_names: names of the semantic classes when the model carries class logits.
    """

    model: GaussianModel
    decoder: Optional[FeatureDecoder] = None
    run_dir: Optional[Path] = None
    distill_config: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    class_names: Optional[list[str]] = None
    _teacher: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def teacher_name(self) -> Optional[str]:
        """'sam', 'clip', 'lseg', or None when unknown (no distill_config.json)."""
        return self.distill_config.get("teacher")

    @property
    def has_semantics(self) -> bool:
        return SEMANTIC_PARAM in self.model.params

    @property
    def semantic_logits(self) -> Optional[Tensor]:
        """(N, K) per-Gaussian class logits, or None."""
        return self.model.params[SEMANTIC_PARAM] if self.has_semantics else None

    # ------------------------------------------------------------------ teacher
    def teacher(self, weights_dir: Optional[str] = None):
        """The teacher of distill_config.json, built once (same weights, or the same seeded tiny
        random model when the scene was distilled from one). Never downloads.

        Raises:
            ValueError: the scene records no teacher.
            FileNotFoundError: the teacher's weights are not on disk.
        """
        if self._teacher is None:
            from feature3dgs.distill.teachers import build_teacher

            dc = self.distill_config
            if not dc.get("teacher") or dc.get("teacher") == "cached":
                raise ValueError("this scene records no teacher (no distill_config.json with a 'teacher'); "
                                 "SAM prompts and text queries need the teacher it was distilled from")
            self._teacher = build_teacher(dc["teacher"], checkpoint=dc.get("checkpoint"), model=dc.get("model"),
                                          weights_dir=weights_dir or dc.get("weights_dir"),
                                          random_weights=bool(dc.get("random_weights")), allow_download=False)
            self._teacher.to(self.device)
        return self._teacher

    def set_teacher(self, teacher) -> None:
        """Use an already built teacher (e.g. one shared between scenes)."""
        self._teacher = teacher

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
    def load_data(self, **loader_overrides):
        """The training scene (cameras, images, labels) this run was fitted to."""
        from feature3dgs.training.trainer import SCENE_CONFIG_KEYS, TrainConfig, load_scene_for

        cfg = TrainConfig(**{k: self.train_config[k] for k in SCENE_CONFIG_KEYS if k in self.train_config})
        cfg = dataclasses.replace(cfg, **{k: v for k, v in loader_overrides.items() if v is not None})
        if not cfg.data:
            raise ValueError("the run does not record its scene (config.json has no 'data'); pass data=...")
        return load_scene_for(cfg)

    def render_features(self, camera: Camera, decoded: bool = True) -> Tensor:
        """(D, H, W) features at ``camera`` (decoded to D_teacher when ``decoded``), no grad."""
        from feature3dgs.apps.segment import render_decoded_features

        with torch.no_grad():
            return render_decoded_features(self.model, camera.to(self.device), self.decoder if decoded else None)

    def with_model(self, model: GaussianModel) -> "FeatureScene":
        """The same scene (decoder, teacher, configs) around another (e.g. edited) model."""
        return dataclasses.replace(self, model=model)

    # ------------------------------------------------------------------ saving
    def save(self, out_dir: PathLike) -> Path:
        """Write the scene as a run folder that :func:`load_feature_scene` reads back.

        Refuses to write into the folder the scene was loaded from (an edit never overwrites its
        original). Every file is written atomically. Returns the PLY path.
        """
        from feature3dgs.utils.io import atomic_open, atomic_write_text
        from feature3dgs.model.ply import save_ply

        out = Path(out_dir)
        if self.run_dir is not None and out.resolve() == Path(self.run_dir).resolve():
            raise ValueError(f"refusing to overwrite the original scene in {out}; choose another output folder")
        out.mkdir(parents=True, exist_ok=True)
        ply = save_ply(self.model, out / "point_cloud.ply")
        if self.decoder is not None:
            with atomic_open(out / "decoder.pt", "wb") as f:
                torch.save(self.decoder.to_dict(), f)
        if self.distill_config:
            atomic_write_text(out / "distill_config.json", json.dumps(self.distill_config, indent=2))
        if self.train_config:
            atomic_write_text(out / "config.json", json.dumps({"config": self.train_config}, indent=2))
        if self.class_names is not None:
            atomic_write_text(out / SEMANTIC_FILE, json.dumps({"class_names": self.class_names}, indent=2))
        return ply


def _find_ply(path: Path) -> tuple[Path, Optional[Path]]:
    if path.is_dir():
        ply = path / "point_cloud.ply"
        if not ply.is_file():
            raise FileNotFoundError(f"{path} holds no point_cloud.ply (is it a training or distillation output folder?)")
        return ply, path
    if path.is_file():
        if path.suffix.lower() != ".ply":
            raise ValueError(f"expected a run folder or a .ply file, got {path}")
        parent = path.parent
        has_run_files = any((parent / n).is_file() for n in ("config.json", "distill_config.json", "decoder.pt"))
        return path, parent if has_run_files else None
    raise FileNotFoundError(f"scene not found: {path}")


def load_feature_scene(path: PathLike, device: Union[str, torch.device] = "cpu") -> FeatureScene:
    """Load a run folder (or its point_cloud.ply) written by distill / train / FeatureScene.save.

    Raises:
        FileNotFoundError: the folder or its PLY is missing.
        ValueError: a file is malformed, or the decoder does not fit the Gaussians' features.
    """
    from feature3dgs.model.ply import load_ply

    ply, run_dir = _find_ply(Path(path))
    model = load_ply(ply, device=device)
    decoder = distill_config = train_config = class_names = None
    if run_dir is not None:
        if (run_dir / "decoder.pt").is_file():
            decoder = FeatureDecoder.load(run_dir / "decoder.pt").to(device).eval()
            if model.feature_dim != decoder.in_dim:
                raise ValueError(f"{run_dir / 'decoder.pt'} takes {decoder.in_dim} channels but the Gaussians in "
                                 f"{ply} carry {model.feature_dim}")
        if (run_dir / "distill_config.json").is_file():
            distill_config = _read_json(run_dir / "distill_config.json")
        if (run_dir / "config.json").is_file():
            train_config = _read_json(run_dir / "config.json").get("config", {})
        if (run_dir / SEMANTIC_FILE).is_file():
            class_names = _read_json(run_dir / SEMANTIC_FILE).get("class_names")
    if class_names is not None and SEMANTIC_PARAM in model.params:
        k = model.params[SEMANTIC_PARAM].shape[1]
        if len(class_names) != k:
            raise ValueError(f"{SEMANTIC_FILE} names {len(class_names)} classes but the Gaussians carry {k} logits")
    return FeatureScene(model=model, decoder=decoder, run_dir=run_dir, distill_config=distill_config or {},
                        train_config=train_config or {}, class_names=class_names)
