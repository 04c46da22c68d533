"""A trained scene's parts: the Gaussians (:class:`GaussianModel`, whose ``render`` is the one
render of a trained model), cameras, the feature decoder and the Gaussian PLY format."""

from feature3dgs.model.camera import Camera
from feature3dgs.model.decoder import FeatureDecoder
from feature3dgs.model.gaussians import GaussianModel

__all__ = ["Camera", "FeatureDecoder", "GaussianModel"]
