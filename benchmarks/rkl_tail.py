"""Sparse vs dense reverse KL on a *trained* teacher: which top-k and tail model to cache.

    .venv/bin/python -m benchmarks.rkl_tail --teacher runs/toy/teacher --student runs/toy/world/student_init \
        --world runs/toy/world --records 64

Runs the teacher and the student over held-out fine-tuning-style records (the world's eval
questions with their answers, template v1), takes both models' logits at the answer positions, and
for each k and tail model compares the cached form (`pipeline.targets.sparse_topk` +
`reverse_kl_sparse`) with the dense reverse KL: relative loss error and the angle between the two
gradients w.r.t. the student logits (`student_train.losses.fidelity.rkl_gradient_angle`), mean and
max over positions' batches. `benchmarks/fidelity.py` does the same on a synthetic LM-like teacher;
on a trained teacher the ranking of the tail models differs (docs/DESIGN.md §4), which is why this exists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pipeline.constants import IGNORE_INDEX
from pipeline.targets import sparse_topk
from student_train.losses import reverse_kl_dense, reverse_kl_sparse

TAILS = ("bucket", "uniform")


def _answer_logits(model, tok, records, root: Path, image) -> torch.Tensor:
    from evaluation.heldout import pad_encoded
    from pipeline.templates import encode_conversation

    enc = [encode_conversation(r["conversations"], "v1", tok, True) for r in records]
    ids, lab, am = pad_encoded(enc)
    imgs = torch.stack([image(r["image"]) for r in records])
    with torch.no_grad():
        out = model(input_ids=ids, images=imgs, attention_mask=am, labels=lab)
    resp = out.labels[:, 1:] != IGNORE_INDEX
    return out.logits[:, :-1][resp].float()  # [N, vocab]


def _grad(fn, s: torch.Tensor) -> torch.Tensor:
    x = s.clone().requires_grad_(True)
    fn(x).backward()
    return x.grad.flatten()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rkl_tail", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True, help="a student checkpoint (e.g. the init, or a trained one)")
    ap.add_argument("--world", required=True)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--ks", default="16,32,64,128")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from PIL import Image
    from transformers import AutoTokenizer

    from pipeline.models import MobileVLM, preprocess_image

    world = Path(a.world)
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    teacher, student = MobileVLM.from_pretrained(a.teacher), MobileVLM.from_pretrained(a.student)
    records = json.loads((world / "data" / "eval.json").read_text())[: a.records]

    def image(rel: str) -> torch.Tensor:
        with Image.open(world / "images" / rel) as im:
            return preprocess_image(im.convert("RGB"), teacher.config)

    t, s = _answer_logits(teacher, tok, records, world, image), _answer_logits(student, tok, records, world, image)
    dense = reverse_kl_dense(s, t).item()
    g_dense = _grad(lambda x: reverse_kl_dense(x, t), s)
    res = {"positions": int(t.shape[0]), "dense_rkl": dense, "rows": []}
    print(f"{t.shape[0]} answer positions; dense reverse KL {dense:.4f}")
    for k in (int(x) for x in a.ks.split(",")):
        sd = sparse_topk(t, k)
        mass = float(sd.logprobs.exp().sum(-1).median())
        for tail in TAILS:
            def sparse(x, sd=sd, tail=tail):
                return reverse_kl_sparse(x, sd.ids, sd.logprobs, sd.tail_logmass, tail)
            val = sparse(s).item()
            g = _grad(sparse, s)
            cos = float(torch.nn.functional.cosine_similarity(g, g_dense, dim=0).clamp(-1, 1))
            row = {"k": k, "tail": tail, "median_topk_mass": round(mass, 4), "rel_loss_error": abs(val - dense) / dense,
                   "grad_angle_deg": float(torch.rad2deg(torch.arccos(torch.tensor(cos))))}
            res["rows"].append(row)
            print(f"k {k:4d}  {tail:<8}  top-k mass {mass:.3f}  loss error {row['rel_loss_error']:.2%}  "
                  f"gradient angle {row['grad_angle_deg']:.2f}°")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
