"""Benchmarks of the two-phase pipeline: what the cache costs and saves, measured side by side.

    python -m benchmarks.run [--quick] [--out results/bench]      → bench.md + bench.json
    python -m benchmarks.gpu_check [--out results/bench_gpu]      → the training-cost table on CUDA

Sections (one module each): `train_cost` (sft / cached / online step time and memory of the same
student on the same batches), `data_path` (the cached loader vs what the student consumes),
`dump_cost` (teacher dump vs bare teacher forwards, 1 vs 2 Ray workers), `storage` (bytes per
sample per target, projected subset sizes), `fidelity` (sparse-logit and stored-attention error).
Every number is measured with the project's real components (models, losses, cache writer and
reader, loader, dump); on a shared machine only ratios measured in one run are meaningful.
"""
