"""End to end: the web viewer in a real (headless) Chromium.

Starts the viewer on a free loopback port, opens it in Debian's Chromium driven by selenium and
Debian's chromedriver, waits for a rendered frame and checks the screenshot against the frame the
server rendered (the scene, not a blank or error page); then clicks on the object, shift-clicks,
ctrl-drags a box, presses a GUI button and orbits the camera with a drag, checking each time the
server's state (prompt at the clicked pixel, SAM mask, frame sizes) and what the browser shows. The server and the browser
are always shut down (fixtures with finally).

Skips (with the reason) when viser, selenium, chromium or chromedriver is missing; CI installs
them. Set FEATURE3DGS_VIEWER_SCREENSHOT=path.png to keep the screenshot with the mask overlay.
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_viewer import build_sam_scene

CHROMIUM = os.environ.get("FEATURE3DGS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FEATURE3DGS_CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1000, 700)
# Chromium stalls on refused connections without these (the test machine has no internet).
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--hide-scrollbars",
                  f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1"]


def _requirements_or_skip() -> None:
    for module, pkg in (("viser", "viser"), ("selenium", "selenium")):
        try:
            importlib.import_module(module)
        except ImportError:
            pytest.skip(f"{module} is not installed (pip install {pkg})")
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            pytest.skip(f"{path} not found (apt-get install {pkg})")


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    _requirements_or_skip()
    from feature3dgs.viewer.server import ViewerServer
    from feature3dgs.viewer.session import ViewerSession

    run = build_sam_scene(tmp_path_factory.getbasetemp() / "viewer_scene")
    session = ViewerSession.open(run)
    cams = [v.camera for v in session.scene.load_data().train_views]
    session.scene.teacher()  # build SAM before the first click
    srv = ViewerServer(session, host="127.0.0.1", port=0, max_resolution=320, moving_resolution=96,
                       train_cameras=cams, verbose=False)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser(viewer):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="f3d-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------------- helpers
def _screenshot(driver) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(np.int16)


def _canvas_and_panel(driver) -> tuple[dict, float]:
    """The three.js canvas rect (CSS px) and the left edge of the GUI panel (floating on the right)."""
    return driver.execute_script("""
        const c = document.querySelector('canvas').getBoundingClientRect();
        let panel = c.right;
        document.querySelectorAll('button').forEach(b => {
            const r = b.getBoundingClientRect();
            if (r.width > 0 && b.textContent.includes('Clear prompts')) panel = Math.min(panel, r.left - 24);
        });
        return [{left: c.left, top: c.top, width: c.width, height: c.height}, panel];""")


def _close_notifications(driver) -> None:
    driver.execute_script("""document.querySelectorAll('.mantine-Notification-closeButton')
                             .forEach(b => b.click());""")


def _wait(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _frame_on_canvas(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """The server's frame as the browser shows it: stretched over the canvas (bilinear)."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR)).astype(np.int16)


def _wait_new_full_frame(view, after: int, timeout: float = 30.0) -> None:
    _wait(lambda: view.full_frames > after, timeout, "a refined frame")
    time.sleep(0.6)  # the browser decodes and draws it on its next animation frame


def _click(driver, canvas_el, rect, x: float, y: float, key=None) -> None:
    """Click at canvas CSS pixel (x, y), optionally holding a modifier key."""
    from selenium.webdriver.common.action_chains import ActionChains

    dx, dy = int(round(x - rect["width"] / 2)), int(round(y - rect["height"] / 2))
    chain = ActionChains(driver).move_to_element_with_offset(canvas_el, dx, dy)
    if key is not None:
        chain = chain.key_down(key)
    chain = chain.click()
    if key is not None:
        chain = chain.key_up(key)
    chain.perform()


