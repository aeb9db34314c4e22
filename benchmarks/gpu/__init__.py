"""The prepared GPU run (``benchmarks/gpu/run.sh``): parity, latency and map search on a CUDA device."""
