"""Workflow configuration: one YAML file in `workflows/`, read once into typed dataclasses.

Strict like nanoGPT's configurator: an unknown key is an error, a value must have its default's
type, and every problem in the file is reported at once (torchtune's `tune validate` habit).
Each package reads only its own section (`wf.data`, `wf.cache`, `wf.dump`, `wf.train`, ...);
nothing here reads environment variables.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# fixed choices, checked at load (every bad value listed with the others); the code that uses a
# value may still check what depends on other sections (e.g. a subset name against data.subsets)
Template = Literal["plain", "v1"]
Stage = Literal["pretrain", "finetune"]
ImageCheck = Literal["load", "verify"]
AttnBlock = Literal["tv", "vv", "tt", "full"]
AttnLayer = Literal["first", "last"]
ComputeDtype = Literal["float32", "float16", "bfloat16"]
# student_train.losses.PRESETS has these keys (tests/pipeline/test_workflow.py checks it)
Preset = Literal["sft", "rkl", "attn", "focus", "all", "alignkd", "vv", "tt", "full", "last"]
AttnLayers = Literal["first", "last", "first+last"]
AdapterDirection = Literal["student_to_teacher", "teacher_to_student"]
TailModel = Literal["bucket", "uniform", "none"]
TrainMode = Literal["cached", "online", "sft"]
Precision = Literal["fp32", "fp16", "bf16"]
ExportDtype = Literal["auto", "fp32", "fp16", "bf16"]
MissingSample = Literal["error", "skip"]
# cache encodings: the workflow's names or the store's short codes (teacher_dump/validate.py maps
# one to the other; tests/teacher_dump/test_validate.py keeps the two lists one)
AttnDtype = Literal["float32", "float16", "uint8", "uint8sqrt", "uint6", "uint6sqrt", "uint5", "uint5sqrt",
                    "uint4", "uint4sqrt", "f32", "f16", "u8", "u8sqrt", "u6", "u6sqrt", "u5", "u5sqrt", "u4", "u4sqrt"]
LogprobDtype = Literal["float32", "float16", "f32", "f16"]
VisionDtype = Literal["float32", "float16", "bfloat16", "f32", "f16", "bf16"]
TargetSource = Literal["auto", "recompute", "stored"]
Compressor = Literal["none", "zstd", "lz4", "lz4hc", "blosclz", "zlib"]

DEFAULT_WORKFLOW = Path("workflows/toy.yaml")


class WorkflowError(ValueError):
    """A workflow file is unreadable or has one or more invalid entries (all listed)."""


# ----------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class WorldConfig:
    """What `alignkd toy world` generates (toy workflows only)."""

    dir: str = "runs/toy/world"
    seed: int = 0
    image_size: int = 64
    n_images: int = 600
    n_pretrain: int = 600
    n_finetune: int = 1200
    n_eval: int = 350  # 50 per task type: per-task accuracy to about ±7 points
    n_eval_images: int = 150  # held-out images the eval questions are asked about
    # share of fine-tuning samples made long on purpose, so that Short and Long differ
    long_fraction: float = 0.15
    # share of fine-tuning records that are multi-turn QA about one image, and the most turns such
    # a record may carry (fitting keeps as many as the short limit allows): more one-word answers
    # per image is the cheapest grounding signal a from-scratch toy model gets (toy_world/world.py)
    multi_fraction: float = 0.40
    multi_turns: int = 6
    tokenizer_vocab: int = 512
    # optimiser steps (batch 64) pre-training the frozen toy CLIP tower on the world's scenes
    # (toy_world/tower.py); 0 keeps a random tower (small test worlds, where only shapes matter)
    tower_steps: int = 300


@dataclass(frozen=True)
class DatasetConfig:
    """One LLaVA-format JSON dataset."""

    name: str = ""
    json: str = ""
    image_root: str = ""
    template: Template = "v1"
    stage: Stage = "finetune"


@dataclass(frozen=True)
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    eval: DatasetConfig | None = None
    # captions of the held-out images: `alignkd eval` measures image use on them (optional)
    eval_captions: DatasetConfig | None = None
    tokenizer: str = ""
    manifest: str = "runs/toy/manifest.parquet"
    rejects: str = "runs/toy/manifest.rejects.jsonl"
    # embedded-token limits of the subsets (paper §4.2: Short 512, Long 2048); over-long samples
    # are dropped from a subset, never truncated
    subsets: dict[str, int] = field(default_factory=lambda: {"short": 512, "long": 2048})
    num_workers: int = 2  # tokenising processes (0 or 1: in the building process itself)
    batch_size: int = 512  # records per task sent to a worker
    # load: decode every image fully (catches truncated JPEGs); verify: PIL's header/CRC check
    # only, much faster for millions of JPEGs. Either way the file is hashed.
    image_check: ImageCheck = "load"


@dataclass(frozen=True)
class ModelsConfig:
    teacher: str = "runs/toy/teacher"  # MobileVLM-layout checkpoint directory
    student: str = "runs/toy/world/student_init"  # initial student checkpoint directory
    num_vision_tokens: int = 144


@dataclass(frozen=True)
class CacheConfig:
    dir: str = "runs/toy/cache"  # the store for subset S is {dir}/{S}.zarr
    logits_topk: int = 64
    focus_k: int = 16
    # defaults measured by `alignkd cache size-table` (README): 8-bit sqrt-domain attention is
    # 4.6x smaller than fp32 at a relative attention-loss error of 8e-5; float32 everywhere is lossless
    attn_dtype: AttnDtype = "u8sqrt"  # float32 (lossless) | float16 | uint8 | u8sqrt (8-bit, sqrt domain) | u6sqrt | u5sqrt | u4sqrt | u6 | u5 | u4
    logprob_dtype: LogprobDtype = "float16"  # float32 (lossless) | float16
    vision_dtype: VisionDtype = "float16"  # float32 (lossless) | float16 | bfloat16
    # the teacher's projector tokens (1.08 MB per image at the 7B's width): "recompute" keeps only the
    # teacher projector (once) and the student rebuilds them from its own frozen tower, valid only
    # for a student whose tower fingerprint equals the teacher's; "stored" writes them per image;
    # "auto": recompute when models.student is at hand with the teacher's tower, else stored
    projector_tokens: TargetSource = "auto"  # auto | recompute | stored
    # the teacher's first-layer attention (1.0 MB per sample at the 7B's width, u8sqrt): "recompute" keeps
    # its embedding rows, layer-0 norm and q/k projections once (≈ 330 MB f16 for the 7B) and the student
    # recomputes the probabilities exactly; needs recomputed projector tokens and first-layer blocks only.
    # "auto": recompute whenever that holds, else stored (cache.attn_dtype then applies)
    attention: TargetSource = "auto"  # auto | recompute | stored
    compressor: Compressor = "zstd"
    compression_level: int = 3
    blocks: list[AttnBlock] = field(default_factory=lambda: ["tv"])
    layers: list[AttnLayer] = field(default_factory=lambda: ["first"])


@dataclass(frozen=True)
class DumpConfig:
    workers: int = 2
    num_gpus_per_worker: float = 0.0
    num_cpus_per_worker: float = 1.0
    batch_size: int = 8
    unit_size: int = 64  # samples per unit of work (a unit is written by one actor, atomically)
    dtype: ComputeDtype = "float32"  # teacher compute dtype
    max_retries: int = 2


@dataclass(frozen=True)
class LossConfig:
    """Align-KD loss terms; resolved by `student_train.losses.resolve_loss` (which validates it).

    The preset sets every weight and the attention block/layers (paper Tables 3–4); a value set
    here overrides the preset's, None keeps it. L = sup·L_sup + rkl·L_rkl + attn·L_attn +
    focus·L_focus + all_tokens·L_all, so L_v = L_focus + α·L_all has α = all_tokens (0.1).
    """

    preset: Preset = "alignkd"
    sup: float | None = None
    attn: float | None = None
    focus: float | None = None
    all_tokens: float | None = None
    rkl: float | None = None
    # multiplies the attention term's weight of every preset (Table 3's rows without it stay without):
    # L_attn is an MSE over attention probabilities of size ~1/|V| (toy: ~1e-4), so at weight 1 its
    # gradient is lost beside L_sup's; the toy workflows set 1000 (dev world 2: held-out T→V
    # attention r 0.53 → 0.87, exact match +1.2 points over weight 1)
    attn_scale: float = 1.0
    attn_block: AttnBlock | None = None
    attn_layers: AttnLayers | None = None
    adapter_direction: AdapterDirection = "student_to_teacher"
    # bucket | uniform | none (see student_train.losses.rkl). Measured on a *trained* toy teacher
    # (dev world, top-64 vs dense, `python -m benchmarks.rkl_tail`): against a student at its init,
    # uniform 5.0% loss error / 24° gradient angle vs bucket 5.4% / 26°; against a trained SFT
    # student, uniform 1.4% / 1.1° vs bucket 1.0% / 0.6°. Uniform errs less while the student is far
    # from the teacher, when the RKL gradient is largest; k matters more than the tail (k = 128: ≤ 0.5%)
    tail_model: TailModel = "uniform"


@dataclass(frozen=True)
class StageConfig:
    epochs: float = 1.0
    max_steps: int = -1
    global_batch: int = 16
    micro_batch: int = 8
    lr: float = 1e-3
    projector_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    datasets: list[str] = field(default_factory=list)  # empty: every dataset of this stage


@dataclass(frozen=True)
class TrainConfig:
    mode: TrainMode = "cached"
    deepspeed_config: str = "workflows/zero2.json"
    precision: Precision = "fp32"
    out_dir: str = "runs/toy/student"
    seed: int = 0
    num_workers: int = 1
    prefetch_factor: int = 2
    gradient_checkpointing: bool = False
    save_every: int = 0  # DeepSpeed checkpoint every N optimiser steps (0: only at the end)
    keep_checkpoints: int = 2  # newest DeepSpeed checkpoints kept per stage (0: all; ~5 GB each at real width)
    # hand gradients to ZeRO-2 in a fixed parameter order (see student_train.engine.replay_grads);
    # False uses DeepSpeed's own hooks: only safe when every micro-batch uses every parameter alike
    fixed_grad_order: bool = True
    export_dtype: ExportDtype = "auto"  # dtype of the exported student (auto: = precision)
    num_procs: int = 0  # ranks per node for `alignkd student-train` (0: every GPU, or 1 on CPU)
    missing_sample: MissingSample = "error"
    loss: LossConfig = field(default_factory=LossConfig)
    pretrain: StageConfig = field(default_factory=StageConfig)
    finetune: StageConfig = field(default_factory=StageConfig)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 32
    max_new_tokens: int = 16


@dataclass(frozen=True)
class DemoConfig:
    """What `alignkd demo` runs beyond the other sections: the toy teacher's own (larger) budget."""

    teacher_subset: str = "long"  # the teacher sees more data than the students (it must know more)
    teacher_pretrain_steps: int = 60
    teacher_finetune_steps: int = 500
    # the teacher's learning rates (0: the train section's): a deeper, wider model wants a lower
    # one (measured on the toy teacher, see toy_world/world.py)
    teacher_lr: float = 0.0
    teacher_projector_lr: float = 0.0
    teacher_ranks: int = 1  # DeepSpeed ranks for the teacher's training (each one CPU thread)
    student_ranks: int = 1  # ... and for each student's
    student_subset: str = "short"
    eval_limit: int = 0  # 0: the whole held-out split
    heatmaps: int = 3  # T→V attention heatmaps drawn from the cache


