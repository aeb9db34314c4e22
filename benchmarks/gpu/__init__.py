"""The prepared GPU run (``benchmarks/gpu/run.sh`` -> :mod:`benchmarks.gpu.h100`): parity with the CPU and
latency of every inference path, the Localizer end to end, map search and training on a CUDA device.

One module per part: :mod:`~benchmarks.gpu.probe` (what the machine has), :mod:`~benchmarks.gpu.inference`,
:mod:`~benchmarks.gpu.localize`, :mod:`~benchmarks.gpu.search`, :mod:`~benchmarks.gpu.train`, and
:mod:`~benchmarks.gpu.common` (errors, latency, parity).
"""
