"""The web viewer: viser wiring around a :class:`~feature3dgs.viewer.session.ViewerSession`.

Every frame comes from the package's render(): each connected browser gets a render thread that
turns its camera (``client.camera``) into a :class:`~feature3dgs.model.camera.Camera` and sends the
frame as the scene's background image. While the camera moves, frames are rendered at a reduced
resolution chosen to keep each frame within a time budget (so a CPU stays interactive); once the
camera has been still for ``settle_s`` (0.2 s) the frame is re-rendered at full resolution.

Controls (viser >= 1.1 reports the modifier keys of scene clicks):

* click: positive SAM point; shift-click: negative point (or tick "negative clicks");
* ctrl-drag (cmd-drag on macOS): box prompt (a plain drag orbits the camera);
* GUI panel: render mode, text query, lift the mask to 3D, delete / extract / recolour, undo,
  save as a new scene, training curves.

Needs ``pip install viser``; everything else is in :mod:`feature3dgs.viewer.session`.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from feature3dgs.model.camera import Camera
from feature3dgs.rendering.device import resolve_device
from feature3dgs.run import RunDir
from feature3dgs.utils.optional import require
from feature3dgs.viewer.address import check_listen_address
from feature3dgs.viewer.camera_convert import (
    camera_from_client,
    scene_up_direction,
    viser_pose_from_camera,
)
from feature3dgs.viewer.curves import plot_curves, save_curves
from feature3dgs.viewer.session import ViewerSession

__all__ = ["ViewerServer", "serve", "require_viser", "default_max_resolution"]

PathLike = Union[str, Path]

_MODE_LABELS = {"rgb": "RGB", "depth": "depth", "alpha": "alpha", "pca": "feature PCA",
                "relevancy": "text relevancy", "semantic": "semantic classes"}
_LABEL_MODES = {v: k for k, v in _MODE_LABELS.items()}


def require_viser():
    """Import viser, or raise MissingDependencyError naming it and its pip command."""
    return require("viser", "viser", "the web viewer (feature3dgs view)")


def default_max_resolution(device: Union[str, torch.device]) -> int:
    """Longer side, in pixels, of a refined frame: 1920 on a GPU, 640 on a CPU."""
    return 1920 if torch.device(device).type == "cuda" else 640


class _ClientView:
    """One browser tab: its camera, its render thread and the frames sent to it."""

    def __init__(self, owner: "ViewerServer", client) -> None:
        self.owner = owner
        self.client = client
        self.cond = threading.Condition()
        self.version = 0
        self.rendered_version = -1
        self.rendered_full = False
        self.last_move = 0.0
        self.have_camera = False
        self.stopped = False
        self.frames = 0
        self.full_frames = 0
        self.moving_frames = 0
        self.last_moving_camera: Optional[Camera] = None
        self.last_frame: Optional[np.ndarray] = None
        self.last_camera: Optional[Camera] = None
        self.last_full: bool = False
        self.ms_per_px: Optional[float] = None
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"viewer-render-{client.client_id}")
        client.camera.on_update(self._on_camera)
        self.thread.start()

    # ------------------------------------------------------------------ events
    def _on_camera(self, _camera) -> None:
        with self.cond:
            self.have_camera = True
            self.version += 1
            self.last_move = time.monotonic()
            self.cond.notify()

    def invalidate(self) -> None:
        """Re-render at full resolution (the scene or the state changed, not the camera)."""
        with self.cond:
            self.version += 1
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    # ------------------------------------------------------------------ cameras
    def full_long_side(self) -> int:
        cam = self.client.camera
        canvas = max(int(cam.image_width), int(cam.image_height))
        return max(16, min(self.owner.max_resolution, canvas if canvas > 0 else self.owner.max_resolution))

    def moving_long_side(self) -> int:
        full = self.full_long_side()
        if self.owner.moving_resolution is not None:
            return max(16, min(full, self.owner.moving_resolution))
        if self.ms_per_px is None:
            return max(16, full // 2)
        aspect = max(self.client.camera.aspect, 1e-3)
        px = self.owner.target_frame_ms / self.ms_per_px
        side = int(math.sqrt(px * max(aspect, 1.0 / aspect)))
        return max(min(64, full), min(full, side))

    def camera(self, full: bool = True) -> Camera:
        """The package camera of the browser's current view (full or moving resolution)."""
        side = self.full_long_side() if full else self.moving_long_side()
        return camera_from_client(self.client.camera, side, name=f"client{self.client.client_id}")

    # ------------------------------------------------------------------ render loop
    def _loop(self) -> None:
        settle = self.owner.settle_s
        while True:
            with self.cond:
                while True:
                    if self.stopped:
                        return
                    version = self.version
                    moving = time.monotonic() - self.last_move < settle
                    need = self.have_camera and (version != self.rendered_version
                                                 or (not self.rendered_full and not moving))
                    if need:
                        break
                    # sleep until the next camera/state change, or until the camera counts as still
                    self.cond.wait(timeout=0.05)
            full = not moving
            try:
                self._render_and_send(full)
            except Exception as e:  # keep the thread alive; show the error once per version
                self.owner._report_error(self.client, "render failed", e)
                full = True  # do not retry this version in a loop
            with self.cond:
                self.rendered_version = version
                self.rendered_full = full

    def _render_and_send(self, full: bool) -> None:
        cam = self.camera(full)
        t0 = time.perf_counter()
        frame = self.owner.session.render_frame(cam)
        ms = 1e3 * (time.perf_counter() - t0)
        rate = ms / float(cam.width * cam.height)
        self.ms_per_px = rate if self.ms_per_px is None else 0.7 * self.ms_per_px + 0.3 * rate
        self.client.scene.set_background_image(frame, format="jpeg", jpeg_quality=90 if full else 75)
        self.last_frame, self.last_camera, self.last_full = frame, cam, full
        self.frames += 1
        if full:
            self.full_frames += 1
            self.owner._update_status(cam, ms)
        else:
            self.moving_frames += 1
            self.last_moving_camera = cam


