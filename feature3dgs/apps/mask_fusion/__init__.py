"""Multi-view consistent object masks on the Gaussians (SANeRF-HQ)."""

from feature3dgs.apps.mask_fusion.votes import *  # noqa: F401,F403  (split into modules below)
