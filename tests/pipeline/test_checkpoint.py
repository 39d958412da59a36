"""Checkpoint I/O in the original MobileVLM layout: round trips, released key names, strictness."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.models import CheckpointError, MobileVLM, ModelConfigError, load_config
from pipeline.models.checkpoint import read_state_dict
from toy_world.presets import toy_student_config, write_random_checkpoint

IDS = torch.tensor([[1, 5, -200, 7, 8, 9], [1, 3, 4, 0, 0, 0]])
AM = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])


def _logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        return model(input_ids=IDS, images=px.to(model.dtype), attention_mask=AM).logits


@pytest.mark.parametrize(
    "kw, files",
    [
        ({}, {"model.safetensors"}),
        ({"safe_serialization": False}, {"pytorch_model.bin"}),
        ({"max_shard_size": 400_000}, {"model.safetensors.index.json"}),
        ({"safe_serialization": False, "max_shard_size": "400KB"}, {"pytorch_model.bin.index.json"}),
    ],
    ids=["safetensors", "bin", "safetensors-sharded", "bin-sharded"],
)
def test_save_load_identical_logits(tiny_vlm, tmp_path, kw, files):
    tiny_vlm.save_pretrained(tmp_path / "ck", **kw)
    names = {p.name for p in (tmp_path / "ck").iterdir()}
    assert files <= names and "config.json" in names
    if "max_shard_size" in kw:
        assert sum(n.endswith((".safetensors", ".bin")) for n in names) > 1
    loaded = MobileVLM.from_pretrained(tmp_path / "ck")
    assert torch.equal(_logits(tiny_vlm), _logits(loaded))
    assert all(not p.requires_grad for p in loaded.vision_tower.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_round_trip(tiny_vlm, tmp_path, dtype):
    tiny_vlm.save_pretrained(tmp_path / "a", dtype=dtype)
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["dtype"] == str(dtype).split(".")[-1]
    m1 = MobileVLM.from_pretrained(tmp_path / "a", dtype=dtype)
    assert m1.dtype == dtype and m1.model.rotary_emb.inv_freq.dtype == torch.float32
    m1.save_pretrained(tmp_path / "b")  # keeps the model's dtype
    m2 = MobileVLM.from_pretrained(tmp_path / "b", dtype=dtype)
    assert torch.equal(_logits(m1), _logits(m2))
    # and close to the fp32 original (tolerance of the half format)
    assert torch.allclose(_logits(m1).float(), _logits(tiny_vlm), atol=0.05)
    up = MobileVLM.from_pretrained(tmp_path / "a", dtype="fp32")  # upcast on load
    assert up.dtype == torch.float32


def test_released_key_names(tiny_vlm, tmp_path):
    tiny_vlm.save_pretrained(tmp_path / "ck")
    keys = set(read_state_dict(tmp_path / "ck"))
    n_layers = tiny_vlm.config.num_hidden_layers
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.mm_projector.mlp.mlp.0.weight", "model.mm_projector.mlp.mlp.0.bias",
            "model.mm_projector.mlp.mlp.2.weight", "model.mm_projector.mlp.mlp.2.bias",
            "model.mm_projector.peg.peg.0.weight", "model.mm_projector.peg.peg.0.bias",
            "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight",
            "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "model.vision_tower.vision_tower.vision_model.post_layernorm.weight",
            f"model.layers.{n_layers - 1}.self_attn.q_proj.weight"} <= keys
    prefixes = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.", "model.mm_projector.mlp.mlp.",
                "model.mm_projector.peg.peg.0.", "model.vision_tower.vision_tower.vision_model.")
    assert all(k.startswith(prefixes) for k in keys), sorted(k for k in keys if not k.startswith(prefixes))
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["model_type"] == "mobilevlm" and cfg["architectures"] == ["MobileLlamaForCausalLM"]
    assert cfg["mm_projector_type"] == "ldpnetv2" and cfg["mm_vision_select_layer"] == -2
    # a complete tower dir inside the checkpoint, named by absolute path (the original code resolves it against the cwd)
    assert cfg["mm_vision_tower"] == str((tmp_path / "ck" / "vision_tower").resolve())
    assert (tmp_path / "ck" / "vision_tower" / "config.json").is_file()


def _rewrite(ck, fn):
    f = ck / "model.safetensors"
    with safe_open(str(f), "pt") as h:
        sd = {k: h.get_tensor(k) for k in h.keys()}
    save_file(fn(sd), str(f))


def test_legacy_buffers_and_unprefixed_tower_keys_load(tiny_vlm, tmp_path):
    """Older checkpoints carry rotary inv_freq / CLIP position_ids buffers; transformers >= 5 writers
    may drop CLIP's `vision_model.` level: both load."""
    ck = tmp_path / "ck"
    tiny_vlm.save_pretrained(ck)

    def legacy(sd):
        sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(16)
        sd["model.vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(257)[None]
        return {k.replace("vision_tower.vision_model.", "vision_tower.") if "encoder" in k else k: v
                for k, v in sd.items()}

    _rewrite(ck, legacy)
    assert torch.equal(_logits(MobileVLM.from_pretrained(ck)), _logits(tiny_vlm))


def test_missing_and_unexpected_keys_are_listed(tiny_vlm, tmp_path):
    ck = tmp_path / "ck"
    tiny_vlm.save_pretrained(ck)

    def corrupt(sd):
        del sd["model.mm_projector.peg.peg.0.bias"]
        sd["model.mm_projector.extra.weight"] = torch.zeros(2)
        return sd

    _rewrite(ck, corrupt)
    with pytest.raises(CheckpointError) as err:
        MobileVLM.from_pretrained(ck)
    msg = str(err.value)
    assert "model.mm_projector.peg.peg.0.bias" in msg and "model.mm_projector.extra.weight" in msg
    assert "missing" in msg and "unexpected" in msg and str(ck) in msg


def test_shape_mismatch_and_missing_files(tiny_vlm, tmp_path):
    ck = tmp_path / "ck"
    tiny_vlm.save_pretrained(ck)
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 300}))
    with pytest.raises(CheckpointError, match="does not fit"):
        MobileVLM.from_pretrained(ck)
    (ck / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        MobileVLM.from_pretrained(ck)


def test_unknown_vision_tower_is_a_clear_error(toy_vision_dir, tmp_path):
    cfg = toy_student_config(100, toy_vision_dir)
    cfg.mm_vision_tower = "laion/some-other-clip"
    with pytest.raises(ModelConfigError) as err:
        MobileVLM(cfg)
    msg = str(err.value)
    assert "laion/some-other-clip" in msg and "openai/clip-vit-large-patch14-336" in msg and "local directory" in msg


def test_config_validation_lists_problems(toy_vision_dir):
    cfg = toy_student_config(100, toy_vision_dir)
    cfg.mm_projector_type, cfg.mm_use_im_start_end = "mlp2x_gelu", True
    with pytest.raises(ModelConfigError, match="mm_projector_type.*mm_use_im_start_end"):
        MobileVLM(cfg)


def test_relative_tower_resolves_against_checkpoint_and_shared_tower(toy_vision_dir, tmp_path):
    t = write_random_checkpoint(tmp_path / "teacher", toy_student_config(100, toy_vision_dir), seed=0)
    s = write_random_checkpoint(tmp_path / "student", toy_student_config(100, toy_vision_dir), seed=1,
                                vision_tower_from=t)
    assert load_config(s).mm_vision_tower == "vision_tower"  # random inits: relative, location-independent bytes
    ts, ss = read_state_dict(t), read_state_dict(s)
    tower = [k for k in ts if ".vision_model." in k]
    assert tower and all(torch.equal(ts[k], ss[k]) for k in tower)
    assert not torch.equal(ts["model.layers.0.mlp.up_proj.weight"], ss["model.layers.0.mlp.up_proj.weight"])
    # the same seed gives the same weights
    t2 = write_random_checkpoint(tmp_path / "teacher2", toy_student_config(100, toy_vision_dir), seed=0)
    assert all(torch.equal(v, read_state_dict(t2)[k]) for k, v in ts.items())


def test_half_cast_keeps_rope_in_fp32(tiny_vlm):
    inv = tiny_vlm.model.rotary_emb.inv_freq.clone()
    tiny_vlm.to(torch.bfloat16)
    assert tiny_vlm.dtype == torch.bfloat16 and tiny_vlm.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(tiny_vlm.model.rotary_emb.inv_freq, inv)