class ViewerServer:
    """A running viewer: a viser server, its GUI and one render thread per browser tab.

    Use as a context manager, or call :meth:`stop` (idempotent). Attributes for tests and
    scripts: ``session`` (the :class:`ViewerSession`), ``views`` ({client_id: view}) with each
    view's ``last_frame`` (H, W, 3) uint8, ``last_camera`` and frame counters.
    """

    def __init__(self, session: ViewerSession, *, host: str = "127.0.0.1", port: int = 8080,
                 max_resolution: Optional[int] = None, moving_resolution: Optional[int] = None,
                 target_frame_ms: Optional[float] = None, settle_s: float = 0.2,
                 train_cameras: Sequence[Camera] = (), verbose: bool = True) -> None:
        """
        Args:
            session: the scene and state to show.
            host: interface to listen on ('127.0.0.1': this machine only; '0.0.0.0': every interface).
            port: TCP port (0: any free port). A port in use is an error (viser would silently take
                the next free one).
            max_resolution: longer side of refined frames in pixels (default: 1920 GPU / 640 CPU),
                never more than the browser canvas.
            moving_resolution: longer side while the camera moves (default: adaptive, to keep a
                frame within ``target_frame_ms``).
            target_frame_ms: time budget of a frame while moving (default 30 ms GPU / 120 ms CPU).
            settle_s: the camera counts as stopped after this many seconds without an update.
            train_cameras: training views: the viewer opens at the first and offers the others.
            verbose: print the address and errors.
        """
        viser = require_viser()
        self.session = session
        cuda = session.device.type == "cuda"
        self.max_resolution = int(max_resolution or default_max_resolution(session.device))
        if self.max_resolution < 16:
            raise ValueError(f"max_resolution must be >= 16 pixels, got {self.max_resolution}")
        self.moving_resolution = moving_resolution
        self.target_frame_ms = float(target_frame_ms or (30.0 if cuda else 120.0))
        self.settle_s = float(settle_s)
        self.verbose = verbose
        self.train_cameras = list(train_cameras)
        self.views: dict[int, _ClientView] = {}
        self._views_lock = threading.Lock()
        self._stopped = False
        self._status_text = ""
        self._last_error: Optional[tuple[str, str]] = None
        check_listen_address(host, port)
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.host = host
        self.port = int(self.server.get_port())
        try:
            if port and self.port != port:  # taken between the check and the start
                raise ValueError(f"port (--port) {port} is already in use on {host}; choose another port, or 0 "
                                 "for any free one")
            self._setup_scene()
            self._setup_gui()
            self.server.on_client_connect(self._on_connect)
            self.server.on_client_disconnect(self._on_disconnect)
            self._setup_pointer()
        except BaseException:
            self.server.stop()
            raise

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop the render threads and the server (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        with self._views_lock:
            views = list(self.views.values())
        for v in views:
            v.stop()
        for v in views:
            v.thread.join(timeout=10)
        self.server.stop()

    def __enter__(self) -> "ViewerServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` has run."""
        return self._stopped

    def wait(self) -> None:
        """Block until :meth:`stop` (from another thread) or KeyboardInterrupt."""
        while not self._stopped:
            time.sleep(0.2)

    def wait_for_frame(self, full_frames: int = 1, timeout: float = 30.0, client_id: Optional[int] = None) -> _ClientView:
        """Wait until a browser has received ``full_frames`` refined frames; returns its view.

        Raises:
            TimeoutError: none did within ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._views_lock:
                views = [v for cid, v in self.views.items() if client_id is None or cid == client_id]
            for v in views:
                if v.full_frames >= full_frames:
                    return v
            time.sleep(0.02)
        raise TimeoutError(f"no browser received {full_frames} refined frame(s) within {timeout} s")

    def invalidate(self) -> None:
        """Re-render every browser's view (after a state change)."""
        with self._views_lock:
            views = list(self.views.values())
        for v in views:
            v.invalidate()

    # ------------------------------------------------------------------ clients
    def _on_connect(self, client) -> None:
        view = _ClientView(self, client)
        with self._views_lock:
            self.views[client.client_id] = view

    def _on_disconnect(self, client) -> None:
        with self._views_lock:
            view = self.views.pop(client.client_id, None)
        if view is not None:
            view.stop()

    def _view(self, client) -> Optional[_ClientView]:
        with self._views_lock:
            return self.views.get(client.client_id) if client is not None else None

    def _report_error(self, client, title: str, exc: BaseException) -> None:
        msg = str(exc) or type(exc).__name__
        repeated = (title, msg) == self._last_error
        self._last_error = (title, msg)
        if self.verbose and not repeated and not isinstance(exc, ValueError):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        self._set_status(f"**{title}:** {msg}")
        if client is not None and not repeated:
            try:
                client.add_notification(title, msg, color="red", auto_close_seconds=8.0)
            except Exception:
                pass

    # ------------------------------------------------------------------ scene and camera
    def _setup_scene(self) -> None:
        cams = self.train_cameras
        up = scene_up_direction(cams)
        self.up = up
        self.server.scene.set_up_direction(tuple(float(u) for u in up))
        m = self.session.model.means.detach().cpu().double()
        self.scene_center = m.median(dim=0).values.numpy() if m.shape[0] else np.zeros(3)
        if cams:
            self._initial = self._pose_for(cams[0])
        else:  # no training views: look at the Gaussians from outside their bulk
            extent = float((m.quantile(0.95, dim=0) - m.quantile(0.05, dim=0)).norm()) if m.shape[0] > 1 else 1.0
            side = np.cross(up, [1.0, 0.0, 0.0])
            if np.linalg.norm(side) < 1e-3:
                side = np.cross(up, [0.0, 1.0, 0.0])
            side /= np.linalg.norm(side)
            pos = self.scene_center + (1.5 * extent + 1e-3) * (side + 0.5 * up)
            self._initial = (pos, self.scene_center, up, math.radians(50))
        pos, look, upv, fov = self._initial
        ic = self.server.initial_camera
        ic.position = tuple(float(v) for v in pos)
        ic.look_at = tuple(float(v) for v in look)
        ic.up = tuple(float(v) for v in upv)
        ic.fov = float(fov)

    def _pose_for(self, cam: Camera):
        centre = cam.center.detach().double().cpu().numpy()
        fwd = cam.R.detach().double().cpu().numpy()[2]
        d = float(np.dot(self.scene_center - centre, fwd))
        d = d if d > 1e-3 else 1.0
        pose = viser_pose_from_camera(cam, look_distance=d, up=self.up)
        return pose.position, pose.look_at, pose.up, pose.fov_y

    def move_client_to(self, client, cam: Camera) -> None:
        """Move a browser's camera to a (training) camera's pose and vertical field of view."""
        pos, look, up, fov = self._pose_for(cam)
        with client.atomic():
            client.camera.fov = float(fov)
            client.camera.up_direction = tuple(float(v) for v in up)
            client.camera.position = tuple(float(v) for v in pos)
            client.camera.look_at = tuple(float(v) for v in look)

    # ------------------------------------------------------------------ pointer
    def _setup_pointer(self) -> None:
        scene = self.server.scene

        @scene.on_click()
        def _click(event) -> None:
            self._on_click(event.client, event.screen_pos, positive=not self.gui_negative.value)

        @scene.on_click(modifier="shift")
        def _shift_click(event) -> None:
            self._on_click(event.client, event.screen_pos, positive=False)

        @scene.on_rect_select(modifier="cmd/ctrl")
        def _box(event) -> None:
            self._on_box(event.client, event.screen_min, event.screen_max)

    def _pixel(self, cam: Camera, uv: Sequence[float]) -> tuple[float, float]:
        x = min(max(float(uv[0]), 0.0), 1.0) * cam.width
        y = min(max(float(uv[1]), 0.0), 1.0) * cam.height
        return min(x, cam.width - 1e-3), min(y, cam.height - 1e-3)

    def _on_click(self, client, screen_pos: Sequence[float], positive: bool) -> None:
        view = self._view(client)
        if view is None or not view.have_camera:
            return
        try:
            cam = view.camera(full=True)
            x, y = self._pixel(cam, screen_pos)
            self.session.click(x, y, positive=positive, camera=cam)
        except Exception as e:
            self._report_error(client, "segmentation failed", e)
        self._after_prompt()

    def _on_box(self, client, screen_min: Sequence[float], screen_max: Sequence[float]) -> None:
        view = self._view(client)
        if view is None or not view.have_camera:
            return
        try:
            cam = view.camera(full=True)
            x0, y0 = self._pixel(cam, screen_min)
            x1, y1 = self._pixel(cam, screen_max)
            self.session.box(x0, y0, x1, y1, camera=cam)
        except Exception as e:
            self._report_error(client, "box segmentation failed", e)
        self._after_prompt()

    def _after_prompt(self) -> None:
        st = self.session.status()
        if st["mask_pixels"] is not None:
            pos = sum(st["labels"])
            score = "" if st["mask_score"] is None else f" (SAM score {st['mask_score']:.2f})"
            self._set_seg_status(f"mask: {st['mask_pixels']} px{score}; "
                                 f"{pos} positive / {len(st['labels']) - pos} negative point(s)"
                                 + ("; box" if st["box"] else ""))
        self.invalidate()

    # ------------------------------------------------------------------ GUI
    def _setup_gui(self) -> None:
        gui = self.server.gui
        s = self.session
        gui.configure_theme(control_width="medium")
        self._status = gui.add_markdown("")
        with gui.add_folder("View"):
            labels = [_MODE_LABELS[m] for m in s.available_modes()]
            self.gui_mode = gui.add_dropdown("Mode", labels, initial_value=_MODE_LABELS[s.mode])
            self.gui_query = gui.add_text("Text query", s.query, visible=s.has_text,
                                          hint="relevancy of each pixel to this phrase (CLIP / LSeg scenes)")
            self.gui_res = gui.add_slider("Max resolution", 64, 4096, 32, self.max_resolution,
                                          hint="longer side of a still frame, in pixels")
            names = [c.name or f"view {i}" for i, c in enumerate(self.train_cameras)]
            self.gui_view = gui.add_dropdown("Training view", names or ["(none)"], initial_value=(names or ["(none)"])[0],
                                             disabled=not names)
        seg = s.segmenter
        with gui.add_folder("Segment (SAM)" if seg == "sam" else "Segment (feature similarity)", visible=seg != "none"):
            gui.add_markdown("Click: positive point. Shift-click: negative point."
                             + (" Ctrl-drag (Cmd-drag): box." if seg == "sam" else ""))
            self.gui_negative = gui.add_checkbox("Negative clicks", False,
                                                 hint="make plain clicks negative (for touch screens)")
            self._seg_status = gui.add_markdown("no prompt yet")
            clear = gui.add_button("Clear prompts")
            lift = gui.add_button("Select Gaussians in mask",
                                  hint="lift the 2D mask to 3D: Gaussians with most of their weight inside it")
        with gui.add_folder("Edit"):
            self._sel_status = gui.add_markdown("nothing selected")
            b_del = gui.add_button("Delete selected")
            b_ext = gui.add_button("Extract selected")
            self.gui_color = gui.add_rgb("Colour", (255, 60, 60))
            b_rec = gui.add_button("Recolour selected")
            b_undo = gui.add_button("Undo edit")
            self.gui_save_dir = gui.add_text("Save to", str(s.default_save_dir()))
            b_save = gui.add_button("Save as new scene")
        self._setup_curves()

        @self.gui_mode.on_update
        def _(event) -> None:
            try:
                s.set_mode(_LABEL_MODES[self.gui_mode.value])
            except Exception as e:
                self._report_error(event.client, "mode", e)
            self.invalidate()

        @self.gui_query.on_update
        def _(event) -> None:
            try:
                s.set_query(self.gui_query.value)
                if self.gui_query.value.strip() and s.mode != "relevancy" and "relevancy" in s.available_modes():
                    s.set_mode("relevancy")
                    self.gui_mode.value = _MODE_LABELS["relevancy"]
            except Exception as e:
                self._report_error(event.client, "text query", e)
            self.invalidate()

        @self.gui_res.on_update
        def _(event) -> None:
            self.max_resolution = int(self.gui_res.value)
            self.invalidate()

        @self.gui_view.on_update
        def _(event) -> None:
            if event.client is None or not self.train_cameras:
                return
            try:
                i = names.index(self.gui_view.value)
                self.move_client_to(event.client, self.train_cameras[i])
            except Exception as e:
                self._report_error(event.client, "camera", e)

        @clear.on_click
        def _(event) -> None:
            s.clear_prompts()
            self._set_seg_status("no prompt yet")
            self.invalidate()

        def edit(fn, title):
            def handler(event) -> None:
                try:
                    msg = fn()
                    self._set_sel_status(msg)
                except Exception as e:
                    self._report_error(event.client, title, e)
                self._set_seg_status("no prompt yet" if s.mask is None else self._seg_status.content)
                self.invalidate()
            return handler

        def do_lift():
            sel = s.select_from_mask()
            return f"{int(sel.sum())} of {s.num_gaussians} Gaussians selected"

        def do_rgb():
            n = s.recolor_selected([c / 255.0 for c in self.gui_color.value])
            return f"recoloured {n} Gaussians"

        lift.on_click(edit(do_lift, "select"))
        b_del.on_click(edit(lambda: f"deleted; {s.delete_selected()} Gaussians left", "delete"))
        b_ext.on_click(edit(lambda: f"extracted; {s.extract_selected()} Gaussians left", "extract"))
        b_rec.on_click(edit(do_rgb, "recolour"))
        b_undo.on_click(edit(lambda: "undone" if s.undo() else "nothing to undo", "undo"))

        @b_save.on_click
        def _(event) -> None:
            try:
                path = s.save(self.gui_save_dir.value)
                self._set_sel_status(f"saved {path}")
                self.gui_save_dir.value = str(s.default_save_dir())
                if event.client is not None:
                    event.client.add_notification("saved", str(path), color="green", auto_close_seconds=6.0)
            except Exception as e:
                self._report_error(event.client, "save", e)

    def _setup_curves(self) -> None:
        log = RunDir(self.session.scene.run_dir).log_path() if self.session.scene.run_dir is not None else None
        if log is None:
            return
        try:
            image = plot_curves(log)
        except (ValueError, OSError) as e:
            if self.verbose:
                print(f"training curves not shown: {e}")
            return
        gui = self.server.gui
        with gui.add_folder("Training curves", expand_by_default=False):
            gui.add_image(image, format="png")
            b = gui.add_button("Save curves.png", hint=f"write {log.parent / 'curves.png'}")

        @b.on_click
        def _(event) -> None:
            out = log.parent / "curves.png"
            try:
                save_curves(image, out)
                if event.client is not None:
                    event.client.add_notification("saved", str(out), color="green", auto_close_seconds=6.0)
            except OSError as e:
                self._report_error(event.client, "save curves", e)

    def _set_status(self, text: str) -> None:
        if text != self._status_text:
            self._status_text = text
            self._status.content = text

    def _set_seg_status(self, text: str) -> None:
        if getattr(self, "_seg_status", None) is not None and self._seg_status.content != text:
            self._seg_status.content = text

    def _set_sel_status(self, text: str) -> None:
        if self._sel_status.content != text:
            self._sel_status.content = text

    def _update_status(self, cam: Camera, ms: float) -> None:
        s = self.session
        mode = _MODE_LABELS[s.mode] + (f" '{s.query}'" if s.mode == "relevancy" and s.query else "")
        self._set_status(f"{mode} · {cam.width}×{cam.height} px · {ms:.0f} ms · {s.num_gaussians} Gaussians")


def serve(scene_dir: PathLike, host: str = "127.0.0.1", port: int = 8080, *,
          device: Union[str, torch.device, None] = None, max_resolution: Optional[int] = None,
          weights_dir: Optional[str] = None, verbose: bool = True, **kwargs) -> ViewerServer:
    """Load a run folder (or .ply) and start the viewer on ``host:port``; prints the address.

    Args:
        scene_dir: a distillation / training output folder, or a .ply.
        host: '127.0.0.1' (default) serves this machine only; '0.0.0.0' every interface.
        port: TCP port (0: any free port; a port in use is a ValueError).
        device: 'cuda', 'cpu' (default: cuda when available).
        max_resolution: longer side of refined frames (default: 1920 GPU / 640 CPU).
        weights_dir: where the teacher's weights are (SAM prompts, text queries).
        kwargs: passed to :class:`ViewerServer`.
    Returns:
        the running :class:`ViewerServer`; call ``.stop()`` (or use it as a context manager).
    """
    require_viser()
    check_listen_address(host, port)  # before loading anything: a bad address fails at once
    device = resolve_device(device)
    session = ViewerSession.open(scene_dir, device=device, weights_dir=weights_dir)
    cams: list[Camera] = []
    try:
        data = session.scene.load_data()
        cams = [v.camera for v in data.train_views]
    except Exception as e:  # the dataset may be elsewhere now; the viewer still works
        if verbose:
            print(f"(training views not available: {e}; opening at a default viewpoint)")
    srv = ViewerServer(session, host=host, port=port, max_resolution=max_resolution, train_cameras=cams,
                       verbose=verbose, **kwargs)
    if verbose:
        where = "" if host in ("127.0.0.1", "localhost", "::1") else f" (listening on {host})"
        print(f"feature3dgs viewer: {srv.url}{where} - {session.num_gaussians} Gaussians on {device}; "
              "press Ctrl-C to stop", flush=True)
    return srv
