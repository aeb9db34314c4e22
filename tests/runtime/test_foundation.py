"""The foundation: lazy optional imports, atomic writes, and lean imports of runtime and export."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.errors import MissingDependencyError, NetVLADKitError
from runtime.files import atomic_directory, atomic_path, atomic_write_text
from runtime.optional import install_hint, require

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_require_names_the_extra():
    with pytest.raises(MissingDependencyError) as info:
        require("tensorrt_that_does_not_exist", purpose="building engines")
    assert "needed for building engines" in str(info.value)
    assert isinstance(info.value, ImportError) and isinstance(info.value, NetVLADKitError)
    assert install_hint("tensorrt") == "pip install 'netvlad-kit[tensorrt]'"
    assert install_hint("torch.nn") == "pip install 'netvlad-kit[train]'"
    assert install_hint("onnx") == "pip install 'netvlad-kit[export]'"
    assert require("json").__name__ == "json"


def test_atomic_file_write_leaves_old_content_on_failure(tmp_path):
    dest = tmp_path / "ckpt.pt"
    atomic_write_text(dest, "v1")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert dest.read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    mask = os.umask(0o022)
    try:
        atomic_write_text(dest, "v2")
    finally:
        os.umask(mask)
    assert dest.stat().st_mode & 0o777 == 0o644


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_directory(tmp_path):
    dest = tmp_path / "map"
    with atomic_directory(dest) as tmp:
        (tmp / "index.faiss").write_text("a")
    assert (dest / "index.faiss").read_text() == "a"
    assert dest.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(dest):
        pass
    with pytest.raises(RuntimeError), atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "index.faiss").write_text("b")
        raise RuntimeError("interrupted")
    assert (dest / "index.faiss").read_text() == "a"
    with atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "index.faiss").write_text("c")
    assert (dest / "index.faiss").read_text() == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


BLOCKED = ("torch", "torchvision", "tensorrt", "cuda", "faiss", "onnxruntime", "onnx", "onnxscript", "scipy")

IMPORT_ALL = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    blocked = set(sys.argv[1].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    imported = []
    for package in sys.argv[2].split(","):
        pkg = importlib.import_module(package)
        imported.append(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
    assert not leaked, leaked
    print(len(imported), "modules imported")
    """
)


def test_runtime_and_export_import_with_heavy_dependencies_blocked():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, ",".join(BLOCKED), "runtime,export"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "modules imported" in result.stdout
