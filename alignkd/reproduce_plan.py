"""`alignkd reproduce`'s plan: which runs (subset × preset × seed) exist, where each lives, the
workflow the Table-4 runs read (the workflow's cache plus the attention maps it lacks), and the
budget guard that refuses to mix finished runs of another training budget into the tables."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

QUICK = {"seeds": [0], "presets": ["sft", "all"], "max_steps": 2, "eval_limit": 16}


@dataclass(frozen=True)
class Run:
    """One student: `student-train --stage all` then `eval`, in `dir`."""

    subset: str
    preset: str
    seed: int
    dir: Path
    workflow: str  # the workflow file its commands read
    teacher: str = "runs/toy/teacher"  # the teacher its eval measures transfer from (models.teacher)

    @property
    def name(self) -> str:
        return f"{self.subset}/{self.preset}/seed_{self.seed}"

    @property
    def summary(self) -> Path:
        return self.dir / "eval" / "summary.json"

    def train_args(self, max_steps: int) -> list[str]:
        mode = "sft" if self.preset == "sft" else "cached"
        args = ["student-train", "--workflow", self.workflow, "--subset", self.subset, "--stage", "all",
                "--mode", mode, "--preset", self.preset, "--seed", str(self.seed), "--out", str(self.dir),
                "--resume"]  # an interrupted run continues (a finished stage is skipped)
        return args + (["--max-steps", str(max_steps)] if max_steps > 0 else [])

    def eval_args(self, eval_limit: int) -> list[str]:
        args = ["eval", "--workflow", self.workflow, "--model", str(self.dir / "finetune" / "final"),
                "--out", str(self.dir / "eval"), "--teacher", self.teacher]
        return args + (["--limit", str(eval_limit)] if eval_limit > 0 else [])


def attn_needs(presets: list[str]) -> set[tuple[str, str]]:
    """(layer, block) attention maps the presets distil (the cache must hold them)."""
    from pipeline.workflow import LossConfig
    from student_train.losses import resolve_loss

    return {k for p in presets for k in resolve_loss(LossConfig(preset=p)).attn_keys}


def pairs(cfg, presets: list[str], subsets: list[str]) -> list[tuple[str, str]]:
    """(subset, preset): the ablations on cfg.ablation_subset, then Table 1's block per subset."""
    out = [(cfg.ablation_subset, p) for p in presets]
    out += [(s, p) for s in subsets for p in cfg.subset_presets if (s, p) not in out]
    return out


def cache_workflow(workflow: Path, wf, needs: set[tuple[str, str]], out: Path) -> Path:
    """<out>/workflow.yaml: `workflow` with cache.blocks/layers covering `needs`, cache.dir <out>/cache."""
    import yaml

    from pipeline.workflow import load_workflow

    raw = yaml.safe_load(workflow.read_text()) or {}
    cache = raw.setdefault("cache", {})
    cache["layers"] = list(dict.fromkeys([*wf.cache.layers, *sorted(l for l, _ in needs)]))
    cache["blocks"] = list(dict.fromkeys([*wf.cache.blocks, *sorted(b for _, b in needs)]))
    cache["dir"] = str(out / "cache")
    path = out / "workflow.yaml"
    path.write_text(f"# Written by `alignkd reproduce` from {workflow}: the same workflow, with a teacher cache that\n"
                    f"# also holds the attention maps of Table 4's ablations (its own cache.dir).\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    load_workflow(path)  # strict: must read back
    return path


def make_plan(workflow: Path, wf, seeds: list[int], presets: list[str], subsets: list[str],
              out: Path) -> tuple[list[Run], Path | None]:
    """The runs (seed-major: a cut-short reproduction still has whole tables) and the derived cache
    workflow if a preset needs one. A run reads the workflow's own cache when it holds the
    attention maps its preset distils (reading a store decodes every map it holds: the smaller
    store is faster), else the derived one."""
    from student_train.losses import PRESETS

    cfg = wf.reproduce
    for s in dict.fromkeys([cfg.ablation_subset, *subsets]):
        wf.subset_limit(s)  # an unknown subset is refused, naming data.subsets
    for p in dict.fromkeys([*presets, *cfg.subset_presets]):
        attn_needs([p])  # an unknown preset is refused, naming the known ones
    have = {(l, b) for l in wf.cache.layers for b in wf.cache.blocks}
    out.mkdir(parents=True, exist_ok=True)
    derived = None
    wf_of: dict[str, str] = {}  # preset -> the workflow file its runs read
    for p in dict.fromkeys(p for _, p in pairs(cfg, presets, subsets)):
        if attn_needs([p]) <= have:
            wf_of[p] = str(workflow)
        else:
            # the derived cache holds what any preset can ask for, so that one store serves every
            # invocation (another --presets must not become a provenance mismatch with it)
            derived = derived or cache_workflow(workflow, wf, attn_needs(list(PRESETS)), out)
            wf_of[p] = str(derived)
    runs = [Run(s, p, seed, out / "runs" / s / p / f"seed_{seed}", wf_of[p], wf.models.teacher)
            for seed in seeds for s, p in pairs(cfg, presets, subsets)]
    return runs, derived


def budget_of(wf, max_steps: int, eval_limit: int) -> dict:
    """What makes two finished runs comparable: the train section (fingerprint) and the budget."""
    train = json.dumps(dataclasses.asdict(wf.train), sort_keys=True, default=str)
    return {"train_fingerprint": hashlib.sha256(train.encode()).hexdigest()[:16],
            "max_steps": max_steps, "eval_limit": eval_limit}


class BudgetMismatch(ValueError):
    """Finished runs in the output directory were trained with another budget."""


def _budget_str(b: dict) -> str:
    return f"max_steps {b.get('max_steps')}, eval_limit {b.get('eval_limit')}, train section {b.get('train_fingerprint')}"


def check_finished(runs: list[Run], budget: dict) -> None:
    """A finished run of another budget must not be mixed in (BudgetMismatch); an unfinished one
    is restarted from scratch."""
    stale, got = [], None
    for r in runs:
        rec = r.dir / "reproduce_run.json"
        had = json.loads(rec.read_text()).get("budget") if rec.is_file() else None
        if had is None or had == budget:
            continue
        if r.summary.is_file():
            stale.append(r.name)
            got = had
        else:
            shutil.rmtree(r.dir)
    if stale:
        raise BudgetMismatch(f"{len(stale)} finished run(s) here were trained with another budget ({_budget_str(got)}) "
                             f"than this command's ({_budget_str(budget)}): {', '.join(stale)}. "
                             "Choose another --out, or remove them.")