@dataclass(frozen=True)
class ReproduceConfig:
    """What `alignkd reproduce` runs: the paper's Tables 3–4 ablations on Short and Table 1's
    Short/Long block, every (subset, preset) pair once per seed."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # Table 3 (sft → rkl → attn → focus → all) and Table 4 (vv, tt, full, last), on `ablation_subset`
    presets: list[Preset] = field(default_factory=lambda: ["sft", "rkl", "attn", "focus", "all", "vv", "tt", "full", "last"])
    ablation_subset: str = "short"
    # Table 1's bottom block: `subset_presets` (without / with Align-KD) on each of these subsets
    subsets: list[str] = field(default_factory=lambda: ["short", "long"])
    subset_presets: list[Preset] = field(default_factory=lambda: ["sft", "all"])
    max_steps: int = 0  # optimiser steps per stage (0: the train section's budget)
    jobs: int = 2  # runs at once (each rank uses one CPU thread)
    eval_limit: int = 0  # 0: the whole held-out split
    out: str = ""  # "": <run_dir>/reproduce


@dataclass(frozen=True)
class Workflow:
    name: str = "toy"
    run_dir: str = "runs/toy"
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    dump: DumpConfig = field(default_factory=DumpConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    source: str = ""  # the file it was read from (filled by load_workflow)

    def cache_path(self, subset: str) -> Path:
        return Path(self.cache.dir) / f"{subset}.zarr"

    def label(self, key: str) -> str:
        """A dotted key ("models.teacher") as the user finds it: with the `vars:` entries its
        value is made of, "models.teacher (vars.teacher_ckpt)", since those are what a user of a
        real workflow edits; the key alone when the file sets it literally (or it is a default)."""
        names = _var_names(self.source, key)
        return f"{key} ({', '.join('vars.' + n for n in names)})" if names else key

    def subset_limit(self, subset: str) -> int:
        if subset not in self.data.subsets:
            raise WorkflowError(
                f"{self.source}: unknown subset {subset!r}; data.subsets defines {sorted(self.data.subsets)}"
            )
        return self.data.subsets[subset]


# ------------------------------------------------------------------------------------ loading
def load_workflow(path: str | Path = DEFAULT_WORKFLOW) -> Workflow:
    """Read a workflow YAML into a `Workflow`; raise `WorkflowError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"workflow file not found: {path} (the toy default is {DEFAULT_WORKFLOW})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise WorkflowError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise WorkflowError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    errors: list[str] = []
    raw = _substitute_vars(raw, errors)
    wf = from_dict(Workflow, raw, "", errors)
    for key in ("train.save_every", "train.keep_checkpoints"):  # counts where a negative means nothing
        section, name = key.split(".")
        value = getattr(getattr(wf, section), name)
        if isinstance(value, int) and value < 0:
            errors.append(f"{key}: must be 0 or more, got {value}")
    if errors:
        raise WorkflowError(f"{path}: {len(errors)} problem(s):\n  - " + "\n  - ".join(errors))
    wf = _replace(wf, {"source": str(path),
                       "train.deepspeed_config": _beside_workflow(wf.train.deepspeed_config, path)})
    return _place_unset_paths(wf, raw)


def with_overrides(wf: Workflow, overrides: Mapping[str, Any]) -> Workflow:
    """A copy of `wf` with dotted keys replaced: `with_overrides(wf, {"train.finetune.lr": 7e-4,
    "models.student": "ckpt"})`. The one way a loaded (frozen) workflow changes: every key and
    value is checked as `load_workflow` checks the file (unknown key, type, fixed choice) and every
    problem is listed at once (WorkflowError). A value may be a dataclass of the key's type (e.g.
    a `DatasetConfig` in the list `data.datasets`) or a mapping read into one."""
    errors: list[str] = []
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        tp = _key_type(key, errors)
        if tp is not None:
            checked[key] = _convert(tp, value, key, errors)
    if errors:
        raise WorkflowError(f"{wf.source or 'workflow'}: {len(errors)} problem(s) in the overrides:\n  - "
                            + "\n  - ".join(errors))
    return _replace(wf, checked)


def _key_type(key: str, errors: list[str]) -> Any:
    """The declared type of dotted `key` in `Workflow`, or None (one message appended)."""
    cls: Any = Workflow
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            errors.append(f"{key}: {'.'.join(parts[:i])} is a value, not a section")
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            errors.append(f"{key}: unknown key (known in {'.'.join(parts[:i]) or '<top>'}: {', '.join(sorted(hints))})")
            return None
        cls = hints[part]
    return cls


def _replace(obj: Any, values: Mapping[str, Any]) -> Any:
    """dataclasses.replace along dotted keys (already checked): nested sections are rebuilt, the
    rest shared."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = _replace(direct.get(head, getattr(obj, head)), sub)
    return dataclasses.replace(obj, **direct) if direct else obj


def workflow_to_dict(wf: Workflow) -> dict:
    """The workflow as plain data (JSON-able), `source` included: `workflow_from_dict` reads it back
    equal (how a resolved student run hands its workflow to the ranks)."""
    return dataclasses.asdict(wf)


def workflow_from_dict(data: dict, where: str) -> Workflow:
    """The inverse of `workflow_to_dict`, as strict as `load_workflow` (WorkflowError naming `where`)."""
    errors: list[str] = []
    wf = from_dict(Workflow, data, "", errors)
    if errors:
        raise WorkflowError(f"{where}: {len(errors)} problem(s):\n  - " + "\n  - ".join(errors))
    return wf


# (section, key, path under run_dir) of every output/checkpoint path with a default
_RUN_PATHS = (("world", "dir", "world"), ("data", "manifest", "manifest.parquet"),
              ("data", "rejects", "manifest.rejects.jsonl"), ("cache", "dir", "cache"),
              ("train", "out_dir", "student"), ("models", "teacher", "teacher"),
              ("models", "student", "world/student_init"))


def _place_unset_paths(wf: Workflow, raw: dict) -> Workflow:
    """Paths the file leaves unset go under its run_dir, and an unset run_dir is runs/<name>: a
    workflow named "mine" without `data.manifest` writes runs/mine/manifest.parquet, never into the
    toy's runs/toy/ tree (the dataclass defaults, which are the toy's, apply to name: toy alone)."""
    run_dir = wf.run_dir if "run_dir" in raw else f"runs/{wf.name}"
    placed: dict[str, Any] = {"run_dir": run_dir}
    for section, key, rel in _RUN_PATHS:
        if key not in (raw.get(section) or {}):
            if (section, key) == ("models", "student") and "dir" in (raw.get("world") or {}):
                placed["models.student"] = f"{wf.world.dir}/student_init"  # the world writes it
            else:
                placed[f"{section}.{key}"] = f"{run_dir}/{rel}"
    return _replace(wf, placed)


def _beside_workflow(rel: str, workflow: Path) -> str:
    """A relative `train.deepspeed_config` is read from the directory alignkd runs in, like every
    path; when it is not there but a file of that name sits beside the workflow YAML (the repo's
    `workflows/zero2.json` next to `workflows/*.yaml`), that one is meant: so a workflow also works
    when alignkd runs outside the repository root."""
    p = Path(rel)
    if not rel or p.is_absolute() or p.is_file():
        return rel
    beside = workflow.parent / p.name
    return str(beside) if beside.is_file() else rel


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_vars(raw: dict, errors: list[str]) -> dict:
    """`vars:` at the top level names paths once (`ckpt_root: /data/ckpt`); every string may
    use them as `${ckpt_root}`. Plain data, no environment: a user edits the vars block only."""
    table = raw.pop("vars", None) or {}
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        errors.append("vars: expected a mapping of names to strings")
        return raw

    def sub(value: Any, where: str) -> Any:
        if isinstance(value, str):
            for name in _VAR.findall(value):
                if name not in table:
                    errors.append(f"{where}: ${{{name}}} is not defined in vars (defined: {', '.join(sorted(table)) or 'none'})")
            return _VAR.sub(lambda m: table.get(m.group(1), m.group(0)), value)
        if isinstance(value, dict):
            return {k: sub(v, _join(where, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    return sub(raw, "")


def _var_names(source: str, key: str) -> list[str]:
    """The `${name}`s in the raw value of dotted `key` in workflow file `source` ([] if none, or
    if the file is gone): read again on demand, for messages only, so `Workflow` carries no state."""
    try:
        node: Any = yaml.safe_load(Path(source).read_text()) if source else None
    except (OSError, yaml.YAMLError):
        return []
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return list(dict.fromkeys(_VAR.findall(node))) if isinstance(node, str) else []


def from_dict(cls: type, data: Any, where: str, errors: list[str]) -> Any:
    """Build dataclass `cls` from `data`, appending one message per problem to `errors`."""
    if not isinstance(data, dict):
        errors.append(f"{where or '<top>'}: expected a mapping, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            errors.append(f"{_join(where, key)}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], _join(where, f.name), errors)
    return cls(**kwargs)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _convert(tp: Any, value: Any, where: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where, errors)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # an override's own dataclass: its fields checked like a mapping's
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(tp)}
        return from_dict(tp, value, where, errors)
    if origin is Literal:
        if value not in args or type(value) is not type(args[0]):
            errors.append(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {type(value).__name__}")
            return []
        return [_convert(args[0], v, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return {}
        return {k: _convert(args[1], v, f"{where}.{k}", errors) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        errors.append(f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r})")
        return value
    return value
