"""Semantic IDs: hierarchical k-means codes of item embeddings, for generative recommendation policies.

Level 1 clusters all items into `branching` groups; each group is clustered again, `levels` times; a
last token tells apart the items that still share a leaf. A generative policy decodes an item as its
code (one token per level); a code that maps to no item is invalid (the format penalty applies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 25) -> np.ndarray:
    """Labels [n] of Lloyd's k-means with k-means++ seeding (k capped at n)."""
    n = len(points)
    k = min(k, n)
    centers = [points[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(1) for c in centers], axis=0)
        total = d2.sum()
        centers.append(points[rng.choice(n, p=d2 / total)] if total > 0 else points[rng.integers(n)])
    centers = np.array(centers)
    labels = np.zeros(n, int)
    for _ in range(iters):
        labels = ((points[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            members = points[labels == j]
            if len(members):
                centers[j] = members.mean(0)
    return labels


@dataclass
class SemanticIds:
    codes: np.ndarray
    """[I, levels + 1] int: each item's code; the last token disambiguates items sharing a leaf."""
    vocab: int
    """Tokens per position (max of branching and the largest leaf)."""

    def __post_init__(self):
        self._lookup = {tuple(code): item for item, code in enumerate(self.codes.tolist())}

    def item(self, code) -> int | None:
        """The item a code names, or None for an invalid code."""
        return self._lookup.get(tuple(int(c) for c in code))

    @property
    def length(self) -> int:
        return self.codes.shape[1]


def build_semantic_ids(embeddings: np.ndarray, levels: int = 2, branching: int = 16, seed: int = 0) -> SemanticIds:
    rng = np.random.default_rng(seed)
    n = len(embeddings)
    codes = np.zeros((n, levels + 1), int)
    groups = [np.arange(n)]
    for level in range(levels):
        next_groups = []
        for members in groups:
            labels = kmeans(embeddings[members], branching, rng) if len(members) > 1 else np.zeros(len(members), int)
            codes[members, level] = labels
            next_groups += [members[labels == j] for j in np.unique(labels)]
        groups = next_groups
    for members in groups:
        codes[members, levels] = np.arange(len(members))
    return SemanticIds(codes=codes, vocab=int(max(branching, codes[:, levels].max() + 1)))
