"""Phase 2 recipe on the tiny world (conftest.py): the real DeepSpeed ZeRO-2 engine on CPU (gloo),
in this process with one rank for the fast tests, through the real `deepspeed` launcher with two
ranks for the slow one."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.workflow import StageConfig, load_workflow, with_overrides
from student_train.engine import (
    EngineConfigError,
    batch_plan,
    fill_ds_config,
    lr_factor,
    param_groups,
    vision_tower_of,
    warmup_steps,
)
from student_train.launch import free_port
from student_train.metrics import read_metrics
from student_train.run import StudentRun

REPO = Path(__file__).resolve().parents[2]
ZERO2 = REPO / "workflows" / "zero2.json"


# ------------------------------------------------------------------------------------ helpers
def write_workflow(wf, path: Path, **train) -> Path:
    """Dump a Workflow to YAML (what the launcher's ranks read), with train.* overrides."""
    d = dataclasses.asdict(wf)
    d.pop("source")
    d["train"]["deepspeed_config"] = str(ZERO2)
    for st in ("pretrain", "finetune"):
        d["train"][st].update(micro_batch=2, global_batch=4, lr=2e-3, projector_lr=5e-3, warmup_ratio=0.03)
    for k, v in train.items():
        if isinstance(v, dict):
            d["train"][k].update(v)
        else:
            d["train"][k] = v
    path.write_text(yaml.safe_dump(d))
    load_workflow(path)  # strict: the dump must read back
    return path


@pytest.fixture()
def one_rank(monkeypatch):
    """Environment of a single-rank job, as the launcher would set it; one thread (shared CPUs)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stage_run(path: Path, out: Path, stage: str = "finetune", **overrides):
    """The one stage's run as `alignkd student-train` resolves it (and completes it before launch)."""
    from student_train.run import complete, resolve_runs

    _, runs = resolve_runs(load_workflow(path), "short", [stage], out=str(out), **overrides)
    return complete(runs[0])


def count_calls(monkeypatch) -> dict[str, int]:
    """Calls of the store checks and the tower hash from now on (the real functions run: counted,
    not replaced), wherever they are reached: the launching process's resolution or a rank."""
    import student_train.data as data
    import student_train.preflight as preflight
    import student_train.teacher_projector as tp

    calls = {"check_store": 0, "check_token_hashes": 0, "tower_fingerprint": 0}
    for mod, name in ((data, "check_store"), (preflight, "check_token_hashes"), (tp, "tower_fingerprint")):
        def counted(*a, _f=getattr(mod, name), _n=name, **k):
            calls[_n] += 1
            return _f(*a, **k)
        monkeypatch.setattr(mod, name, counted)
    return calls


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in module.named_parameters()}


