"""A small generated toy world on disk: determinism, idempotency, LLaVA format, answers against
the scene ground truth, Short/Long fitting, the tokenizer through AutoTokenizer, and the model
inits through MobileVLM.from_pretrained."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.templates import encode_conversation
from pipeline.workflow import DataConfig, ModelsConfig, Workflow, WorldConfig
from tests.toy_world.test_toy_tasks import oracle
from toy_world import WORLD_JSON, WorldError, build_world, existing_state
from toy_world.generate import WorldSpec

SMALL = dict(n_images=24, n_eval_images=8, n_pretrain=24, n_finetune=80, n_eval=21, tokenizer_vocab=300, long_fraction=0.15,
             tower_steps=0)  # a random tower: these tests check the generator, not the tower (test_toy_tower.py)


def small_workflow(seed: int = 0, **over) -> Workflow:
    return Workflow(
        world=WorldConfig(seed=seed, **{**SMALL, **over}),
        data=DataConfig(subsets={"short": 160, "long": 320}),
        models=ModelsConfig(num_vision_tokens=64),
    )


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "world"
    build_world(small_workflow(), out)
    return out


def load(world: Path, name: str) -> list[dict]:
    return json.loads((world / "data" / f"{name}.json").read_text())


def test_same_seed_same_bytes(world, tmp_path):
    again = tmp_path / "again"
    build_world(small_workflow(), again)
    assert hashes(again) == hashes(world)  # images, JSON, tokenizer, safetensors: byte for byte


def test_rerun_is_a_no_op_repairs_damage_and_a_different_world_needs_force(world, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in world.rglob("*")}
    meta = build_world(small_workflow(), world)
    assert meta["up_to_date"] and {p: p.stat().st_mtime_ns for p in world.rglob("*")} == before
    out = tmp_path / "w"
    shutil.copytree(world, out)
    with pytest.raises(WorldError, match="--force"):
        build_world(small_workflow(seed=5), out)
    (out / "data" / "eval.json").write_text("[]")  # damaged: same spec, rebuilt without --force
    assert existing_state(out, WorldSpec.from_workflow(small_workflow())) == "damaged"
    build_world(small_workflow(), out)
    assert hashes(out) == hashes(world)
    build_world(small_workflow(seed=5), out, force=True)  # another seed, another world
    h0, h5 = hashes(world), hashes(out)
    assert json.loads((out / WORLD_JSON).read_text())["spec"]["seed"] == 5
    assert h0["data/finetune.json"] != h5["data/finetune.json"]
    assert h0["images/train_00000.png"] != h5["images/train_00000.png"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(WorldError, match="not a toy world"):
        build_world(small_workflow(), foreign)


def test_data_is_valid_llava_format(world):
    images = {p.name for p in (world / "images").iterdir()}
    for name in ("pretrain", "finetune", "eval"):
        recs = load(world, name)
        assert len({r["id"] for r in recs}) == len(recs)
        for r in recs:
            conv = r["conversations"]
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and conv
            n_img = sum(t["value"].count("<image>") for t in conv)
            assert n_img == (1 if "image" in r else 0)
            assert all("<image>" not in t["value"] for t in conv if t["from"] == "gpt")
            if "image" in r:
                assert r["image"] in images
    assert all(r["conversations"][0]["value"] == "<image>" for r in load(world, "pretrain"))
    ft = load(world, "finetune")
    assert any("image" not in r for r in ft)  # text-only samples
    assert any(len(r["conversations"]) >= 4 for r in ft)  # multi-turn
    assert any("<image>" in r["conversations"][2]["value"] for r in ft if len(r["conversations"]) > 2)


def test_eval_is_held_out_and_answers_match_the_scenes(world):
    scenes = json.loads((world / "scenes.json").read_text())
    ev, ft, pt = load(world, "eval"), load(world, "finetune"), load(world, "pretrain")
    train_images = {r["image"] for r in ft + pt if "image" in r}
    assert not train_images & {r["image"] for r in ev}
    assert {r["task"] for r in ev} == {"colour", "shape", "count", "position", "exist", "size", "compare"}
    assert len({(r["image"], r["conversations"][0]["value"]) for r in ev}) == len(ev)  # no repeats
    for r in ev:
        assert r["conversations"][1]["value"] == r["answer"] and " " not in r["answer"]
        assert oracle(r["conversations"][0]["value"].removeprefix("<image>\n"), scenes[r["image"]]) == r["answer"]
    n = 0
    for r in ft:  # every one-word image answer in fine-tuning, too
        for h, g in zip(r["conversations"][0::2], r["conversations"][1::2]):
            want = oracle(h["value"].replace("<image>\n", ""), scenes[r["image"]]) if "image" in r else None
            if want is not None and h["value"].endswith("Answer with one word."):
                assert want == g["value"], (r["id"], h["value"])
                n += 1
    assert n > 40


def test_tokenizer_round_trip_through_autotokenizer(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    assert len(tok) == SMALL["tokenizer_vocab"]
    assert (tok.unk_token_id, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 0, 1, 2)
    for r in load(world, "finetune")[:30] + load(world, "eval"):  # eval text was not trained on
        for t in r["conversations"]:
            text = t["value"].replace("<image>\n", "")
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert 0 not in ids and tok.decode(ids) == text  # no <unk> in the world's own text
    assert tok("yes")["input_ids"][0] == 1  # <s> first, like LLaMA


def test_short_long_membership_as_the_manifest_will_measure_it(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    lens = []
    for r in load(world, "finetune"):  # the real encoder, not the generator's segment cache
        enc = encode_conversation(r["conversations"], "v1", tok, has_image="image" in r)
        lens.append(len(enc.input_ids) + (63 if "image" in r else 0))
    long_only = sum(160 < n <= 320 for n in lens)
    stats = json.loads((world / WORLD_JSON).read_text())["stats"]["lengths"]["finetune"]
    assert long_only == stats["long_only"] and max(lens) == stats["max"]
    assert round(0.15 * SMALL["n_finetune"]) * 0.8 <= long_only <= round(0.15 * SMALL["n_finetune"])
    assert max(lens) <= 320


def test_model_inits_load_and_share_the_vision_tower(world):
    from PIL import Image
    from transformers import AutoTokenizer

    from pipeline.models import MobileVLM, preprocess_image
    from pipeline.models.checkpoint import read_state_dict

    t = MobileVLM.from_pretrained(world / "teacher_init", dtype=torch.float32)
    s = MobileVLM.from_pretrained(world / "student_init", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(world / "teacher_init"))  # the tokenizer travels along
    shape = lambda m: (m.config.num_hidden_layers, m.config.hidden_size, m.config.num_attention_heads)
    assert shape(t) == (4, 256, 8) and shape(s) == (2, 128, 4)
    assert t.config.vocab_size == s.config.vocab_size == len(tok)
    assert t.num_vision_tokens == s.num_vision_tokens == 64
    # the weights on disk, under the released key names: one frozen CLIP tower for both
    tv, sv = ({k: v for k, v in read_state_dict(world / d).items() if ".vision_tower." in k}
              for d in ("teacher_init", "student_init"))
    assert tv and tv.keys() == sv.keys() and all(torch.equal(tv[k], sv[k]) for k in tv)
    assert (world / "teacher_init/vision_tower/config.json").read_bytes() == (world / "vision_tower/config.json").read_bytes()
    assert (world / "student_init/vision_tower/config.json").read_bytes() == (world / "vision_tower/config.json").read_bytes()
    r = load(world, "eval")[0]
    enc = encode_conversation(r["conversations"], "v1", tok, has_image=True)
    px = preprocess_image(Image.open(world / "images" / r["image"]).convert("RGB"), s.config)[None]
    ids = torch.tensor([enc.input_ids])
    out = s(input_ids=ids, images=px, attention_mask=torch.ones_like(ids))
    assert out.logits.shape == (1, len(enc.input_ids) + 63, len(tok))


def test_cli_writes_prints_and_refuses(tmp_path):
    from alignkd.cli import app

    wf = tmp_path / "wf.yaml"
    body = "world:\n  dir: {d}\n  seed: {s}\n" + "".join(f"  {k}: {v}\n" for k, v in SMALL.items())
    body += "data:\n  subsets: {{short: 160, long: 320}}\nmodels:\n  num_vision_tokens: 64\n"
    wf.write_text(body.format(d=tmp_path / "w", s=0))
    runner = CliRunner()
    res = runner.invoke(app, ["toy", "world", "--workflow", str(wf)])
    assert res.exit_code == 0, res.output
    assert "finetune turns per task" in res.output and "next: alignkd data build" in res.output
    assert (tmp_path / "w" / "data" / "eval.json").is_file()
    assert "up to date" in runner.invoke(app, ["toy", "world", "--workflow", str(wf)]).output
    wf.write_text(body.format(d=tmp_path / "w", s=1))
    res = runner.invoke(app, ["toy", "world", "--workflow", str(wf)])
    assert res.exit_code == 1 and "--force" in res.output


def test_eval_descriptions_one_per_held_out_image_in_the_v1_describe_form(world):
    scenes = json.loads((world / "scenes.json").read_text())
    ev, desc = load(world, "eval"), load(world, "eval_captions")
    held = sorted(k for k in scenes if k.startswith("eval_"))
    assert [r["image"] for r in desc] == held  # every held-out image once, none from training
    assert {r["image"] for r in ev} <= set(held)
    for r in desc:
        human, answer = (c["value"] for c in r["conversations"])
        assert human.startswith("<image>\n") and "descri" in human.lower()
        for o in scenes[r["image"]]["objects"]:  # the answer names every object, fully grounded
            assert o["colour"] in answer and o["shape"] in answer and o["size"] in answer


@pytest.mark.parametrize("tokens", [16, 36])
def test_the_projector_grid_follows_models_num_vision_tokens(tmp_path, tokens):
    from pipeline.models.config import load_config, projector_grid

    small = dict(SMALL, n_images=6, n_pretrain=6, n_finetune=20, n_eval=7, n_eval_images=4)
    wf = Workflow(world=WorldConfig(**small), data=DataConfig(subsets={"short": 160, "long": 320}),
                  models=ModelsConfig(num_vision_tokens=tokens))
    build_world(wf, tmp_path / "w")
    for k in ("teacher_init", "student_init"):
        assert projector_grid(load_config(tmp_path / "w" / k)) ** 2 == tokens


def test_a_token_count_the_projector_cannot_pool_to_is_refused(tmp_path):
    wf = Workflow(world=WorldConfig(**SMALL), data=DataConfig(subsets={"short": 160, "long": 320}),
                  models=ModelsConfig(num_vision_tokens=20))
    with pytest.raises(WorldError, match="num_vision_tokens=20"):
        build_world(wf, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_multi_turn_packing_follows_the_world_config(tmp_path):
    """world.multi_fraction / multi_turns (workflows/toy.yaml): more records are multi-turn
    and they carry more one-word questions about their image, each within the short limit."""
    from toy_world.records import one_word_pairs

    def finetune(name: str, **over) -> tuple[dict, list[dict]]:
        wf = Workflow(world=WorldConfig(**{**SMALL, "n_finetune": 120, **over}),
                      data=DataConfig(subsets={"short": 160, "long": 352}), models=ModelsConfig(num_vision_tokens=16))
        meta = build_world(wf, tmp_path / name)
        return meta, json.loads((tmp_path / name / "data" / "finetune.json").read_text())

    base_meta, base = finetune("base")
    packed_meta, packed = finetune("packed", multi_fraction=0.75, multi_turns=8)
    assert base_meta["stats"]["finetune_kinds"]["multi"] == round(0.40 * 120)
    assert packed_meta["stats"]["finetune_kinds"]["multi"] == round(0.75 * 120)
    assert len(one_word_pairs(packed)) > 1.5 * len(one_word_pairs(base))
    assert packed_meta["stats"]["lengths"]["finetune"]["short"] == base_meta["stats"]["lengths"]["finetune"]["short"]


@pytest.mark.parametrize("over, message", [
    ({"multi_fraction": 0.97}, "world.multi_fraction=0.97"),
    ({"multi_fraction": 0.9, "long_fraction": 0.15}, "world.long_fraction=0.15"),
    ({"multi_turns": 1}, "world.multi_turns=1"),
])
def test_packing_settings_out_of_range_are_refused(tmp_path, over, message):
    wf = Workflow(world=WorldConfig(**{**SMALL, **over}), data=DataConfig(subsets={"short": 160, "long": 320}))
    with pytest.raises(WorldError, match=message):
        build_world(wf, tmp_path / "w")
    assert not (tmp_path / "w").exists()
