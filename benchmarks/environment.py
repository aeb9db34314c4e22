"""What a benchmark ran on: machine name, CPU, memory, and library versions (no heavy import needed)."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from typing import Any

# distributions whose versions every report records (missing ones are reported as None)
LIBRARIES = (
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "faiss-cpu",
    "faiss-gpu",
    "faiss-gpu-cu12",
    "opencv-python-headless",
    "tensorrt",
    "cuda-python",
    "netvlad-kit",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict[str, Any]:
    """Host name, CPU model, usable cores, memory, OS and Python: the context of every absolute time."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": usable,
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {k: v for k, v in library_versions().items() if v is not None},
    }


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown line naming the machine and the main library versions."""
    libs = ", ".join(f"{k} {v}" for k, v in info.get("libraries", {}).items() if k != "netvlad-kit")
    return (
        f"Machine: `{info['host']}`, {info['cpu']}, {info['cores']} cores, {info.get('memory_gib')} GiB; "
        f"Python {info['python']}; {libs}."
    )


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): how busy the cores were."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