# ------------------------------------------------------------------------------ pure pieces
def test_fill_ds_config_fills_auto_from_the_workflow():
    st = StageConfig(global_batch=16, micro_batch=2)
    plan = batch_plan(st, world_size=2)
    assert plan.grad_accum == 4
    cfg = fill_ds_config(ZERO2, plan, "fp16")
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) == (2, 4, 16)
    assert cfg["fp16"]["enabled"] is True and cfg["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    assert cfg["bf16"]["enabled"] is False and cfg["zero_optimization"]["stage"] == 2
    assert fill_ds_config(ZERO2, plan, "bf16")["bf16"]["enabled"] is True
    assert not fill_ds_config(ZERO2, plan, "fp32")["fp16"]["enabled"]
    with pytest.raises(EngineConfigError, match="not a multiple"):
        batch_plan(StageConfig(global_batch=10, micro_batch=4), world_size=2)


def test_fill_ds_config_refuses_a_contradicting_json(tmp_path):
    cfg = json.loads(ZERO2.read_text())
    cfg["train_batch_size"] = 64
    p = tmp_path / "ds.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(EngineConfigError, match="train_batch_size=64"):
        fill_ds_config(p, batch_plan(StageConfig(global_batch=16, micro_batch=2), 2), "fp32")


def test_lr_schedule_warms_up_then_decays_to_zero():
    total = 100
    n = warmup_steps(total, 0.03)
    f = [lr_factor(s, total, n) for s in range(total)]
    assert n == 3 and 0 < f[0] < f[1] < f[2] < f[3] == 1.0  # 3 % warm-up, never a zero-LR step
    assert all(a >= b for a, b in zip(f[3:], f[4:]))  # cosine: monotone down
    assert f[-1] < 0.01 and math.isclose(lr_factor(total, total, n), 0.0, abs_tol=1e-12)


def test_param_groups_projector_llm_adapters(tiny_world):
    from pipeline.models import MobileVLM, load_config
    from student_train.adapters import Adapters
    from student_train.losses import AlignKDLoss, resolve_loss
    from student_train.recipe import TrainModule

    wf = tiny_world.workflow()
    student = MobileVLM.from_pretrained(wf.models.student)
    t = load_config(wf.models.teacher)
    res = resolve_loss(wf.train.loss)
    ad = Adapters.for_loss(res, student.config.num_attention_heads, t.num_attention_heads,
                           student.config.hidden_size, t.hidden_size)
    module = TrainModule(student, AlignKDLoss(res, ad), None)
    groups = {g["name"]: g for g in param_groups(module, StageConfig(lr=1e-3, projector_lr=2e-3))}
    ids = {k: {id(p) for p in g["params"]} for k, g in groups.items()}
    assert ids["projector"] == {id(p) for p in student.model.mm_projector.parameters()}
    assert ids["adapters"] == {id(p) for p in ad.parameters()} and ids["adapters"]
    assert id(student.lm_head.weight) in ids["llm"] and id(student.model.embed_tokens.weight) in ids["llm"]
    tower = {id(p) for p in vision_tower_of(student).parameters()}
    assert tower and not tower & set().union(*ids.values())
    assert (groups["projector"]["lr"], groups["llm"]["lr"], groups["adapters"]["lr"]) == (2e-3, 1e-3, 1e-3)
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert trainable == set().union(*ids.values())


def test_replayed_gradients_arrive_in_an_order_independent_of_the_graph():
    """ZeRO-2 needs the same gradient-hook order on every rank; a micro-batch that skips a module
    (text-only: no projector) must still deliver every gradient, in the same order."""
    from student_train.engine import local_grads, replay_grads

    torch.manual_seed(0)
    a, b, c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    params = [*a.parameters(), *b.parameters(), *c.parameters()]
    x = torch.randn(2, 4)

    def run(use_c: bool, fixed: bool, scale: float = 1.0):
        for p in params:
            p.grad = None
        order: list[int] = []
        hooks = [p.register_post_accumulate_grad_hook(lambda _, i=i: order.append(i)) for i, p in enumerate(params)]
        y = b(a(x)).sum() + (c(x).sum() if use_c else 0.0)
        if fixed:  # what the recipe does; `* scale` is DeepSpeed's loss scaling inside engine.backward
            (replay_grads(params, local_grads(y, params, scale), 1.0 / scale) * scale).backward()
        else:
            (y * scale).backward()
        for h in hooks:
            h.remove()
        return order, [p.grad.clone() if p.grad is not None else None for p in params]

    natural_full, ref = run(True, False)
    natural_part, _ = run(False, False)
    assert natural_full != natural_part  # the hazard: hooks depend on the graph
    fixed_full, got = run(True, True, scale=8.0)
    fixed_part, got_part = run(False, True)
    assert fixed_full == fixed_part and sorted(fixed_full) == list(range(len(params)))
    assert all(torch.allclose(r, g / 8.0) for r, g in zip(ref, got))  # scaled as DeepSpeed's own backward would
    assert all(torch.equal(g, torch.zeros_like(g)) for g in got_part[4:])  # unused: zeros, not None


# ------------------------------------------------------------------- real engine, one rank
@pytest.mark.parametrize("tokens", ["stored", "recompute"])
def test_one_rank_cached_run_trains_logs_and_exports(tiny_world, tiny_store, tmp_path, one_rank, tokens, monkeypatch):
    """Also from a cache v2 recompute store: the teacher's projector tokens and first-layer attention
    rebuilt inside the DeepSpeed-wrapped module from the student's tower, the teacher weights never
    trained, checkpointed or exported."""
    from transformers import AutoTokenizer

    from pipeline.models import MobileVLM
    from student_train.recipe import StudentTrainRecipe

    wf = tiny_world.workflow()
    if tokens == "recompute":
        wf = with_overrides(wf, {"cache.dir": str(tmp_path / "cache")})
        tiny_world.write_store(wf, projector_tokens="recompute", attention="recompute")
    path = write_workflow(wf, tmp_path / "wf.yaml", save_every=1, keep_checkpoints=1)
    out = tmp_path / "run"
    calls = count_calls(monkeypatch)
    run = stage_run(path, out, init=wf.models.student, max_steps=2)
    resolved = dict(calls)  # the store checked once, in the launching process
    assert resolved == {"check_store": 1, "check_token_hashes": 1, "tower_fingerprint": int(tokens == "recompute")}
    r = StudentTrainRecipe(StudentRun.read(run.write()))  # what every rank does
    r.setup()
    try:
        assert r.plan.grad_accum == 2 and r.total_steps == 2
        assert r.vision_source == tokens
        mod = r.engine.module
        assert (mod.teacher_tokens is not None) == (mod.teacher_attention is not None) == (tokens == "recompute")
        assert not any("teacher_tokens" in n or "proj.mlp" in n for n, _ in mod.named_parameters())
        before = {"adapters": snapshot(mod.criterion.adapters), "projector": snapshot(mod.student.model.mm_projector),
                  "tower": snapshot(vision_tower_of(mod.student)), "llm": snapshot(mod.student.model.layers)}
        r.train()
        assert not vision_tower_of(mod.student).training  # frozen tower stays in eval mode under engine.train()
        after = {"adapters": snapshot(mod.criterion.adapters), "projector": snapshot(mod.student.model.mm_projector),
                 "tower": snapshot(vision_tower_of(mod.student)), "llm": snapshot(mod.student.model.layers)}
        final_student = {k: v.detach().clone() for k, v in mod.student.state_dict().items()}
    finally:
        r.cleanup()
    assert calls == resolved  # the rank checked nothing again: no provenance, token ids or tower hash
    for part in ("adapters", "projector", "llm"):  # adapters are in the optimiser: they train
        assert all(not torch.equal(before[part][n], after[part][n]) for n in before[part]), part
    assert all(torch.equal(before["tower"][n], after["tower"][n]) for n in before["tower"])

    rows = read_metrics(out / "finetune" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        for k in ("loss", "sup", "rkl", "attn", "focus", "all_tokens", "tokens_per_s", "samples_per_s", "peak_mem_mb"):
            assert math.isfinite(row[k]) and row[k] >= 0, k
        assert row["samples"] == 4
        assert math.isclose(row["lr/projector"] / row["lr/llm"], 5e-3 / 2e-3)  # own LRs, one schedule
    ckpts = out / "finetune" / "checkpoints"  # saved at steps 1 and 2, keep_checkpoints 1: step1 pruned
    assert (ckpts / "latest").read_text() == "step2" and (ckpts / "step2").is_dir() and not (ckpts / "step1").exists()

    final = out / "finetune" / "final"
    m = MobileVLM.from_pretrained(final)  # strict keys: no adapter / criterion key slipped in
    from safetensors import safe_open
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "adapter" in k or "criterion" in k]
    for k, v in m.state_dict().items():  # the export is the trained student, exactly (fp32 run)
        assert torch.equal(v, final_student[k].float()), k
    tok = AutoTokenizer.from_pretrained(final)
    row = tiny_world.manifest_rows()[0]
    from PIL import Image

    from pipeline.models import preprocess_image
    ids = torch.tensor([row["input_ids"][:12]])
    px = preprocess_image(Image.open(row["image_path"]), m.config, image_size=m.image_size)[None] if row["image_path"] else None
    gen = m.generate(input_ids=ids, images=px, attention_mask=torch.ones_like(ids), max_new_tokens=4)
    assert gen.shape[0] == 1 and 1 <= gen.shape[1] <= 4 and tok.decode(gen[0]) is not None
    MobileVLM.from_pretrained(out)  # <out> itself holds the last exported stage


def test_one_launch_runs_both_stages_and_frees_the_first_before_the_second(tiny_world, tmp_path, one_rank, monkeypatch):
    """A rank of `--stage all` (student_train.launch.main with both run files): pre-training, then
    fine-tuning in the same process from its export, whose pending tower comparison rank 0
    completes; the first stage's engine and student are gone before the second builds its own."""
    import gc
    import weakref

    from student_train import launch
    from student_train.recipe import StudentTrainRecipe
    from student_train.run import PENDING, resolve_runs

    wf = with_overrides(tiny_world.workflow(), {"cache.dir": str(tmp_path / "cache")})
    tiny_world.write_store(wf, projector_tokens="recompute", attention="recompute")
    path = write_workflow(wf, tmp_path / "wf.yaml", save_every=0)
    out = tmp_path / "o"
    _, (pre, fine) = resolve_runs(load_workflow(path), "short", ["pretrain", "finetune"], out=str(out), max_steps=2)
    assert fine.store.vision_source == PENDING
    pre.write(), fine.write()  # as the CLI writes them: the first complete, the second pending

    alive: list[weakref.ref] = []
    seen_alive: list[int] = []
    setup, cleanup = StudentTrainRecipe.setup, StudentTrainRecipe.cleanup

    def counted_setup(self):
        gc.collect()
        seen_alive.append(sum(r() is not None for r in alive))  # earlier stages' engines still reachable
        setup(self)

    def counted_cleanup(self, **kw):
        alive.extend([weakref.ref(self.engine), weakref.ref(self.module.student)])
        cleanup(self, **kw)

    monkeypatch.setattr(StudentTrainRecipe, "setup", counted_setup)
    monkeypatch.setattr(StudentTrainRecipe, "cleanup", counted_cleanup)
    launch.main(["--run", str(pre.path), "--run", str(fine.path)])
    assert seen_alive == [0, 0]
    for st in ("pretrain", "finetune"):
        assert (out / st / "final" / "config.json").is_file() and len(read_metrics(out / st / "metrics.jsonl")) == 2
    assert StudentRun.read(fine.path).store.vision_source == "recompute"  # completed by rank 0 after pre-training
    pids = {json.loads((out / st / "run.json").read_text())["pid"] for st in ("pretrain", "finetune")}
    assert pids == {os.getpid()}
    assert (out / "pretrain" / "adapters.pt").is_file()  # what fine-tuning's adapters started from


def test_nonfinite_loss_stops_naming_the_samples(tiny_world, tmp_path, one_rank):
    from pipeline.models import MobileVLM
    from student_train.recipe import NonFiniteTrainingError, StudentTrainRecipe

    wf = tiny_world.workflow()
    bad = MobileVLM.from_pretrained(wf.models.student)
    with torch.no_grad():
        bad.lm_head.weight[0, 0] = float("nan")
    bad.save_pretrained(tmp_path / "nan_init")
    path = write_workflow(wf, tmp_path / "wf.yaml")
    r = StudentTrainRecipe(stage_run(path, tmp_path / "run", mode="sft", init=str(tmp_path / "nan_init"), max_steps=1))
    try:
        r.setup()
        with pytest.raises(NonFiniteTrainingError, match=r"term 'sup'.*samples \[") as e:
            r.train()
    finally:
        r.cleanup()
    ids = {row["sample_id"] for row in tiny_world.manifest_rows()}
    assert any(s in str(e.value) for s in ids)


def test_sft_mode_refuses_a_teacher_preset(tiny_world, tmp_path):
    from student_train.recipe import StudentTrainRecipe

    path = write_workflow(tiny_world.workflow(), tmp_path / "wf.yaml")
    with pytest.raises(ValueError, match="--mode sft trains without a teacher"):  # resolved: refused before launch
        stage_run(path, tmp_path / "o", mode="sft", preset="alignkd")
    run = stage_run(path, tmp_path / "o", mode="sft")
    bad = dataclasses.replace(run, wf=with_overrides(run.wf, {"train.loss.preset": "alignkd"}))
    with pytest.raises(ValueError, match="--mode sft trains without a teacher"):  # and by a rank, from a run file
        StudentTrainRecipe(bad)


# ------------------------------------------------------------------------------------- CLI
def _cli(args: list[str]):
    import typer

    from student_train.cli import student_train

    app = typer.Typer()
    app.command()(student_train)
    return CliRunner().invoke(app, args)


def test_cli_dry_run_prints_the_launch(tiny_world, tiny_store, tmp_path):
    path = write_workflow(tiny_world.workflow(), tmp_path / "wf.yaml")
    res = _cli(["--workflow", str(path), "--stage", "all", "--num-procs", "2", "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.count("--module student_train.launch") == 2 and "--num_gpus 2" in res.output
    assert f"init      {tmp_path / 'o' / 'pretrain' / 'final'} (pre-training's export" in res.output  # fine-tuning
    # one launch for both stages, in order: the ranks run pre-training, then fine-tuning from its export
    runs = " ".join(f"--run {tmp_path / 'o' / st / 'student_run.json'}" for st in ("pretrain", "finetune"))
    assert res.output.count(f"--module student_train.launch {runs}") == 2  # shown under each stage
    assert '"gradient_accumulation_steps": 1' in res.output
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_mismatching_store_before_launching(tiny_world, tiny_store, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"cache.logits_topk": 7})  # the store was dumped with another top-k
    path = write_workflow(wf, tmp_path / "wf.yaml")
    res = _cli(["--workflow", str(path), "--stage", "finetune", "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 1 and "logits_topk" in res.output and "Traceback" not in res.output


def test_cli_refuses_a_store_dumped_from_other_tokens(tiny_world, tmp_path):
    wf = tiny_world.workflow()
    wf = with_overrides(wf, {"cache.dir": str(tmp_path / "cache")})
    sid = next(r["sample_id"] for r in tiny_world.manifest_rows() if r["stage"] == "finetune")
    tiny_world.write_store(wf, token_hash_override={sid: "0" * 16})
    path = write_workflow(wf, tmp_path / "wf.yaml")
    res = _cli(["--workflow", str(path), "--stage", "finetune", "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 1 and "other token ids" in res.output and sid in res.output


def test_a_stage_after_another_has_its_tower_compared_once_before_its_launch(tiny_world, tmp_path, monkeypatch):
    """--stage all on a recompute store: fine-tuning starts from pre-training's export, which does
    not exist when the command is resolved; its tower is hashed once, by `complete`, just before
    its launch (never on the ranks)."""
    from student_train.run import PENDING, complete, resolve_runs

    wf = with_overrides(tiny_world.workflow(), {"cache.dir": str(tmp_path / "cache")})
    tiny_world.write_store(wf, projector_tokens="recompute", attention="recompute")
    out = tmp_path / "o"
    calls = count_calls(monkeypatch)
    _, (pre, fine) = resolve_runs(load_workflow(write_workflow(wf, tmp_path / "wf.yaml")), "short",
                                  ["pretrain", "finetune"], out=str(out))
    assert (pre.init, fine.init) == (wf.models.student, str(out / "pretrain" / "final"))
    assert pre.store.vision_source == "recompute" and fine.store.vision_source == PENDING
    assert fine.wf.models.student == fine.init
    for r in (pre, fine):  # counted from the id columns as the loader counts its rows
        assert r.num_samples == sum(row["stage"] == r.stage for row in tiny_world.manifest_rows()) > 0
    assert calls == {"check_store": 1, "check_token_hashes": 2, "tower_fingerprint": 1}  # provenance once
    shutil.copytree(wf.models.student, out / "pretrain" / "final")  # pre-training's export (its tower is the init's)
    assert complete(fine).store.vision_source == "recompute" and calls["tower_fingerprint"] == 2
    assert complete(pre) is pre and calls["tower_fingerprint"] == 2  # nothing left to resolve


# ----------------------------------------------------------- two ranks through the launcher
def _alignkd(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("alignkd")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([str(exe), "student-train", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_two_rank_zero2_launch_and_bit_exact_resume(tiny_world, tiny_store, tmp_path):
    """`alignkd student-train` → `deepspeed --num_gpus 2` → 2 CPU ranks (gloo), ZeRO-2 partitions
    of the optimiser; a resume from the step-2 checkpoint replays steps 3–4 exactly."""
    from pipeline.models import MobileVLM

    wf = tiny_world.workflow()
    # micro 1 × 2 ranks × accumulation 2 = 4 samples per step; a DataLoader worker per rank
    path = write_workflow(wf, tmp_path / "wf.yaml", save_every=2, num_workers=1,
                          finetune={"micro_batch": 1, "global_batch": 4})
    full = tmp_path / "full"
    common = ["--workflow", str(path), "--subset", "short", "--stage", "finetune", "--num-procs", "2", "--max-steps", "4"]
    shm = Path("/dev/shm")
    buffers = lambda: {f.name for f in shm.glob("deepspeed_allreduce_buffer_*")} if shm.is_dir() else set()
    before = buffers()
    p = _alignkd(*common, "--out", str(full))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    assert buffers() <= before  # the launch removed the shared-memory buffers its ranks left
    run = json.loads((full / "finetune" / "run.json").read_text())
    resolved = StudentRun.read(full / "finetune" / "student_run.json")  # what both ranks read
    assert run["run_file"] == str(resolved.path) and run["num_samples"] == resolved.num_samples
    assert resolved.wf.train.finetune.max_steps == 4 and run["total_steps"] == 4 and not resolved.resume
    assert run["plan"] == {"global_batch": 4, "micro_batch": 1, "world_size": 2, "grad_accum": 2}
    ck = full / "finetune" / "checkpoints" / "step4"
    assert sorted(f.name for f in ck.glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    ref = read_metrics(full / "finetune" / "metrics.jsonl")
    assert [r["step"] for r in ref] == [1, 2, 3, 4]

    # "interrupt" after step 2: a copy of the run whose newest checkpoint is step 2
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "finetune" / "checkpoints" / "step4")
    shutil.rmtree(cut / "finetune" / "final")
    (cut / "finetune" / "checkpoints" / "latest").write_text("step2")
    # mark the interrupted run's rows 1-2: a resume keeps them, a silent restart from step 0 rewrites
    # them (the replayed values alone could not tell the two apart: the run is deterministic)
    mpath = cut / "finetune" / "metrics.jsonl"
    mpath.write_text("".join(json.dumps({**r, "interrupted_run": True}) + "\n" for r in ref[:2]))
    p = _alignkd(*common, "--out", str(cut), "--resume")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    assert StudentRun.read(cut / "finetune" / "student_run.json").resume  # resolved again for this launch
    got = read_metrics(mpath)
    assert [r.get("interrupted_run", False) for r in got] == [True, True, False, False], "resume restarted from step 0"
    keys = ("step", "loss", "sup", "rkl", "attn", "focus", "all_tokens", "grad_norm", "lr/llm", "lr/projector")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]  # bit for bit
    a, b = MobileVLM.from_pretrained(full / "finetune" / "final"), MobileVLM.from_pretrained(cut / "finetune" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
