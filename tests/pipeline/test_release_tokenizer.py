"""A tokenizer as the MobileVLM V2 releases ship it (tokenizer.model, tokenizer_config.json,
special_tokens_map.json, no tokenizer.json): it loads, the manifest built with it equals MobileVLM's
own preprocessing done on SentencePiece directly, a missing sentencepiece is named as such, and
its vocabulary has one fingerprint and one size in either file format."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.data.manifest import build_manifest
from pipeline.fingerprint import tokenizer_size, vocab_fingerprint
from pipeline.preflight import ModelInfo, check_vocab
from pipeline.tokenizer_load import TokenizerLoadError, load_tokenizer, tokenizer_dir_for
from pipeline.workflow import load_workflow
from tests.pipeline.data_fixtures import caption, qa, write_json, write_png, write_workflow
from tests.pipeline.release_tokenizer import SP_VOCAB, mobilevlm_encode, train_sentencepiece, write_release_tokenizer

spm = pytest.importorskip("sentencepiece")  # an alignkd dependency; the skip only shows a broken install

VOCAB = SP_VOCAB  # the session's `sp_model` (tests/conftest.py)
N_VISION = 16


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, sp_model) -> Path:
    return write_release_tokenizer(tmp_path_factory.mktemp("release"), sp_model)


@pytest.fixture(scope="module")
def json_dir(tmp_path_factory, release_dir) -> Path:
    """The same tokenizer converted and saved by transformers: tokenizer.json, no tokenizer.model."""
    out = tmp_path_factory.mktemp("converted")
    load_tokenizer(release_dir).save_pretrained(out)
    (out / "tokenizer.model").unlink(missing_ok=True)
    assert (out / "tokenizer.json").is_file()
    return out


def records() -> list[dict]:
    """v1 records of every shape (image in the first or a later turn, text only, multi-turn),
    with words the vocabulary has, words it spells letter by letter, and bytes outside it."""
    return [
        qa("one", "a.png", [("kalo mine rusa?", "Tovize quba.")]),
        qa("later", "a.png", [("What is it?", "It is red."), ("Describe it.", "kamilo ze, café naïve.")], image_turn=1),
        qa("text", None, [("Where is the kaba?", "At the top, 3.14 left.")]),
        qa("multi", "a.png", [("dofe gi?", "yes"), ("ho ho?", "no"), ("and now?", "Zebra 42!")]),
        # an answer that starts with spaces: SentencePiece still adds its dummy prefix (transformers
        # 5's LLaMA tokenizer would not, see pipeline.tokenizer_load)
        qa("spaces", "a.png", [("  kalo   mi  ", "  two  spaces inside  ")]),
    ]


@pytest.mark.parametrize("layout", ["release-legacy-false", "release-legacy-true", "tokenizer-json"])
def test_manifest_from_a_release_tokenizer_equals_mobilevlm_on_sentencepiece(tmp_path, sp_model, json_dir, layout):
    """Built from the release's three files (either `legacy` setting), or from the tokenizer.json
    transformers converts them to: the ids and labels MobileVLM computes with SentencePiece."""
    if layout == "tokenizer-json":
        tok_dir = json_dir
    else:
        tok_dir = write_release_tokenizer(tmp_path / "tok", sp_model, legacy=layout.endswith("true"))
        assert not (tok_dir / "tokenizer.json").exists()
    img = tmp_path / "img"
    write_png(img / "a.png")
    recs = records()
    caps = [caption("c0", "a.png", "kalo mine rusa tovize."), caption("c1", "a.png", "A café, two words.")]
    datasets = [
        {"name": "cap", "json": str(write_json(tmp_path / "cap.json", caps)), "image_root": str(img),
         "template": "plain", "stage": "pretrain"},
        {"name": "qa", "json": str(write_json(tmp_path / "qa.json", recs)), "image_root": str(img),
         "template": "v1", "stage": "finetune"},
    ]
    wf = load_workflow(write_workflow(tmp_path / "wf.yaml", datasets, tok_dir, tmp_path / "out",
                                      {"short": 4096}, N_VISION))
    build_manifest(wf, command="test", progress=False)
    rows = {r["sample_id"]: r for r in pq.read_table(wf.data.manifest).to_pylist()}
    assert len(rows) == len(recs) + len(caps), "a record was rejected"
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    for name, template, recs_ in (("cap", "plain", caps), ("qa", "v1", recs)):
        for r in recs_:
            want_ids, want_labels = mobilevlm_encode(sp, r["conversations"], template, "image" in r)
            row = rows[f"{name}/{r['id']}"]
            assert row["input_ids"] == want_ids, f"{name}/{r['id']}: ids differ from MobileVLM's"
            assert row["labels"] == want_labels, f"{name}/{r['id']}: labels differ from MobileVLM's"
    assert any(0 < x < 3 + 256 for r in rows.values() for x in r["input_ids"]), "byte fallback never exercised"


def test_a_missing_sentencepiece_is_named_with_the_directory(tmp_path, release_dir):
    """Without sentencepiece, transformers 5 says "`tiktoken` is required"; the build must name
    the package actually missing, and the directory."""
    img = tmp_path / "img"
    write_png(img / "a.png")
    ds = [{"name": "qa", "json": str(write_json(tmp_path / "qa.json", records()[:1])), "image_root": str(img),
           "template": "v1", "stage": "finetune"}]
    wf_path = write_workflow(tmp_path / "wf.yaml", ds, release_dir, tmp_path / "out", {"short": 4096}, N_VISION)
    script = (
        "import sys; sys.modules['sentencepiece'] = None\n"  # the package is absent, as on an install without it
        "from pipeline.data import ManifestError\n"
        "from pipeline.data.manifest import build_manifest\n"
        "from pipeline.workflow import load_workflow\n"
        f"try:\n    build_manifest(load_workflow({str(wf_path)!r}), command='t', progress=False)\n"
        "except ManifestError as e:\n    print(e)\nelse:\n    print('BUILT')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    msg = out.stdout.strip()
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sentencepiece" in msg and str(release_dir) in msg and "tiktoken" not in msg, msg
    assert "pip install 'sentencepiece>=0.2'" in msg, msg


def test_a_directory_without_a_vocabulary_is_named(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TokenizerLoadError, match=f"{tmp_path}: no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)


def test_one_vocabulary_in_either_format_has_one_fingerprint_and_size(release_dir, json_dir, tmp_path):
    assert vocab_fingerprint(release_dir) == vocab_fingerprint(json_dir)
    assert tokenizer_size(release_dir) == tokenizer_size(json_dir) == VOCAB
    # another vocabulary, or other ids for <s>/</s>, is another fingerprint
    other = write_release_tokenizer(tmp_path / "other", train_sentencepiece(VOCAB, seed=1))
    assert vocab_fingerprint(other) != vocab_fingerprint(release_dir)
    swapped = shutil.copytree(json_dir, tmp_path / "swapped")
    cfg = json.loads((swapped / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<unk>"
    (swapped / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_tokenizer(swapped).eos_token_id == 0
    assert vocab_fingerprint(swapped) != vocab_fingerprint(json_dir)


def _model(label: str, path: Path, vocab_size: int) -> ModelInfo:
    from pipeline.models import MobileVLMConfig

    return ModelInfo(label=label, path=path, config=MobileVLMConfig(vocab_size=vocab_size), params={},
                     weight_bytes=0, vision_tokens=N_VISION)


def test_the_vocabulary_check_takes_a_release_teacher_and_never_skips_the_size(release_dir, json_dir, tmp_path):
    teacher = shutil.copytree(release_dir, tmp_path / "teacher")  # a release: tokenizer.model only
    line, problems = check_vocab(json_dir, "data.tokenizer", [_model("models.teacher", teacher, VOCAB)])
    assert problems == [] and line.startswith("one vocabulary") and f"{VOCAB} tokens" in line, (line, problems)
    # a teacher whose embedding is smaller than the (release-format) tokenizer: refused
    _, problems = check_vocab(release_dir, "data.tokenizer", [_model("models.teacher", teacher, VOCAB - 10)])
    assert any(f"token ids up to {VOCAB - 1}" in p and "vocab_size 390" in p for p in problems), problems


def test_a_tokenizer_that_cannot_be_read_is_a_problem_not_a_skip(tmp_path, release_dir):
    broken = shutil.copytree(release_dir, tmp_path / "broken")
    (broken / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    _, problems = check_vocab(broken, "data.tokenizer", [_model("models.teacher", tmp_path / "none", VOCAB)])
    assert len(problems) == 1 and problems[0].startswith(f"data.tokenizer: {broken}/tokenizer.model: not a readable "
                                                         "SentencePiece model"), problems


def test_a_checkpoint_shipping_tokenizer_model_uses_its_own(release_dir, tmp_path):
    """eval / probe: the model's tokenizer in either format, the workflow's only without one."""
    assert tokenizer_dir_for(release_dir, tmp_path) == release_dir
    assert tokenizer_dir_for(tmp_path, release_dir) == release_dir


def test_a_tokenizer_json_the_library_cannot_parse_is_a_tokenizer_load_error(tmp_path):
    # the Rust tokenizers library raises a bare Exception for a structure it does not know (e.g. a
    # file written by a newer version): it must still be the one-line TokenizerLoadError
    from pipeline.tokenizer_load import TokenizerLoadError, load_tokenizer

    (tmp_path / "tokenizer.json").write_text(json.dumps({  # unk_token an int: the library raises Exception
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": 7}}))
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    with pytest.raises(TokenizerLoadError, match=f"{tmp_path}: cannot load the tokenizer"):
        load_tokenizer(tmp_path)
