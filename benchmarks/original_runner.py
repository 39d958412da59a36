"""Runs INSIDE the original MobileVLM environment (transformers 4.33.1, tokenizers 0.13.3), started
by benchmarks/original_compat.py from a directory that is neither the checkpoint's nor the repo's.
Imports nothing of alignkd: it loads a checkpoint exactly as MobileVLM's `load_pretrained_model`
(scripts/inference.py) does, and records what the original code computes.

    python original_runner.py SRC CHECKPOINT QUESTIONS.json OUT.pt MAX_NEW_TOKENS
"""

import json
import sys
import types

import torch
from PIL import Image


def _v1_deps_or_stand_ins() -> str:
    """mobilevlm/model/vision_projector.py imports timm's LayerNormAct2d and torchvision's
    SqueezeExcitation / InvertedResidual(Config), used only by the V1 `ldpnet` projector. No torchvision build matching a CPU
    torch is on PyPI here (its wheels link CUDA; timm needs torchvision), so where they do not
    import, stand-ins that refuse to be built are registered: an `ldpnetv2` checkpoint never
    builds them, a V1 one fails loudly."""
    try:
        # imported only to learn whether they import
        from timm.layers.norm_act import LayerNormAct2d  # noqa: F401
        from torchvision.models.mobilenetv3 import InvertedResidual  # noqa: F401
        from torchvision.ops.misc import SqueezeExcitation  # noqa: F401

        return "timm + torchvision"
    except Exception:  # noqa: BLE001 — ImportError, or a broken install (a torchvision built for another torch)
        def refuse(name):
            def __init__(self, *a, **k):
                raise RuntimeError(f"{name}: timm / torchvision are not installed (the V1 ldpnet projector needs them)")
            return type(name, (), {"__init__": __init__})

        wanted = {"timm.layers.norm_act": ("LayerNormAct2d",), "torchvision.ops.misc": ("SqueezeExcitation",),
                  "torchvision.models.mobilenetv3": ("InvertedResidual", "InvertedResidualConfig")}
        mods = {}
        for path, names in wanted.items():
            parts = path.split(".")
            for i in range(1, len(parts) + 1):
                mods.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
            for n in names:
                setattr(mods[path], n, refuse(n))
        sys.modules.update(mods)
        return "stand-ins (V1 projector only)"


def main(src: str, ckpt: str, questions: str, out: str, max_new: int) -> None:
    sys.path.insert(0, src)  # a checkout of Meituan-AutoML/MobileVLM
    # transformers first: it probes for timm / torchvision with importlib, which stand-ins fail
    from transformers import AutoTokenizer

    v1_deps = _v1_deps_or_stand_ins()

    from mobilevlm.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from mobilevlm.conversation import conv_templates
    from mobilevlm.model.mobilellama import MobileLlamaForCausalLM
    from mobilevlm.model.mobilevlm import load_pretrained_model
    from mobilevlm.utils import process_images, tokenizer_image_token

    # 1. the original loader itself, unchanged (its fp16 default; device_map None: no accelerate dispatch on CPU)
    load_pretrained_model(ckpt, device_map=None, device="cpu")
    # 2. the same steps in fp32, so that logits compare at fp32 precision
    tokenizer = AutoTokenizer.from_pretrained(ckpt, use_fast=False)
    model = MobileLlamaForCausalLM.from_pretrained(ckpt, low_cpu_mem_usage=True, torch_dtype=torch.float32).eval()
    if getattr(model.config, "mm_use_im_patch_token", True):
        tokenizer.add_tokens(["<im_patch>"], special_tokens=True)
    model.resize_token_embeddings(len(tokenizer))
    tower = model.get_vision_tower()
    tower.load_image_processor()
    rows = []
    for q in json.loads(open(questions).read()):
        conv = conv_templates["v1"].copy()
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + q["question"])
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        px = process_images([Image.open(q["image"]).convert("RGB")], tower.image_processor, model.config)
        with torch.inference_mode():
            logits = model(ids, images=px).logits[0]
            gen = model.generate(ids, images=px, do_sample=False, num_beams=1, max_new_tokens=max_new, use_cache=True)
        new = gen[0, ids.shape[1]:].tolist()
        rows.append({"prompt": prompt, "input_ids": ids[0], "pixel_values": px[0], "logits": logits, "new_ids": new,
                     "answer": tokenizer.decode(new, skip_special_tokens=True).strip()})
    torch.save({"rows": rows, "transformers": __import__("transformers").__version__,
                "tokenizers": __import__("tokenizers").__version__, "torch": torch.__version__,
                "tokenizer_class": type(tokenizer).__name__, "v1_deps": v1_deps}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
