"""Benchmarks (scripts, not tests): `flexmarl bench throughput` writes benchmarks/results/throughput.json."""
