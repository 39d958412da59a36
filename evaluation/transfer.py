"""What a student took from its teacher, measured without accuracy: on held-out records (the eval
split's questions *with* their answers), the student's reverse KL to the teacher on the answer
tokens and the agreement of its first-layer text→vision attention with the teacher's.

Exact match moves in steps and needs many questions to resolve a couple of points; these two move
continuously and say *where* transfer stops: a student that matches the teacher's output
distribution but not its attention learnt answers, not where to look (and vice versa).

Attention is compared head-averaged — mean over heads of A^(0)[:, T, V], [|T|, |V|] per sample —
so no adapter is needed and an SFT student (which never had one) is measured the same way as an
Align-KD student. Both models must share the tokenizer and the number of vision tokens (the
paper's setting: the sequences line up position by position).

    transfer_metrics(student, teacher, tok, records, image_root) ->
        {"rkl": nats/answer token, "attn_corr": Pearson r over all (sample, t, v) entries,
         "attn_mse": mean squared difference, "n_records", "n_answer_tokens"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evaluation.image_cache import PixelCache
from pipeline.constants import IGNORE_INDEX
from pipeline.models import MobileVLM
from pipeline.models.capture import CaptureSpec
from pipeline.templates import encode_conversation

_TV = CaptureSpec(layers=("first",), blocks=("tv",))


@torch.no_grad()
def transfer_metrics(student: MobileVLM, teacher: MobileVLM, tokenizer: Any, records: list[dict],
                     image_root: str | Path, template: str = "v1", batch_size: int = 32,
                     pixels: PixelCache | None = None) -> dict:
    from evaluation.heldout import pad_encoded  # evaluation imports models too

    if student.num_vision_tokens != teacher.num_vision_tokens:
        raise ValueError(f"student emits {student.num_vision_tokens} vision tokens, the teacher "
                         f"{teacher.num_vision_tokens}: their positions do not line up")
    student.eval()
    teacher.eval()
    root = Path(image_root)
    pixels = pixels if pixels is not None else PixelCache()  # images preprocessed once each
    rkl_sum, n_tok = 0.0, 0
    s_maps: list[torch.Tensor] = []
    t_maps: list[torch.Tensor] = []
    for i in range(0, len(records), batch_size):
        batch = records[i : i + batch_size]
        enc = [encode_conversation(r["conversations"], template, tokenizer, bool(r.get("image"))) for r in batch]
        ids, lab, am = pad_encoded(enc)
        imgs = None
        if all(r.get("image") for r in batch):
            imgs = torch.stack([pixels.pixels(root / r["image"], student) for r in batch])
        s = student.forward_align(input_ids=ids, images=imgs, attention_mask=am, labels=lab, spec=_TV)
        t = teacher.forward_align(input_ids=ids, images=imgs, attention_mask=am, labels=lab, spec=_TV)
        resp = s.labels[:, 1:] != IGNORE_INDEX  # [B, L-1]: position t predicts token t+1
        lq = torch.log_softmax(s.logits[:, :-1].float(), -1)[resp]  # [N, vocab]
        lp = torch.log_softmax(t.logits[:, :-1].float(), -1)[resp]
        rkl_sum += float((lq.exp() * (lq - lp)).sum())
        n_tok += int(resp.sum())
        if imgs is not None:
            s_maps += [a.mean(0).flatten() for a in s.attn[("first", "tv")]]  # [|T|*|V|] each
            t_maps += [a.mean(0).flatten() for a in t.attn[("first", "tv")]]
    out = {"rkl": round(rkl_sum / max(n_tok, 1), 4), "n_records": len(records), "n_answer_tokens": n_tok}
    if s_maps:
        a, b = torch.cat(s_maps).double(), torch.cat(t_maps).double()
        out["attn_mse"] = float(((a - b) ** 2).mean())
        out["attn_corr"] = round(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), 4)
    return out
