"""Before training: does the cache hold what this run expects? One error listing every problem.

Reads the store's provenance and the checkpoints' config.json files only — never the teacher's
weights (cached mode runs without the teacher directory at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cache_schema.provenance import diff_provenance
from pipeline.fingerprint import config_fingerprint, tokenizer_fingerprint
from pipeline.models import load_config
from pipeline.workflow import Workflow
from student_train.losses import resolve_loss


class StoreMismatchError(ValueError):
    """The cache's provenance disagrees with the run (every differing field is listed)."""


@dataclass(frozen=True)
class StoreInfo:
    """What the recipe sizes its adapters with: the teacher as the store describes it."""

    teacher_heads: int
    teacher_hidden: int
    vocab_size: int
    num_vision_tokens: int
    logits_topk: int


def expected_provenance(wf: Workflow, subset: str) -> dict:
    """The provenance fields this run pins, as plain values (cache_schema's `expect` form)."""
    return {
        "tokenizer_fingerprint": tokenizer_fingerprint(wf.data.tokenizer),
        "subset": subset,
        "max_length": wf.subset_limit(subset),
        "num_vision_tokens": wf.models.num_vision_tokens,
        "logits_topk": wf.cache.logits_topk,
        "focus_k": wf.cache.focus_k,
    }


def check_store(wf: Workflow, subset: str, reader, *, teacher_heads: int | None = None,
                teacher_hidden: int | None = None) -> StoreInfo:
    """Compare `reader.provenance` with the run; raise StoreMismatchError listing every problem.

    teacher_heads / teacher_hidden: what already-built adapters expect (e.g. restored from a
    checkpoint); when None and the teacher's config.json is at hand, that config is the
    expectation (its fingerprint must match too); without either, the store's values are taken.
    """
    prov = reader.provenance
    where = f"cache {reader.path}"
    problems = [f"{k}: the run expects {e!r}, the store has {g!r}"
                for k, (e, g) in diff_provenance(expected_provenance(wf, subset), prov).items()]
    teacher_dir = Path(wf.models.teacher)
    if (teacher_dir / "config.json").is_file():  # config only: cheap, and no weights are opened
        if config_fingerprint(teacher_dir) != prov.teacher_config_fingerprint:
            problems.append(f"teacher_config_fingerprint: {teacher_dir}/config.json is "
                            f"{config_fingerprint(teacher_dir)}, the store was dumped from {prov.teacher_config_fingerprint}")
        tcfg = load_config(teacher_dir)
        teacher_heads = teacher_heads or tcfg.num_attention_heads
        teacher_hidden = teacher_hidden or tcfg.hidden_size
    if teacher_heads is not None and teacher_heads != prov.teacher_heads:
        problems.append(f"teacher_heads: the head adapters expect {teacher_heads}, the store has {prov.teacher_heads}")
    if teacher_hidden is not None and teacher_hidden != prov.teacher_hidden_size:
        problems.append(f"teacher_hidden_size: the token adapter expects {teacher_hidden}, "
                        f"the store has {prov.teacher_hidden_size}")
    student = load_config(wf.models.student)
    if student.vocab_size != prov.vocab_size:
        problems.append(f"vocab_size: the student has {student.vocab_size}, the store {prov.vocab_size}")
    needs = resolve_loss(wf.train.loss).teacher_targets()
    absent = [f"{l}.{b}" for l, b in needs.attn if f"{l}.{b}" not in prov.attn_blocks]
    if absent:
        problems.append(f"attn_blocks: the loss ({wf.train.loss.preset}) needs {absent}, the store holds "
                        f"{list(prov.attn_blocks)} (add them to cache.blocks/cache.layers and re-dump)")
    if problems:
        raise StoreMismatchError(
            f"{where} does not fit this run ({wf.source}, subset {subset!r}); {len(problems)} problem(s):\n  - "
            + "\n  - ".join(problems)
            + "\nRe-run `alignkd teacher-dump` with this workflow, or point cache.dir at a matching store."
        )
    return StoreInfo(teacher_heads=prov.teacher_heads, teacher_hidden=prov.teacher_hidden_size,
                     vocab_size=prov.vocab_size, num_vision_tokens=prov.num_vision_tokens,
                     logits_topk=prov.logits_topk)
