"""Measuring speed and memory, and the GPU machine's tooling: inference timings of ``vla-lab bench``
(:mod:`.inference`), the one-call GPU check behind ``benchmarks/gpu_check.sh`` (:mod:`.gpu_check`) and the wheels
it carries to a machine without network (:mod:`.gpu_wheels`). Results are JSON records under ``benchmarks/``."""
