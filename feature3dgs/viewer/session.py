"""The viewer's state and logic, without a browser: render modes, SAM prompts, 3D selection, edits.

:class:`ViewerSession` is what the web viewer (:mod:`feature3dgs.viewer.server`) drives and what
the tests drive directly. It is thread-safe (one re-entrant lock around every state change and
render), so the server's render threads and GUI callbacks may call it concurrently.

Coordinates: prompts are pixel coordinates (x, y) = (column, row) of the camera they were given
on (the *prompt camera*); a new prompt on a camera with another pose starts a new prompt set.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from feature3dgs.apps.edit import delete, extract, recolor
from feature3dgs.apps.mask_fusion import gaussian_mask_votes
from feature3dgs.apps.query import LERF_NEGATIVES, relevancy_map
from feature3dgs.apps.segment import sam_masks_on_view, select_by_clicks
from feature3dgs.apps.semantic import render_semantic_logits
from feature3dgs.model.camera import Camera
from feature3dgs.model.gaussians import GaussianModel
from feature3dgs.run import Run, RunDir, load_run
from feature3dgs.training.config import background_arg
from feature3dgs.utils.io import check_writable_dir
from feature3dgs.utils.visualize import (
    FeaturePCA,
    class_palette,
    colorize_labels,
    depth_to_image,
)
from feature3dgs.viewer import overlay
from feature3dgs.viewer.camera_convert import same_pose

__all__ = ["ViewerSession", "MODES"]

PathLike = Union[str, Path]

#: every render mode the viewer knows; :meth:`ViewerSession.available_modes` lists a scene's
MODES = ("rgb", "depth", "alpha", "pca", "relevancy", "semantic")


class ViewerSession:
    """A loaded feature scene plus the viewer's state.

    Attributes:
        scene: the :class:`~feature3dgs.run.Run` (replaced by edits; the original is in ``history[0]``).
        mode: current render mode, one of :data:`MODES`.
        query: current text query ('' when none).
        prompt_camera: the camera the current prompts refer to (None before the first prompt).
        points: positive/negative prompt points (x, y) in prompt-camera pixels.
        labels: 1 (positive) or 0 (negative) per point.
        box_prompt: (x0, y0, x1, y1) in prompt-camera pixels, or None.
        mask: (H, W) bool SAM mask on the prompt camera, or None.
        mask_info: {'score', 'pixels', 'timings'} of the last mask.
        selection: (N,) bool selected Gaussians, or None.
    """

    def __init__(self, scene: Run, *, background=None, pca: Optional[FeaturePCA] = None,
                 weights_dir: Optional[str] = None, negatives: Optional[Sequence[str]] = LERF_NEGATIVES,
                 source_path: Optional[PathLike] = None):
        """
        Args:
            scene: the loaded scene.
            background: RGB background (name or 3 floats in [0, 1]); default: the run's config.
            pca: feature PCA for the 'pca' mode; default: the one the run saved (RunDir.PCA)
                (fitted on the first rendered view when absent).
            weights_dir: where the teacher's weights are (SAM prompts, text queries).
            negatives: canonical phrases for relevancy (LERF); None or () for plain cosine.
            source_path: the PLY the scene was read from (never overwritten by :meth:`save`).
        """
        self._lock = threading.RLock()
        self.scene = scene
        self.weights_dir = weights_dir
        self.negatives = tuple(negatives or ())
        if background is None:
            background = scene.train_config.background if scene.train_config is not None else (0.0, 0.0, 0.0)
        self.background = torch.tensor(background_arg(background))
        if source_path is None and scene.run_dir is not None:
            source_path = RunDir(scene.run_dir).file(RunDir.PLY)
        self.source_path = Path(source_path).resolve() if source_path is not None else None
        self.pca = pca
        self.pca_source = "given" if pca is not None else None
        if pca is None:
            self._load_saved_pca()
        self.mode = "rgb"
        self.query = ""
        self._text_cache: dict[str, Tensor] = {}
        self.history: list[tuple[str, GaussianModel]] = []
        self.edits: list[dict] = []
        self.last_render_ms = 0.0
        #: cosine threshold of click selection by feature similarity (scenes without SAM)
        self.similarity_threshold = 0.9
        self._clear_prompts()
        self.selection: Optional[Tensor] = None

    @classmethod
    def open(cls, path: PathLike, device: Union[str, torch.device] = "cpu", **kwargs) -> "ViewerSession":
        """Load a run folder (or a .ply) with :func:`~feature3dgs.run.load_run` and wrap it."""
        p = Path(path)
        scene = load_run(p, device=device)
        src = p if p.suffix.lower() == ".ply" else RunDir(p).file(RunDir.PLY)
        return cls(scene, source_path=src, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def model(self) -> GaussianModel:
        return self.scene.model

    @property
    def device(self) -> torch.device:
        return self.scene.device

    @property
    def num_gaussians(self) -> int:
        return self.scene.model.num_gaussians

    @property
    def has_text(self) -> bool:
        """The scene can answer text queries (CLIP / LSeg teacher, or a set teacher with a text encoder)."""
        if self.scene.model.features is None:
            return False
        if self.scene.teacher_override is not None:
            return hasattr(self.scene.teacher_override, "encode_text")
        return self.scene.teacher_kind in ("clip", "lseg")

    @property
    def has_sam(self) -> bool:
        """The scene was distilled from SAM (its prompt decoder can segment rendered features)."""
        if self.scene.model.features is None:
            return False
        if self.scene.teacher_override is not None:
            return hasattr(self.scene.teacher_override, "predict_masks")
        return self.scene.teacher_kind == "sam"

    def available_modes(self) -> list[str]:
        """The render modes this scene supports, in :data:`MODES` order."""
        modes = ["rgb", "depth", "alpha"]
        if self.scene.model.features is not None:
            modes.append("pca")
        if self.has_text:
            modes.append("relevancy")
        if self.scene.has_semantics:
            modes.append("semantic")
        return modes

    # ------------------------------------------------------------------ mode and query
    def set_mode(self, mode: str) -> None:
        """Switch the render mode.

        Raises:
            ValueError: unknown mode, or one the scene cannot render (e.g. 'relevancy' without a
                language teacher).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        avail = self.available_modes()
        if mode not in avail:
            why = {"pca": "its Gaussians carry no features",
                   "relevancy": "it was not distilled from a language teacher (CLIP or LSeg)",
                   "semantic": "its Gaussians carry no semantic class logits"}[mode]
            raise ValueError(f"this scene cannot show {mode!r}: {why}; available: {', '.join(avail)}")
        with self._lock:
            self.mode = mode

    def set_query(self, text: str) -> None:
        """Set the text query of the 'relevancy' mode ('' clears it). Encodes it once (and the
        canonical negatives) with the scene's text encoder.

        Raises:
            ValueError: the scene has no text encoder.
        """
        text = (text or "").strip()
        with self._lock:
            if text:
                if not self.has_text:
                    raise ValueError("text queries need a scene distilled from CLIP or LSeg")
                self._text_embedding(text)
            self.query = text

    def _text_embedding(self, text: str) -> Tensor:
        if text not in self._text_cache:
            self._text_cache[text] = self.scene.encode_text([text])[0]
        return self._text_cache[text]

    def _negatives_embedding(self) -> Optional[Tensor]:
        if not self.negatives:
            return None
        return torch.stack([self._text_embedding(n) for n in self.negatives])

    def _load_saved_pca(self) -> None:
        if self.scene.run_dir is None:
            return
        run = RunDir(self.scene.run_dir)
        self.pca = run.read_feature_pca()
        if self.pca is not None:
            self.pca_source = str(run.file(RunDir.PCA))

    # ------------------------------------------------------------------ rendering
    def _render(self, camera: Camera, feature_blocks: Sequence[Tensor]):
        feats = (torch.cat([b.to(self.device, torch.float32) for b in feature_blocks], dim=1)
                 if feature_blocks else None)
        with torch.no_grad():
            return self.scene.model.render(camera, self.background.to(self.device), features=feats)

    def _decode(self, feats: Tensor) -> Tensor:
        dec = self.scene.decoder
        return dec(feats) if dec is not None else feats

    def _pca_image(self, feats: Tensor) -> Tensor:
        decoded = None
        if self.pca is None:
            decoded = self._decode(feats)
            self.pca = FeaturePCA.fit(decoded)
            self.pca_source = "fitted on the first view shown (no renders/features/pca.pt)"
        c = self.pca.mean.shape[0]
        if c == feats.shape[0] and (self.scene.decoder is None or c != self.scene.decoder.out_dim):
            return self.pca(feats)
        decoded = self._decode(feats) if decoded is None else decoded
        if c != decoded.shape[0]:
            raise ValueError(f"the saved PCA ({self.pca_source}) takes {c} channels but the scene's features "
                             f"have {feats.shape[0]} (decoded {decoded.shape[0]})")
        return self.pca(decoded)

    def _semantic_image(self, camera: Camera, rgb_alpha: Tensor) -> Tensor:
        logits = render_semantic_logits(self.scene.model, camera.to(self.device))
        img = colorize_labels(logits.argmax(0), class_palette(logits.shape[0])).float().cpu()
        a = rgb_alpha.cpu()
        return img * a + self.background.cpu()[:, None, None] * (1 - a)

    def render_mode_image(self, camera: Camera, mode: Optional[str] = None, *,
                          selection_weight: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """The picture of ``mode`` (default: the current mode) at ``camera``.

        Returns:
            image (3, H, W) float in [0, 1] on the CPU, and with ``selection_weight`` (when there
            is a selection) the (H, W) blended weight of the selected Gaussians, else None.
        """
        mode = self.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        with self._lock, torch.no_grad():
            blocks = []
            if mode == "pca" or (mode == "relevancy" and self.query):
                if self.scene.model.features is None:
                    raise ValueError(f"mode {mode!r} needs features; the scene has none")
                blocks.append(self.scene.model.features.detach())
            sel = self.selection if (selection_weight and self.selection is not None) else None
            if sel is not None:
                blocks.append(sel.to(self.device, torch.float32)[:, None])
            out = self._render(camera, blocks)
            feats = out.features[:-1] if (sel is not None and out.features is not None) else out.features
            weight = out.features[-1].cpu() if sel is not None else None
            rgb = out.rgb.clamp(0, 1).cpu()
            if mode == "rgb":
                img = rgb
            elif mode == "depth":
                img = depth_to_image(out.depth, out.alpha).cpu().expand(3, -1, -1)
            elif mode == "alpha":
                img = out.alpha.clamp(0, 1).cpu().expand(3, -1, -1)
            elif mode == "pca":
                img = self._pca_image(feats).cpu()
            elif mode == "relevancy":
                if not self.query:
                    img = rgb  # nothing to score yet: show the scene
                else:
                    rel = relevancy_map(self._decode(feats), self._text_embedding(self.query),
                                        self._negatives_embedding())
                    heat = torch.from_numpy(overlay.apply_colormap(rel.cpu().numpy())).permute(2, 0, 1) / 255.0
                    img = 0.35 * rgb + 0.65 * heat
            else:
                img = self._semantic_image(camera, out.alpha.clamp(0, 1))
            return img.contiguous(), weight

    def render_frame(self, camera: Camera, mode: Optional[str] = None, *, overlays: bool = True) -> np.ndarray:
        """The viewer's frame at ``camera``: the mode's picture plus (with ``overlays``) the SAM mask,
        the prompts (when ``camera`` has the prompt camera's pose, at any resolution) and the
        selected Gaussians (from other views).

        Returns:
            (H, W, 3) uint8.
        """
        t0 = time.perf_counter()
        with self._lock:
            img, weight = self.render_mode_image(camera, mode, selection_weight=overlays)
            frame = (img.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
            if overlays:
                frame = self._draw_overlays(frame, camera, weight)
            self.last_render_ms = 1e3 * (time.perf_counter() - t0)
            return frame

    def _draw_overlays(self, frame: np.ndarray, camera: Camera, weight: Optional[Tensor]) -> np.ndarray:
        H, W = frame.shape[:2]
        on_prompt_view = self.prompt_camera is not None and same_pose(self.prompt_camera, camera)
        if on_prompt_view and self.mask is not None:
            frame = overlay.draw_mask(frame, overlay.resize_nearest(self.mask, H, W))
        elif weight is not None:
            frame = overlay.tint(frame, weight.numpy(), overlay.SELECTION_COLOR, 0.55)
        if on_prompt_view:
            sx, sy = W / self.prompt_camera.width, H / self.prompt_camera.height
            if self.box_prompt is not None:
                x0, y0, x1, y1 = self.box_prompt
                frame = overlay.draw_box(frame, (x0 * sx, y0 * sy, x1 * sx, y1 * sy))
            if self.points:
                frame = overlay.draw_points(frame, [(x * sx, y * sy) for x, y in self.points], self.labels)
        return frame

    # ------------------------------------------------------------------ prompts
    def _clear_prompts(self) -> None:
        self.prompt_camera: Optional[Camera] = None
        self.points: list[tuple[float, float]] = []
        self.labels: list[int] = []
        self.box_prompt: Optional[tuple[float, float, float, float]] = None
        self.mask: Optional[np.ndarray] = None
        self.mask_info: dict[str, Any] = {}

    def clear_prompts(self) -> None:
        """Forget the prompts and the mask (the 3D selection stays)."""
        with self._lock:
            self._clear_prompts()

    def _use_camera(self, camera: Optional[Camera]) -> Camera:
        if camera is None:
            if self.prompt_camera is None:
                raise ValueError("no camera: give the camera the prompt refers to")
            return self.prompt_camera
        if self.prompt_camera is None or not (same_pose(self.prompt_camera, camera)
                                              and camera.width == self.prompt_camera.width
                                              and camera.height == self.prompt_camera.height):
            self._clear_prompts()
            self.prompt_camera = camera
        return self.prompt_camera

    def click(self, x: float, y: float, positive: bool = True, camera: Optional[Camera] = None) -> np.ndarray:
        """Add a point prompt at pixel (x, y) of ``camera`` and segment: SAM's prompt decoder on the
        rendered features for a SAM scene; for other feature scenes (CLIP, LSeg, ...) feature
        similarity (pixels whose rendered feature is closer to a positive click's than to every
        negative click's, or above ``similarity_threshold`` without negatives).

        Args:
            x, y: pixel coordinates (column, row) in [0, W) x [0, H).
            positive: True for a foreground point (a click), False for background (shift-click).
            camera: the view clicked on (default: the current prompt camera). A camera with
                another pose (or size) starts a new set of prompts.
        Returns:
            the (H, W) bool mask (also in ``self.mask``).
        Raises:
            ValueError: the point lies outside the image, or the scene has no features.
        """
        with self._lock:
            self._require_features()
            prev = (self.prompt_camera, list(self.points), list(self.labels), self.box_prompt, self.mask,
                    dict(self.mask_info))
            cam = self._use_camera(camera)
            if not (0 <= x < cam.width and 0 <= y < cam.height) or not np.isfinite([x, y]).all():
                self._restore(prev)
                raise ValueError(f"click ({x}, {y}) is outside the {cam.width}x{cam.height} view")
            self.points.append((float(x), float(y)))
            self.labels.append(1 if positive else 0)
            try:
                return self._run_sam() if self.has_sam else self._run_similarity()
            except Exception:
                self._restore(prev)
                raise

    def box(self, x0: float, y0: float, x1: float, y1: float, camera: Optional[Camera] = None) -> np.ndarray:
        """Set the box prompt (corners in pixels, any order; clipped to the image) and run SAM.
        Points already given on the same view are kept and combined with the box.

        Raises:
            ValueError: the box is smaller than 2 pixels or outside the image, or the scene was not
                distilled from SAM (box prompts need SAM's decoder).
        """
        with self._lock:
            self._require_sam()
            vals = np.asarray([x0, y0, x1, y1], dtype=np.float64)
            if not np.isfinite(vals).all():
                raise ValueError(f"box corners must be finite, got {vals.tolist()}")
            prev = (self.prompt_camera, list(self.points), list(self.labels), self.box_prompt, self.mask,
                    dict(self.mask_info))
            cam = self._use_camera(camera)
            xa, xb = sorted((float(np.clip(x0, 0, cam.width)), float(np.clip(x1, 0, cam.width))))
            ya, yb = sorted((float(np.clip(y0, 0, cam.height)), float(np.clip(y1, 0, cam.height))))
            if xb - xa < 2 or yb - ya < 2:
                self._restore(prev)
                raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) covers less than 2x2 pixels of the "
                                 f"{cam.width}x{cam.height} view")
            self.box_prompt = (xa, ya, xb, yb)
            try:
                return self._run_sam()
            except Exception:
                self._restore(prev)
                raise

    def _restore(self, prev) -> None:
        (self.prompt_camera, self.points, self.labels, self.box_prompt, self.mask, self.mask_info) = prev

    def _require_sam(self) -> None:
        if not self.has_sam:
            raise ValueError("box prompts need a scene distilled from SAM (its prompt decoder segments the "
                             f"rendered features); this scene's teacher is {self.scene.teacher_kind!r}")

    def _require_features(self) -> None:
        if self.scene.model.features is None:
            raise ValueError("click-to-segment needs Gaussians with distilled features; this scene has none")

    @property
    def segmenter(self) -> str:
        """'sam' (SAM's prompt decoder), 'similarity' (feature matching) or 'none'."""
        return "sam" if self.has_sam else ("similarity" if self.scene.model.features is not None else "none")

    def _run_similarity(self) -> np.ndarray:
        if not any(self.labels):
            self.mask = np.zeros((self.prompt_camera.height, self.prompt_camera.width), dtype=bool)
            self.mask_info = {"score": None, "pixels": 0, "candidates": 1, "timings": {}}
            return self.mask
        with torch.no_grad():
            feats = self._render(self.prompt_camera, [self.scene.model.features.detach()]).features
        pos = [p for p, lab in zip(self.points, self.labels) if lab]
        neg = [p for p, lab in zip(self.points, self.labels) if not lab]
        mask = select_by_clicks(feats, pos, feats, threshold=self.similarity_threshold, negative_clicks=neg or None)
        self.mask = mask.cpu().numpy().astype(bool)
        self.mask_info = {"score": None, "pixels": int(self.mask.sum()), "candidates": 1, "timings": {}}
        return self.mask

    def _run_sam(self) -> np.ndarray:
        teacher = self.scene.teacher(self.weights_dir)
        cam = self.prompt_camera.to(self.device)
        pts = np.asarray(self.points, dtype=np.float32).reshape(-1, 2) if self.points else None
        labels = np.asarray(self.labels, dtype=np.int64) if self.points else None
        boxes = np.asarray(self.box_prompt, dtype=np.float32)[None] if self.box_prompt is not None else None
        # SAM's advice: three candidate masks for a lone (ambiguous) click, one for richer prompts.
        multi = boxes is None and len(self.points) == 1
        res = sam_masks_on_view(self.scene.model, cam, self.scene.decoder, teacher, pts, labels, boxes,
                                multimask_output=multi)
        masks, scores = res.masks.cpu(), res.scores.cpu()
        # the best-scoring candidate that selects anything (an empty mask says nothing to the user)
        nonempty = masks.flatten(1).any(1)
        order = torch.argsort(scores, descending=True).tolist()
        best = next((i for i in order if bool(nonempty[i])), order[0])
        self.mask = masks[best].numpy().astype(bool)
        self.mask_info = {"score": float(scores[best]), "pixels": int(self.mask.sum()),
                          "candidates": int(masks.shape[0]), "timings": dataclasses.asdict(res.timings)}
        return self.mask

    # ------------------------------------------------------------------ selection and edits
    def select_from_mask(self, threshold: float = 0.5) -> Tensor:
        """Lift the 2D mask to the 3D selection: the Gaussians whose share of blending weight
        inside the mask (on the prompt camera) exceeds ``threshold``.

        Returns:
            (N,) bool selection (also in ``self.selection``).
        Raises:
            ValueError: there is no mask yet.
        """
        with self._lock:
            if self.mask is None or self.prompt_camera is None:
                raise ValueError("no mask to select from: click on the object (or draw a box) first")
            mask = torch.from_numpy(self.mask)
            cam = self.prompt_camera.to(self.device)
            votes = gaussian_mask_votes(self.scene.model, [cam], [mask.to(self.device)])
            self.selection = (torch.as_tensor(votes).reshape(-1) > threshold).to(self.device)
            return self.selection

    def select(self, selection: Tensor) -> None:
        """Set the 3D selection directly ((N,) bool)."""
        sel = torch.as_tensor(selection, device=self.device)
        if sel.dtype != torch.bool or sel.shape != (self.num_gaussians,):
            raise ValueError(f"selection must be a ({self.num_gaussians},) bool tensor, got "
                             f"{tuple(sel.shape)} {sel.dtype}")
        with self._lock:
            self.selection = sel

    def _selection_or_lift(self) -> Tensor:
        if self.selection is None:
            if self.mask is None:
                raise ValueError("nothing selected: click on the object (or draw a box) first")
            self.select_from_mask()
        if not bool(self.selection.any()):
            raise ValueError("the selection holds no Gaussians")
        return self.selection

    def _apply(self, name: str, new_model: GaussianModel, info: dict, keep_selection: Optional[Tensor] = None) -> int:
        self.history.append((name, self.scene.model))
        self.edits.append({"op": name, "before": self.scene.model.num_gaussians,
                           "after": new_model.num_gaussians, **info})
        self.scene = self.scene.with_model(new_model)
        self._clear_prompts()
        self.selection = keep_selection
        return new_model.num_gaussians

    def delete_selected(self) -> int:
        """Remove the selected Gaussians (lifting the mask first when nothing is selected).
        Returns the new number of Gaussians."""
        with self._lock:
            sel = self._selection_or_lift()
            return self._apply("delete", delete(self.scene.model, sel), {"selected": int(sel.sum())})

    def extract_selected(self) -> int:
        """Keep only the selected Gaussians. Returns the new number of Gaussians."""
        with self._lock:
            sel = self._selection_or_lift()
            return self._apply("extract", extract(self.scene.model, sel), {"selected": int(sel.sum())})

    def recolor_selected(self, rgb: Sequence[float]) -> int:
        """Give the selected Gaussians the constant colour ``rgb`` (3 floats in [0, 1]); the selection
        is kept. Returns the number of Gaussians recoloured."""
        color = [float(c) for c in rgb]
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"rgb must be 3 values in [0, 1], got {list(rgb)}")
        with self._lock:
            sel = self._selection_or_lift()
            self._apply("recolor", recolor(self.scene.model, sel, color), {"selected": int(sel.sum()), "rgb": color},
                        keep_selection=sel.clone())
            return int(sel.sum())

    def undo(self) -> bool:
        """Revert the last edit. Returns False when there is nothing to undo."""
        with self._lock:
            if not self.history:
                return False
            _, model = self.history.pop()
            self.edits.pop()
            self.scene = self.scene.with_model(model)
            self._clear_prompts()
            self.selection = None
            return True

    def save(self, out_dir: PathLike, overwrite: bool = False) -> Path:
        """Write the (edited) scene as a new run folder that ``feature3dgs view`` opens again:
        point_cloud.ply, decoder.pt, the configs, the PCA of the feature images and a record of
        the edits (viewer_edits.json).

        Raises:
            ValueError: ``out_dir`` is the folder of the original scene (never overwritten), or
                cannot be written (a file, under a file, read-only); nothing is written then.
            FileExistsError: ``out_dir`` already holds a point_cloud.ply and not ``overwrite``.
        Returns:
            the PLY path.
        """
        out = Path(out_dir).expanduser()
        ply = (out / RunDir.PLY).resolve()
        if self.source_path is not None and ply == self.source_path:
            raise ValueError(f"refusing to overwrite the original scene {self.source_path}; "
                             "choose another output folder")
        if self.scene.run_dir is not None and out.resolve() == Path(self.scene.run_dir).resolve():
            raise ValueError(f"refusing to overwrite the original scene in {out}; choose another output folder")
        if ply.exists() and not overwrite:
            raise FileExistsError(f"{ply} exists; choose a new folder (or pass overwrite=True)")
        check_writable_dir(out, "the save folder")
        with self._lock:
            path = self.scene.save(out)
            run = RunDir(out)
            if self.pca is not None:
                run.write_feature_pca(self.pca)
            if self.scene.run_dir is not None:
                run.copy_log_from(RunDir(self.scene.run_dir))
            run.write_edit_log(str(self.source_path) if self.source_path else None, self.edits)
            return path

    def default_save_dir(self) -> Path:
        """A folder next to the original that does not exist yet: ``<scene>_edit``, ``<scene>_edit2``, ..."""
        base = (Path(self.scene.run_dir) if self.scene.run_dir is not None
                else (self.source_path.parent if self.source_path else Path.cwd() / "scene"))
        i = 1
        while True:
            cand = base.parent / f"{base.name}_edit{'' if i == 1 else i}"
            if not cand.exists():
                return cand
            i += 1

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """A snapshot for the GUI (and tests): mode, query, prompts, mask and selection sizes."""
        with self._lock:
            return {"mode": self.mode, "query": self.query, "n_gaussians": self.num_gaussians,
                    "points": list(self.points), "labels": list(self.labels), "box": self.box_prompt,
                    "mask_pixels": None if self.mask is None else int(self.mask.sum()),
                    "mask_score": self.mask_info.get("score"),
                    "selected": None if self.selection is None else int(self.selection.sum()),
                    "edits": len(self.edits), "render_ms": self.last_render_ms}
