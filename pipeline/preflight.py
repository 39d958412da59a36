"""Checks both phases make before they start, from config.json and tokenizer files alone (no
weight is opened): each checkpoint's config loads and what it would build, and the teacher, the
student and `data.tokenizer` share one vocabulary. `teacher-dump --dry-run` and
`student-train --dry-run` print what these return; real runs refuse on the same problems.

    problems: list[str] = []
    teacher = inspect_model(wf.models.teacher, wf.label("models.teacher"), problems)
    student = inspect_model(wf.models.student, wf.label("models.student"), problems)
    line, bad = check_vocab(wf.data.tokenizer, wf.label("data.tokenizer"), [teacher, student])

Shared by `teacher_dump` and `student_train` (neither imports the other).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.contract import read_manifest, subset_column
from pipeline.fingerprint import vocab_digest, vocab_size

if TYPE_CHECKING:
    from pipeline.models import MobileVLMConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin")
STAGE_ORDER = ("pretrain", "finetune")  # the order training runs them (and plans print them)


def human_count(n: int) -> str:
    """7062943744 -> "7.06B", 303507456 -> "303.5M"."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}" if unit == "B" else f"{n / div:.1f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """Bytes as GiB above 256 MiB, else MiB."""
    return f"{n / 2**30:.3f} GiB" if n >= 2**28 else f"{n / 2**20:.2f} MiB"


@dataclass(frozen=True)
class ModelInfo:
    """One checkpoint as its config.json describes it (the weights are never opened)."""

    label: str  # where the path came from: "models.teacher (vars.teacher_ckpt)", "--init", ...
    path: Path
    config: MobileVLMConfig
    params: dict[str, int]  # llm / vision_tower / projector / total, counted on the meta device
    weight_bytes: int  # Σ size of *.safetensors / *.bin in the directory (0: none there)
    vision_tokens: int
    weights_from: str = ""  # "": on disk at `path` (weight_bytes); else who writes them there later

    def summary(self) -> str:
        """One line: shapes, parameters, weights on disk."""
        c, p = self.config, self.params
        weights = f"weights {human_bytes(self.weight_bytes)}" if self.weight_bytes else "no weight files"
        weights = f"weights written by {self.weights_from}" if self.weights_from else weights
        return (f"LLaMA {c.num_hidden_layers} x {c.hidden_size}, {c.num_attention_heads} heads, vocab {c.vocab_size}, "
                f"{self.vision_tokens} vision tokens; {human_count(p['total'])} params (LLM {human_count(p['llm'])}, "
                f"vision tower {human_count(p['vision_tower'])} frozen, projector {human_count(p['projector'])}); {weights}")


def param_counts(cfg: MobileVLMConfig) -> tuple[dict[str, int], int]:
    """({llm, vision_tower, projector, total} parameter counts, vision tokens) of the model `cfg`
    builds, built on the meta device: exact, no memory, ~0.2 s even for the 7B teacher."""
    import torch  # heavy: only when a checkpoint is inspected

    from pipeline.models import MobileVLM

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        m = MobileVLM(cfg)
    proj = count(m.model.mm_projector)
    params = {"llm": count(m.model) - proj + count(m.lm_head),  # m.model: embeddings, layers, projector
              "vision_tower": count(m.vision_tower), "projector": proj, "total": count(m)}
    return params, m.num_vision_tokens


def inspect_model(path: str | Path, label: str, problems: list[str], config_of: str | Path | None = None) -> ModelInfo | None:
    """Load `path`'s config.json (and its vision tower's) and count what it builds; None with a
    problem naming `label` and the path when the directory or its config is missing or unusable.

    config_of: read the config from this directory instead (a checkpoint a previous stage will
    write at `path`, e.g. pre-training's export, has the shapes of the one it starts from)."""
    from pipeline.models import ModelConfigError, load_config, resolve_vision_config

    p = Path(path).expanduser()
    src = Path(config_of).expanduser() if config_of is not None else p
    if not src.is_dir():
        problems.append(f"{label}: no checkpoint directory at {src}")
        return None
    try:
        cfg = load_config(src)
        resolve_vision_config(cfg)
        params, n_vision = param_counts(cfg)
    except (ModelConfigError, OSError, ValueError) as exc:
        problems.append(f"{label} ({src}): {exc}")
        return None
    weights = sum(f.stat().st_size for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES) if p.is_dir() else 0
    return ModelInfo(label=label, path=p, config=cfg, params=params, weight_bytes=weights, vision_tokens=n_vision)


def check_vocab(tokenizer_dir: str | Path, tokenizer_label: str, models: Iterable[ModelInfo | None]) -> tuple[str, list[str]]:
    """(a summary line, problems): `tokenizer_dir` (the manifest's tokenizer) and every model dir
    that ships a tokenizer (tokenizer.json or tokenizer.model) must hold one vocabulary, since
    Align-KD compares teacher and student distributions token by token over the manifest's ids;
    the models' vocab_size must agree and hold every id of the tokenizer. Each tokenizer is
    loaded, so the comparison is by content (either file format) and the size check always runs;
    one that cannot be loaded (e.g. sentencepiece missing) is a problem, never skipped. A model
    directory without tokenizer files is skipped, and so is a missing `tokenizer_dir` (the
    callers fingerprint it anyway, and report it missing there)."""
    from pipeline.tokenizer_load import TokenizerLoadError, has_tokenizer, load_tokenizer

    models = [m for m in models if m is not None]
    problems: list[str] = []
    by_path: dict[Path, list[str]] = {}  # one directory may stand for several keys (data.tokenizer = student)
    for label, d in [(tokenizer_label, Path(tokenizer_dir).expanduser())] + [(m.label, m.path) for m in models]:
        labels = by_path.setdefault(d.resolve() if d.exists() else d, [])
        labels += [label] if label not in labels else []
    tok_key = next(iter(by_path))
    vocab: dict[Path, str] = {}
    n: int | None = None  # largest id + 1 of tokenizer_dir
    for d, labels in by_path.items():
        if not has_tokenizer(d):
            if d == tok_key and d.is_dir():
                problems.append(f"{tokenizer_label}: no tokenizer.json or tokenizer.model in {d}")
            continue  # a model's tokenizer is optional; a missing data.tokenizer the caller reports
        try:
            tok = load_tokenizer(d)
        except TokenizerLoadError as exc:
            problems.append(f"{' = '.join(labels)}: {exc}")
            continue
        vocab[d] = vocab_digest(tok)
        if d == tok_key:
            n = vocab_size(tok)
    groups: dict[str, list[str]] = {}
    for d, fp in vocab.items():
        groups.setdefault(fp, []).append(f"{' = '.join(by_path[d])} ({d})")
    if len(groups) > 1:
        problems.append(
            "the tokenizers differ: teacher and student must share one vocabulary (Align-KD compares their output "
            "distributions token by token over the manifest's ids), but "
            + "; ".join(f"{' and '.join(names)} {'has' if len(names) == 1 else 'have'} vocabulary {fp}"
                        for fp, names in groups.items())
            + ": point models.teacher / models.student / data.tokenizer at checkpoints with the same tokenizer"
        )
    sizes = {m.label: m.config.vocab_size for m in models}
    if len(set(sizes.values())) > 1:
        problems.append("the models' vocab_size differ (" + ", ".join(f"{k} {v}" for k, v in sizes.items())
                        + "): the teacher's output distribution cannot be compared with the student's")
    for m in models:
        if n is not None and n > m.config.vocab_size:
            problems.append(f"{tokenizer_label} has token ids up to {n - 1} but {m.label} has vocab_size "
                            f"{m.config.vocab_size}: the tokenizer belongs to another model")
    size = f", {n} tokens" if n is not None else ""
    if len(groups) == 1:
        line = f"one vocabulary {next(iter(groups))}{size}: " + "; ".join(next(iter(groups.values())))
    else:
        line = "no tokenizer could be read" if not groups else "the tokenizers differ (see the problems)"
    return line, problems


def manifest_counts(path: str | Path, subsets: Iterable[str],
                    datasets: dict[str, list[str]] | None = None) -> dict[str, dict[str, int]]:
    """{stage: {subset: samples}} of a manifest, from its stage/dataset/in_<subset> columns alone
    (no token lists are read: seconds for millions of rows). datasets: {stage: names} keeps only
    those datasets of a stage (train.<stage>.datasets; empty or absent: all of them)."""
    subsets = list(subsets)
    t = read_manifest(path, ["stage", "dataset", *(subset_column(s) for s in subsets)])
    known = set(t.column("dataset").unique().to_pylist())
    out: dict[str, dict[str, int]] = {}
    present = set(t.column("stage").unique().to_pylist()) | set(datasets or {})
    for stage in sorted(present, key=lambda st: (STAGE_ORDER.index(st) if st in STAGE_ORDER else len(STAGE_ORDER), st)):
        keep = pc.equal(t["stage"], stage)
        if datasets and datasets.get(stage):
            unknown = sorted(set(datasets[stage]) - known)
            if unknown:
                raise ValueError(f"train.{stage}.datasets names {unknown}, not in manifest {path} (it holds {sorted(known)})")
            keep = pc.and_(keep, pc.is_in(t["dataset"], value_set=pa.array(datasets[stage])))
        rows = t.filter(keep)
        out[stage] = {s: int(pc.sum(rows[f"in_{s}"]).as_py() or 0) for s in subsets}
    return out


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    """"pretrain short 10 / long 10; finetune short 12 / long 13"."""
    return "; ".join(f"{stage} " + " / ".join(f"{s} {n}" for s, n in per.items()) for stage, per in counts.items())
