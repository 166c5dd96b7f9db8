"""pyturn's benchmarks: loopback relay harness (benchmarks.relay) and the core-only micro benchmark."""
