"""Text queries on rendered features of a language teacher (CLIP, LSeg): per-pixel relevancy,
open-vocabulary semantic segmentation, and LERF's relevancy score against canonical phrases.

All functions take channels-first maps ``(D, H, W)``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LERF_NEGATIVES", "text_relevancy", "semantic_segmentation", "relevancy_map"]

#: LERF's canonical negative phrases of the relevancy score
LERF_NEGATIVES = ("object", "things", "stuff", "texture")


def _check_map(features: Tensor, what: str = "features") -> Tensor:
    if features.dim() != 3:
        raise ValueError(f"{what} must be (D, H, W), got {tuple(features.shape)}")
    return features


def text_relevancy(features: Tensor, text_embeddings: Tensor) -> Tensor:
    """(n, H, W) cosine similarity of each pixel's feature with each of n text embeddings.

    Features are L2-normalised per pixel and the embeddings per row (zero vectors give 0).
    """
    _check_map(features)
    text = torch.as_tensor(text_embeddings).to(features)
    if text.dim() == 1:
        text = text[None]
    if text.dim() != 2 or text.shape[1] != features.shape[0]:
        raise ValueError(f"text_embeddings must be (n, {features.shape[0]}), got {tuple(text.shape)}")
    f = F.normalize(features, dim=0)
    t = F.normalize(text, dim=1)
    return torch.einsum("dhw,nd->nhw", f, t)


def semantic_segmentation(features: Tensor, text_embeddings: Tensor) -> Tensor:
    """(H, W) int64: index of the most similar text embedding at each pixel."""
    return text_relevancy(features, text_embeddings).argmax(0)


def relevancy_map(features: Tensor, text_emb_query: Tensor, negatives: Optional[Tensor] = None,
                  temperature: float = 0.1) -> Tensor:
    """(H, W) relevancy of each pixel to one query, in [0, 1].

    With ``negatives`` (m, D) (e.g. the embeddings of the LERF canonical phrases "object",
    "things", "stuff", "texture"): LERF's score, the minimum over negatives j of the pairwise
    softmax ``exp(s_q / T) / (exp(s_q / T) + exp(s_j / T))`` with cosine similarities s and
    temperature T. Without negatives: the plain cosine similarity mapped to [0, 1] as
    ``(s_q + 1) / 2``.
    """
    q = torch.as_tensor(text_emb_query).to(features).reshape(1, -1)
    s_q = text_relevancy(features, q)[0]
    if negatives is None:
        return ((s_q + 1) * 0.5).clamp(0, 1)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    neg = torch.as_tensor(negatives).to(features)
    if neg.dim() == 1:
        neg = neg[None]
    if neg.shape[0] == 0:
        return ((s_q + 1) * 0.5).clamp(0, 1)
    s_n = text_relevancy(features, neg)  # (m, H, W)
    # softmax over the pair (q, j) for q's entry = sigmoid((s_q - s_j) / T)
    pair = torch.sigmoid((s_q[None] - s_n) / temperature)
    return pair.min(0).values
