"""Pittsburgh 30k/250k and Tokyo 24/7 from the official MATLAB ``dbStruct`` files (training/README.md, "The protocol").

The ``.mat`` holds one struct ``dbStruct`` with fields ``whichSet``, ``dbImage``, ``utmDb`` (2 x N),
``qImage``, ``utmQ`` (2 x M), ``numImages``, ``numQueries``, ``posDistThr`` (25), ``posDistSqThr`` (625)
and ``nonTrivPosDistSqThr`` (100); Tokyo 24/7 adds ``dbTimeStamp`` / ``qTimeStamp``. scipy is imported
lazily (it is a training extra, not a runtime dependency).

Image layout (as in the public releases and Nanne's port): database images under the dataset root
(the parent of ``datasets/`` holding the ``.mat``), queries under ``ROOT/queries_real/``.
Tokyo 24/7's database has 12 cut-outs per panorama, consecutive in ``dbImage``: evaluation retrieves
12 x N and keeps the first cut-out of each panorama (:func:`keep_first_per_panorama`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.datasets.place import PlaceDataset
from runtime.errors import DatasetError
from runtime.optional import require

logger = logging.getLogger(__name__)

DBSTRUCT_FIELDS = (
    "whichSet",
    "dbImage",
    "utmDb",
    "qImage",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)
CUTOUTS_PER_PANORAMA = 12


def _strings(value) -> list[str]:
    """A MATLAB cell array of char (loaded as an object array) -> list of str."""
    flat = np.asarray(value, dtype=object).reshape(-1)
    out = []
    for item in flat:
        while isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size else ""
        out.append(str(item))
    return out


def _scalar(value) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def _utm(value, mat_path: Path, field_name: str, count: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 2 and arr.shape == (2, count):
        return arr.T.copy()  # MATLAB stores 2 x N; we use (N, 2)
    if arr.ndim == 2 and arr.shape == (count, 2):
        return arr.copy()
    raise DatasetError(
        f"'{mat_path}': dbStruct.{field_name} has shape {arr.shape}, expected (2, {count}) UTM easting/northing"
    )


def read_dbstruct(mat_path: str | Path) -> dict:
    """Read the ``dbStruct`` of an official Pittsburgh / Tokyo 24/7 ``.mat`` file into a dict.

    Raises :class:`DatasetError` naming the file and what is missing when it has another structure.
    """
    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise DatasetError(f"'{mat_path}' does not exist; give the path of an official dbStruct .mat file")
    sio = require("scipy.io", "reading Pittsburgh / Tokyo 24/7 .mat files")
    try:
        mat = sio.loadmat(str(mat_path))
    except Exception as exc:
        raise DatasetError(f"'{mat_path}' is not a readable MATLAB .mat file ({exc})") from exc
    if "dbStruct" not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise DatasetError(
            f"'{mat_path}' has no 'dbStruct' variable (found: {found}); expected an official Pittsburgh "
            "30k/250k or Tokyo 24/7 dbStruct file (e.g. pitts30k_test.mat)"
        )
    struct = mat["dbStruct"]
    names = struct.dtype.names or ()
    missing = [f for f in DBSTRUCT_FIELDS if f not in names]
    if missing:
        raise DatasetError(
            f"'{mat_path}': dbStruct lacks the fields {', '.join(missing)} (found: {', '.join(names) or 'none'}); "
            f"expected {', '.join(DBSTRUCT_FIELDS)}"
        )
    record = struct.reshape(-1)[0]
    db_images = _strings(record["dbImage"])
    q_images = _strings(record["qImage"])
    out = {
        "whichSet": _strings(record["whichSet"])[0] if np.asarray(record["whichSet"]).size else "",
        "dbImage": db_images,
        "qImage": q_images,
        "utmDb": _utm(record["utmDb"], mat_path, "utmDb", len(db_images)),
        "utmQ": _utm(record["utmQ"], mat_path, "utmQ", len(q_images)),
        "numImages": int(_scalar(record["numImages"])),
        "numQueries": int(_scalar(record["numQueries"])),
        "posDistThr": _scalar(record["posDistThr"]),
        "posDistSqThr": _scalar(record["posDistSqThr"]),
        "nonTrivPosDistSqThr": _scalar(record["nonTrivPosDistSqThr"]),
    }
    for opt in ("dbTimeStamp", "qTimeStamp"):
        if opt in names and np.asarray(record[opt]).size:
            out[opt] = np.asarray(record[opt], dtype=np.float64).reshape(-1)
    if out["numImages"] != len(db_images) or out["numQueries"] != len(q_images):
        raise DatasetError(
            f"'{mat_path}': numImages/numQueries = {out['numImages']}/{out['numQueries']} but dbImage/qImage "
            f"list {len(db_images)}/{len(q_images)} images; the file is inconsistent"
        )
    if not db_images or not q_images:
        raise DatasetError(f"'{mat_path}': the {'database' if not db_images else 'query'} split is empty")
    return out


def _default_root(mat_path: Path) -> Path:
    return mat_path.parent.parent if mat_path.parent.name == "datasets" else mat_path.parent


def load_dbstruct(
    mat_path: str | Path,
    images_root: str | Path | None = None,
    queries_subdir: str = "queries_real",
    source: str | None = None,
) -> PlaceDataset:
    """Load a Pittsburgh 30k/250k or Tokyo 24/7 ``.mat`` as a :class:`PlaceDataset`.

    ``images_root``: the dataset root (default: the parent of the ``datasets/`` folder holding the file,
    else the file's folder). Query paths are ``queries_subdir/qImage``. ``source`` defaults to
    "tokyo247" for file names containing "tokyo", else "pittsburgh".
    """
    mat_path = Path(mat_path)
    s = read_dbstruct(mat_path)
    root = Path(images_root) if images_root is not None else _default_root(mat_path)
    if source is None:
        source = "tokyo247" if "tokyo" in mat_path.name.lower() else "pittsburgh"
    q_prefix = f"{queries_subdir.strip('/')}/" if queries_subdir else ""
    info = {
        "source": source,
        "mat": str(mat_path),
        "which_set": s["whichSet"],
        "pos_dist_thr": s["posDistThr"],
        "pos_dist_sq_thr": s["posDistSqThr"],
        "non_triv_pos_dist_sq_thr": s["nonTrivPosDistSqThr"],
    }
    if source == "tokyo247":
        info["cutouts_per_panorama"] = CUTOUTS_PER_PANORAMA
    dataset = PlaceDataset(
        name=mat_path.stem,
        root=root,
        db_images=tuple(s["dbImage"]),
        db_utm=s["utmDb"],
        q_images=tuple(q_prefix + q for q in s["qImage"]),
        q_utm=s["utmQ"],
        db_time=s.get("dbTimeStamp"),
        q_time=s.get("qTimeStamp"),
        info=info,
    )
    logger.info(
        "loaded %s (%s, set %s): %d database, %d query images",
        dataset.name,
        source,
        s["whichSet"],
        dataset.num_db,
        dataset.num_queries,
    )
    return dataset


def load_pittsburgh(
    mat_path: str | Path, images_root: str | Path | None = None, queries_subdir: str = "queries_real"
) -> PlaceDataset:
    """Pittsburgh 30k / 250k (e.g. ``datasets/pitts30k_test.mat``); see :func:`load_dbstruct`."""
    return load_dbstruct(mat_path, images_root, queries_subdir, source="pittsburgh")


def load_tokyo247(
    mat_path: str | Path, images_root: str | Path | None = None, queries_subdir: str = "queries_real"
) -> PlaceDataset:
    """Tokyo 24/7 (``datasets/tokyo247.mat``); rank 12 x N and apply :func:`keep_first_per_panorama`.

    ``queries_subdir``: where the query images lie under ``images_root`` (releases differ: pass "" when
    ``qImage`` already holds the path relative to the root).
    """
    dataset = load_dbstruct(mat_path, images_root, queries_subdir, source="tokyo247")
    if dataset.num_db % CUTOUTS_PER_PANORAMA:
        raise DatasetError(
            f"'{mat_path}': Tokyo 24/7 lists {CUTOUTS_PER_PANORAMA} cut-outs per panorama, but the database has "
            f"{dataset.num_db} images (not a multiple of {CUTOUTS_PER_PANORAMA})"
        )
    return dataset


def panorama_ids(num_db: int, cutouts: int = CUTOUTS_PER_PANORAMA) -> np.ndarray:
    """Panorama id of each database cut-out: consecutive blocks of ``cutouts`` images, ``(N,)`` int64."""
    return np.arange(num_db, dtype=np.int64) // cutouts


def keep_first_per_panorama(
    ranked: np.ndarray, n: int, cutouts: int = CUTOUTS_PER_PANORAMA, panoramas: np.ndarray | None = None
) -> np.ndarray:
    """Non-maximum suppression over panoramas (Torii et al. 2015; Relja's ``nnSearchPostprocess``).

    ``ranked``: ``(M, k)`` database indices per query, best first, with ``k`` about ``cutouts * n``.
    Keeps, per query, the first (best-ranked) cut-out of each panorama, up to ``n`` of them.
    ``panoramas``: panorama id per database index (default: index // ``cutouts``).
    Returns ``(M, n)`` int64, padded with -1 where fewer than ``n`` distinct panoramas were ranked.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be (num_queries, k), got shape {ranked.shape}")
    out = np.full((ranked.shape[0], n), -1, dtype=np.int64)
    pano = (ranked // cutouts) if panoramas is None else np.asarray(panoramas, dtype=np.int64)[ranked]
    for qi in range(ranked.shape[0]):
        _, first = np.unique(pano[qi], return_index=True)  # first occurrence of each panorama
        keep = np.sort(first)[:n]
        out[qi, : keep.size] = ranked[qi, keep]
    return out
