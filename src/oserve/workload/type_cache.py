"""On-disk cache of fitted request types, so every command on the same trace skips the k-means.

An entry is keyed by a hash of everything the fit depends on: the request lengths themselves (so a
clipped, windowed or rescaled-length trace is a different entry; arrival times do not enter the fit), k,
the seed, the sample size, the source of ``request_types.py`` (an edit to the algorithm invalidates every
entry) and the numpy version. An entry that is missing, unreadable or does not match its key is ignored
and refitted, so a stale or corrupt cache can cost time but never change a result. Entries are written
atomically (temporary file, then rename), and a cache that cannot be written is skipped silently.

Location: ``$OSERVE_CACHE_DIR`` if set (``off`` disables the cache), else ``$XDG_CACHE_HOME/oserve``, else
``~/.cache/oserve``; entries live in its ``request_types/`` folder and may be deleted at any time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

_FORMAT = 1
_ALGORITHM_SOURCE = Path(__file__).with_name("request_types.py")


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is switched off."""
    env = os.environ.get("OSERVE_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "oserve"


def cache_key(input_tokens: np.ndarray, output_tokens: np.ndarray, k: int, seed: int,
              max_points: int) -> str | None:
    if cache_dir() is None:
        return None
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps({"format": _FORMAT, "k": k, "seed": seed, "max_points": max_points,
                         "n": len(input_tokens), "numpy": np.__version__}).encode())
    h.update(_ALGORITHM_SOURCE.read_bytes())
    h.update(np.ascontiguousarray(input_tokens, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(output_tokens, dtype="<i8").tobytes())
    return h.hexdigest()


def _entry(key: str) -> Path | None:
    root = cache_dir()
    return None if root is None else root / "request_types" / f"{key}.json"


Centroids = tuple[tuple[float, float], ...]
Entry = tuple[Centroids, tuple[float, ...], tuple[int, ...]]


def load(key: str, k: int) -> Entry | None:
    """(centroids, log_edges, bin_type) stored under ``key``, or None."""
    path = _entry(key)
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text())
        if doc["key"] != key or doc["format"] != _FORMAT or len(doc["centroids_log"]) != k:
            return None
        centroids = tuple((float(a), float(b)) for a, b in doc["centroids_log"])
        edges = tuple(float(e) for e in doc["log_edges"])
        bins = tuple(int(b) for b in doc["bin_type"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(bins) != len(edges) + 1 or any(not 0 <= b < k for b in bins):
        return None
    return centroids, edges, bins


def store(key: str, k: int, centroids: Centroids, log_edges: tuple[float, ...],
          bin_type: tuple[int, ...]) -> None:
    path = _entry(key)
    if path is None:
        return
    doc = {"key": key, "format": _FORMAT, "k": k, "centroids_log": [list(c) for c in centroids],
           "log_edges": list(log_edges), "bin_type": list(bin_type)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as fh:
            json.dump(doc, fh)  # floats are written as repr: they read back bit for bit
        os.replace(fh.name, path)
    except OSError:
        return  # a read-only or full cache only costs the refit next time
