"""`python -m benchmarks.run [--quick] [--out results/bench]` → bench.md + bench.json.

    make bench                                        (= .venv/bin/python -m benchmarks.run --out results/bench)
    .venv/bin/python -m benchmarks.run --quick --out /tmp/bench      (tiny sizes, few steps: a structure check)
    .venv/bin/python -m benchmarks.run --sections fidelity storage    (a subset of the sections)

The toy world, manifest and dumped stores live under --work (default runs/bench; an intact world is
reused). Sections run in dependency order: dump_cost writes the store data_path and storage read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SECTIONS = ("train_cost", "dump_cost", "data_path", "storage", "fidelity")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few steps (for tests; numbers not meaningful)")
    ap.add_argument("--out", default="results/bench", help="directory for bench.md and bench.json")
    ap.add_argument("--work", default="runs/bench", help="world, manifest and stores (reused between runs)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine two OpenMP threads spin at "
                         "barriers whenever a neighbour preempts one, which made steps 6-10x slower here)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)

    from benchmarks import report
    from benchmarks.common import Flags, clean, env_info, loadavg

    t0, flags, log = time.perf_counter(), Flags(), lambda m: print(m, file=sys.stderr, flush=True)
    out, work = Path(a.out), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rep: dict = {"meta": {"command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
                          "quick": a.quick, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "env": env_info("cpu"), "sections": a.sections, "section_wall_s": {}}}

    def timed(name: str, fn):
        t = time.perf_counter()
        res = fn()
        rep["meta"]["section_wall_s"][name] = round(time.perf_counter() - t, 1)
        return res

    if "train_cost" in a.sections:
        from benchmarks import train_cost

        rep["train_cost"] = timed("train_cost", lambda: train_cost.run(a.quick, flags, work, log))
    store = None
    if {"dump_cost", "data_path", "storage"} & set(a.sections):
        from benchmarks import dump_cost, world

        wf = timed("world", lambda: world.build(world.bench_workflow(work, a.quick), log))
        rep["dump_cost"], store = timed("dump_cost", lambda: dump_cost.run(wf, a.quick, flags, log))
        if "data_path" in a.sections:
            from benchmarks import data_path

            rep["data_path"] = timed("data_path", lambda: data_path.run(wf, store, a.quick, flags, log))
    if "storage" in a.sections:
        from benchmarks import storage

        rep["storage"] = timed("storage", lambda: storage.run(store, a.quick, flags, log))
    if "fidelity" in a.sections:
        from benchmarks import fidelity

        rep["fidelity"] = timed("fidelity", lambda: fidelity.run(a.quick, flags, log))
    rep["flags"] = flags.items
    rep["meta"].update(wall_s=time.perf_counter() - t0, loadavg_end=loadavg())
    rep = clean(rep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(rep, indent=1, allow_nan=False) + "\n")
    (out / "bench.md").write_text(report.to_markdown(rep))
    log(f"wrote {out / 'bench.md'} and {out / 'bench.json'} ({rep['meta']['wall_s']:.0f} s, {len(flags.items)} flagged)")
    return rep


if __name__ == "__main__":
    main()
