"""The interactive web viewer (``feature3dgs view``), built on viser.

* :mod:`~feature3dgs.viewer.camera_convert`: viser camera <-> :class:`feature3dgs.model.camera.Camera`.
* :mod:`~feature3dgs.viewer.session`: :class:`ViewerSession`, the browser-free state and logic
  (render modes, SAM prompts, 3D selection, edits, saving).
* :mod:`~feature3dgs.viewer.overlay`: colour maps, mask and prompt drawing.
* :mod:`~feature3dgs.viewer.curves`: training curves from a run's log.csv.
* :mod:`~feature3dgs.viewer.server`: the viser wiring (GUI, camera callbacks, progressive
  rendering); imports viser, which is optional (``pip install viser``).
"""

from feature3dgs.viewer.camera_convert import camera_from_viser, viser_pose_from_camera
from feature3dgs.viewer.server import ViewerServer, serve
from feature3dgs.viewer.session import MODES, ViewerSession

__all__ = ["ViewerSession", "ViewerServer", "MODES", "camera_from_viser", "viser_pose_from_camera", "serve"]
