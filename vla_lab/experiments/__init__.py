"""Experiments built on everything below: training, ablations, benchmarks, the demo, the design note's claims."""
