"""Throughput of the manifest builder on a synthetic LLaVA-style fine-tuning file.

    .venv/bin/python -m benchmarks.manifest_build --records 50000 --workers 2 --out /tmp/alignkd-bench

Generates `records` v1 conversations (1-4 rounds, questions 4-20 words, answers 4-80 words, 10%
text-only) over 200 small PNGs, trains a 4000-piece tokenizer on a sample, then times
`build_manifest` alone and prints records/s. Pass `--tokenizer DIR` to use an existing tokenizer.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import yaml

WORDS = ("the a red blue green yellow square circle triangle star small large left right top bottom "
         "middle how many what colour where is are there of and on in image picture shows two three "
         "one four five near next to above below which shape object background white black count").split()


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def write_synthetic(out: Path, n: int, n_images: int = 200, seed: int = 0) -> Path:
    """A LLaVA JSON of `n` records, written record by record (the generator holds none of it)."""
    from PIL import Image

    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.new("RGB", (64, 64), (i % 256, (7 * i) % 256, (13 * i) % 256)).save(out / "images" / f"{i}.png")
    path = out / "synthetic.json"
    with open(path, "w") as f:
        f.write("[\n")
        for i in range(n):
            image = None if rng.random() < 0.1 else f"{rng.randrange(n_images)}.png"
            conv = []
            for r in range(rng.randint(1, 4)):
                q = _sentence(rng, 4, 20)
                conv += [{"from": "human", "value": ("<image>\n" + q) if image and r == 0 else q},
                         {"from": "gpt", "value": _sentence(rng, 4, 80)}]
            rec = {"id": f"s{i}", **({"image": image} if image else {}), "conversations": conv}
            f.write(("" if i == 0 else ",\n") + json.dumps(rec))
        f.write("\n]\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--image-check", default="load", choices=("load", "verify"))
    ap.add_argument("--tokenizer", default="")
    ap.add_argument("--out", type=Path, default=Path("/tmp/alignkd-bench"))
    args = ap.parse_args()

    from pipeline.data.manifest import build_manifest
    from pipeline.workflow import load_workflow
    from toy_world.tokenizer import train_tokenizer

    data = write_synthetic(args.out, args.records)
    tok = args.tokenizer
    if not tok:
        rng = random.Random(1)
        tok = str(args.out / "tokenizer")
        train_tokenizer([_sentence(rng, 4, 80) for _ in range(5000)] + ["USER: ASSISTANT:"], 4000, tok)
    wf_path = args.out / "bench.yaml"
    wf_path.write_text(yaml.safe_dump({"name": "bench", "data": {
        "datasets": [{"name": "synthetic", "json": str(data), "image_root": str(args.out / "images"), "template": "v1"}],
        "tokenizer": tok, "manifest": str(args.out / "manifest.parquet"), "rejects": str(args.out / "rejects.jsonl"),
        "num_workers": args.workers, "batch_size": args.batch_size, "image_check": args.image_check}}))
    wf = load_workflow(wf_path)
    import transformers  # noqa: F401  (its import, ~3-30 s with torch, is not the builder's speed)

    t0, c0 = time.perf_counter(), _cpu()
    report = build_manifest(wf, command="benchmarks.manifest_build")
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    size = data.stat().st_size / 1e6
    print(report.markdown())
    # CPU time too: on a shared machine the wall-clock rate mostly measures the neighbours
    print(f"{args.records} records ({size:.0f} MB JSON) in {dt:.1f} s: {args.records / dt:.0f} records/s wall; "
          f"{cpu:.1f} CPU-s in all processes = {args.records / cpu:.0f} records per CPU-second "
          f"({args.workers} workers, batch {args.batch_size}, image_check {args.image_check})")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the pool workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