# ---------------------------------------------------------------------- the test
def test_viewer_in_headless_chromium(viewer, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from feature3dgs.viewer.camera_convert import same_pose

    t0 = time.monotonic()
    session = viewer.session
    browser.get(viewer.url)
    view = viewer.wait_for_frame(full_frames=1, timeout=60)
    time.sleep(0.8)
    _close_notifications(browser)  # "software WebGL" notice of the headless browser
    time.sleep(0.3)
    rect, panel_left = _canvas_and_panel(browser)
    W, H = int(round(rect["width"])), int(round(rect["height"]))
    assert W > 300 and H > 200, rect
    # the frame matches the browser's canvas (its aspect) and came from a still camera
    frame, cam = view.last_frame, view.last_camera
    assert view.last_full and abs(cam.width / cam.height - W / H) < 0.02
    assert max(cam.width, cam.height) == 320
    # the viewer opened at the first training view: the pose the browser reports back (viser's
    # camera convention, through the web client) converts to that training camera
    train0 = viewer.train_cameras[0]
    assert torch.allclose(cam.viewmat, train0.viewmat, atol=1e-2) and abs(cam.fov_y - train0.fov_y) < 1e-3

    # 1. the screenshot shows the rendered frame, not a blank or error page
    shot = _screenshot(browser)
    x0, y0 = int(rect["left"]), int(rect["top"])
    canvas = shot[y0:y0 + H, x0:x0 + W]
    want = _frame_on_canvas(frame, W, H)
    # compare where no GUI covers the canvas: left of the control panel, above the axes gizmo
    rx = slice(int(0.03 * W), int(min(panel_left - x0, 0.62 * W)))
    ry = slice(int(0.08 * H), int(0.82 * H))
    got_r, want_r = canvas[ry, rx].astype(float), want[ry, rx].astype(float)
    mae = np.abs(got_r - want_r).mean()
    corr = np.corrcoef(got_r.ravel(), want_r.ravel())[0, 1]
    assert got_r.std() > 15, "the canvas region is flat: a blank page?"
    assert np.abs(got_r - 255).mean() > 40 and np.abs(got_r - got_r.mean()).mean() > 8
    assert mae < 14 and corr > 0.9, f"screenshot differs from the rendered frame: MAE {mae:.1f}, corr {corr:.3f}"
    assert browser.title is not None and "error" not in browser.page_source[:2000].lower()

    # 2. click on the object: the prompt lands on the clicked pixel, SAM masks, the overlay appears
    alpha = session.render_mode_image(cam, "alpha")[0][0].numpy()
    ys, xs = np.mgrid[0:cam.height, 0:cam.width]
    ok = (alpha > 0.9) & (xs > 0.1 * cam.width) & (xs < (rx.stop / W - 0.05) * cam.width) \
        & (ys > 0.15 * cam.height) & (ys < 0.75 * cam.height)
    assert ok.any(), "no opaque object pixel in the view's free region"
    score = ok * (1.0 - np.hypot(xs / cam.width - 0.35, ys / cam.height - 0.5))
    py, px = np.unravel_index(np.argmax(score), score.shape)
    click_x, click_y = (px + 0.5) / cam.width * W, (py + 0.5) / cam.height * H
    canvas_el = browser.find_element(By.TAG_NAME, "canvas")
    before = view.full_frames
    _click(browser, canvas_el, rect, click_x, click_y)
    _wait(lambda: session.mask is not None and len(session.points) == 1, 40, "the SAM mask of the click")
    assert session.labels == [1]
    pc = session.prompt_camera
    (qx, qy), = session.points
    assert abs(qx / pc.width - click_x / W) < 0.01 and abs(qy / pc.height - click_y / H) < 0.01
    mask = session.mask
    assert mask.any(), "SAM gave an empty mask"
    _wait_new_full_frame(view, before)
    frame2 = view.last_frame
    from feature3dgs.viewer.overlay import MASK_COLOR, resize_nearest

    assert same_pose(view.last_camera, cam) and frame2.shape == frame.shape
    # server side: the new frame is the old one with the mask tinted (and the click marked)
    fh, fw = frame.shape[:2]
    mk = resize_nearest(mask, fh, fw)
    yy, xx = np.mgrid[0:fh, 0:fw]
    marker = np.hypot(xx + 0.5 - (px + 0.5), yy + 0.5 - (py + 0.5)) < 8
    diff = np.abs(frame2.astype(int) - frame).sum(2) > 0
    assert diff[mk & ~marker].mean() > 0.9 and not diff[~mk & ~marker].any()
    # browser side: the screenshot now shows that frame, with the mask colour where the mask is
    shot2 = _screenshot(browser)
    canvas2 = shot2[y0:y0 + H, x0:x0 + W]
    got2 = canvas2[ry, rx].astype(float)
    mae_new = np.abs(got2 - _frame_on_canvas(frame2, W, H)[ry, rx]).mean()
    mae_old = np.abs(got2 - want_r).mean()
    assert mae_new < 14 and mae_new + 5 < mae_old, f"overlay not shown: MAE to new {mae_new:.1f}, old {mae_old:.1f}"
    m = resize_nearest(mask, H, W)[ry, rx]
    shift = (canvas2[ry, rx][m].mean(0) - canvas[ry, rx][m].mean(0))
    toward = np.asarray(MASK_COLOR, float) - canvas[ry, rx][m].mean(0)
    assert m.sum() > 200 and float(shift @ toward) / float(toward @ toward) > 0.25, shift  # tinted toward MASK_COLOR
    # the positive marker (green) at the click
    cy_, cx_ = int(click_y), int(click_x)
    patch = canvas2[cy_ - 2:cy_ + 3, cx_ - 2:cx_ + 3].reshape(-1, 3).mean(0)
    assert patch[1] > 150 and patch[0] < 120 and patch[2] < 140, patch
    keep = os.environ.get("FEATURE3DGS_VIEWER_SCREENSHOT")
    from PIL import Image

    Image.fromarray(shot2.astype(np.uint8)).save(tmp_path / "viewer.png")
    if keep:
        Image.fromarray(shot2.astype(np.uint8)).save(keep)

    # 3. shift-click: a negative point on the same view
    before = view.full_frames
    nx, ny = click_x + 0.1 * W, click_y
    _click(browser, canvas_el, rect, nx, ny, key=Keys.SHIFT)
    _wait(lambda: session.labels == [1, 0], 40, "the negative point of the shift-click")
    _wait_new_full_frame(view, before)
    patch = _screenshot(browser)[y0 + int(ny) - 2:y0 + int(ny) + 3, x0 + int(nx) - 2:x0 + int(nx) + 3]
    patch = patch.reshape(-1, 3).mean(0)
    assert patch[0] > 150 and patch[1] < 120, patch  # the red marker

    # 4. ctrl-drag: a box prompt (a plain drag would orbit the camera)
    bx0, by0 = 0.15 * W, 0.25 * H
    (ActionChains(browser).move_to_element_with_offset(canvas_el, int(bx0 - W / 2), int(by0 - H / 2))
     .key_down(Keys.CONTROL).click_and_hold().move_by_offset(int(0.2 * W), int(0.3 * H))
     .release().key_up(Keys.CONTROL).perform())
    _wait(lambda: session.box_prompt is not None, 40, "the box prompt of the ctrl-drag")
    bx = session.box_prompt
    assert abs(bx[0] / pc.width - 0.15) < 0.02 and abs(bx[3] / pc.height - 0.55) < 0.02
    assert session.labels == [1, 0]  # the box joins the points of the same view

    # 5. a GUI button: "Clear prompts" removes the overlay
    before = view.full_frames
    button = next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Clear prompts" in b.text)
    button.click()
    _wait(lambda: session.mask is None and not session.points, 20, "the prompts to clear")
    _wait_new_full_frame(view, before)
    shot3 = _screenshot(browser)[y0:y0 + H, x0:x0 + W]
    assert np.abs(shot3 - canvas)[ry, rx].mean() < 4, "the overlay did not go away"

    # 6. a plain drag orbits the camera: low-resolution frames while it moves, a refined one after
    moving_before, full_before = view.moving_frames, view.full_frames
    chain = ActionChains(browser).move_to_element_with_offset(canvas_el, -int(0.2 * W), 0).click_and_hold()
    for _ in range(8):
        chain = chain.move_by_offset(int(0.03 * W), 0).pause(0.06)
    chain.release().perform()
    _wait(lambda: view.moving_frames > moving_before, 20, "frames while the camera moves")
    _wait(lambda: view.last_full and view.full_frames > full_before and not same_pose(view.last_camera, cam),
          30, "a refined frame at the new viewpoint")
    moving_cam = view.last_moving_camera
    assert max(moving_cam.width, moving_cam.height) == 96 and max(view.last_camera.width, view.last_camera.height) == 320
    assert session.points == [] and session.mask is None  # a drag is not a click

    # 7. jump to another training view (the "Training view" dropdown's action)
    target = viewer.train_cameras[5]
    viewer.move_client_to(view.client, target)
    _wait(lambda: view.last_full and torch.allclose(view.last_camera.viewmat, target.viewmat, atol=1e-2),
          30, "a refined frame at training view 5")
    assert time.monotonic() - t0 < 120
