"""Leaf helpers every layer may use: atomic file writes and PNGs (:mod:`.io`), device choice,
image and segmentation metrics, and feature/mask pictures (:mod:`.visualize`)."""
