"""One entry point from a dataset spec (a path or a name) to a :class:`PlaceDataset`."""

from __future__ import annotations

from pathlib import Path

from runtime.datasets.aligned import load_aligned, load_nordland
from runtime.datasets.generic import load_generic
from runtime.datasets.matlab import load_dbstruct
from runtime.datasets.place import PlaceDataset
from runtime.errors import DatasetError
from runtime.protocol import SPLIT_FILES

SPEC_HELP = (
    "a folder with database.csv and queries.csv, 'nordland' (or 'nordland:DIR'), "
    "'aligned:DB_DIR,Q_DIR', or an official Pittsburgh/Tokyo 24/7 .mat file"
)


def is_dataset_spec(spec: str | Path) -> bool:
    """True when ``spec`` names a dataset :func:`open_dataset` opens (rather than, say, a plain image folder).

    A name (``nordland``, ``nordland:DIR``, ``aligned:DB,Q``), a ``.mat`` file, or a folder holding
    ``database.csv``/``queries.csv`` or ``summer/`` and ``winter/``. Says nothing about whether it opens.
    """
    text = str(spec)
    if text == "nordland" or text.startswith(("nordland:", "aligned:")):
        return True
    path = Path(spec)
    if path.suffix.lower() == ".mat":
        return True
    if not path.is_dir():
        return False
    return any((path / name).is_file() for name in SPLIT_FILES.values()) or (
        (path / "summer").is_dir() and (path / "winter").is_dir()
    )


def open_dataset(spec: str | Path) -> PlaceDataset:
    """Open a dataset from ``spec``.

    - a folder holding ``database.csv`` -> :func:`load_generic` (the synthetic world writes this format)
    - ``"nordland"`` / ``"nordland:DIR"`` -> :func:`load_nordland` (summer database, winter queries)
    - ``"aligned:DB_DIR,Q_DIR"`` -> :func:`load_aligned` (same file name = same place, +-1 frame)
    - ``*.mat`` -> Pittsburgh 30k/250k or Tokyo 24/7 (file name containing "tokyo") dbStruct
    - a folder holding ``summer/`` and ``winter/`` -> Nordland
    """
    text = str(spec)
    if text == "nordland":
        return load_nordland()
    if text.startswith("nordland:"):
        return load_nordland(text.split(":", 1)[1])
    if text.startswith("aligned:"):
        parts = text.split(":", 1)[1].split(",")
        if len(parts) != 2 or not all(parts):
            raise DatasetError(f"dataset spec {text!r}: expected 'aligned:DB_DIR,Q_DIR'")
        return load_aligned(parts[0], parts[1])
    path = Path(spec)
    if path.suffix.lower() == ".mat":
        return load_dbstruct(path)
    if path.is_dir():
        if (path / SPLIT_FILES["database"]).is_file() or (path / SPLIT_FILES["queries"]).is_file():
            return load_generic(path)
        if (path / "summer").is_dir() and (path / "winter").is_dir():
            return load_nordland(path)
        raise DatasetError(f"'{path}' holds no database.csv; expected {SPEC_HELP}")
    raise DatasetError(f"dataset {text!r} does not exist; expected {SPEC_HELP}")
