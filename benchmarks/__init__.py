"""netvlad-kit benchmarks: recall parity and latency across backends."""
