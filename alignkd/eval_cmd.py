"""`alignkd eval` — greedy, batched, exact-match evaluation of a model on the held-out split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from pipeline.models import MobileVLM
    from pipeline.workflow import Workflow


def eval_model(
    model: Path = typer.Option(..., "--model", help="MobileVLM-layout checkpoint directory"),
    workflow: Path = typer.Option(Path("workflows/toy.yaml"), help="workflow YAML (its data.eval split)"),
    out: Path = typer.Option(None, help="output directory (default: <model>/eval)"),
    limit: int = typer.Option(0, help="evaluate only the first N records (0: all)"),
    batch_size: int = typer.Option(0, help="0: the workflow's eval.batch_size"),
    tokenizer: Path = typer.Option(None, help="tokenizer dir (default: the model dir if it has one, else data.tokenizer)"),
    teacher: Path = typer.Option(None, help="a teacher checkpoint: also measure transfer (the model's reverse KL to it "
                                            "on the answers, agreement of first-layer T→V attention)"),
    compare: Path = typer.Option(None, help="another model's predictions.jsonl on the same split: paired 95% interval "
                                            "of the exact-match difference (this model minus that one)"),
) -> None:
    """Evaluate MODEL on the workflow's held-out split; writes predictions.jsonl and summary.json."""
    from alignkd.tokenizer_arg import cli_tokenizer
    from evaluation.image_cache import vision_token_cache
    from pipeline.models import MobileVLM
    from pipeline.tokenizer_load import tokenizer_dir_for
    from pipeline.workflow import load_workflow

    wf = load_workflow(workflow)
    if wf.data.eval is None:
        raise typer.BadParameter(f"{workflow}: data.eval is not set: no held-out split to evaluate on")
    records = json.loads(Path(wf.data.eval.json).read_text())
    if limit:
        records = records[:limit]
    tok = cli_tokenizer(tokenizer or tokenizer_dir_for(model, wf.data.tokenizer),
                        "--tokenizer" if tokenizer else "--model / data.tokenizer")
    m = MobileVLM.from_pretrained(model)
    # each held-out image is shown to the model ~11 times (both generation passes, image use twice,
    # transfer): its tower runs once per image (identical values: evaluation/image_cache.py)
    out = out or model / "eval"
    with vision_token_cache(m):
        summary, preds = _measure(m, tok, records, wf, limit, batch_size or wf.eval.batch_size, teacher, out)
    if compare is not None:
        summary["compare"] = {"other": str(compare), **compare_predictions(preds, compare)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"{model}: exact match {summary['overall']:.3f} on {summary['n']} questions")
    for task, s in summary["per_task"].items():
        typer.echo(f"  {task:<12} {s['acc']:.3f}  (n={s['n']})")
    if "other_image" in summary:
        o = summary["other_image"]
        lo, hi = o["drop_ci95"]
        typer.echo(f"  with another record's image: exact match {o['overall']:.3f} (drop {o['drop']:+.3f}, 95% "
                   f"[{lo:+.3f}, {hi:+.3f}]: what it reads from the image)")
    if "transfer" in summary:
        t = summary["transfer"]
        typer.echo(f"  transfer from {teacher}: reverse KL {t['rkl']:.4f} nats/answer token, first-layer T→V attention "
                   f"r = {t.get('attn_corr', float('nan')):.3f}")
    if "compare" in summary:
        c = summary["compare"]
        typer.echo(f"  minus {compare}: {c['diff']:+.3f} exact match, paired 95% [{c['lo']:+.3f}, {c['hi']:+.3f}]")
    if "image_use" in summary:
        u = summary["image_use"]
        typer.echo(f"  image use: caption loss {u['loss_own_image']:.3f} with its own image, {u['loss_other_image']:.3f} "
                   f"with another: gap {u['gap']:+.3f} nats/token over {u['n_captions']} held-out captions")
    typer.echo(f"predictions: {out / 'predictions.jsonl'}")


def _measure(m: "MobileVLM", tok: Any, records: list[dict], wf: "Workflow", limit: int, batch_size: int,
             teacher: Path | None, out: Path) -> tuple[dict, list]:
    """Predictions of `m` (written to out/predictions.jsonl) and the summary, all but --compare."""
    from evaluation.heldout import evaluate, image_use, summarise, with_other_images, write_predictions
    from evaluation.image_cache import PixelCache, vision_token_cache
    from evaluation.paired import paired_diff
    from pipeline.models import MobileVLM

    pixels = PixelCache()  # every held-out image is preprocessed once for all the passes below
    preds = evaluate(m, tok, records, wf.data.eval.image_root, wf.data.eval.template,
                     batch_size, wf.eval.max_new_tokens, pixels=pixels)
    write_predictions(preds, out / "predictions.jsonl")
    summary = summarise(preds)
    if len({r.get("image") for r in records}) >= 2:  # the same questions, each shown another record's image
        swapped = evaluate(m, tok, with_other_images(records), wf.data.eval.image_root, wf.data.eval.template,
                           batch_size, wf.eval.max_new_tokens, pixels=pixels)
        sw = summarise(swapped)
        drop = paired_diff([p.correct for p in preds], [p.correct for p in swapped])
        # share of answers that change with the image: 0 for an image-blind model (or a swap that
        # did not swap); drop alone cannot tell, an untrained model scores 0 either way
        changed = sum(a.prediction != b.prediction for a, b in zip(preds, swapped)) / max(len(preds), 1)
        summary["other_image"] = {"overall": sw["overall"], "drop": round(summary["overall"] - sw["overall"], 4),
                                  "drop_ci95": [drop["lo"], drop["hi"]], "answers_changed": round(changed, 4),
                                  "per_task": {t: v["acc"] for t, v in sw["per_task"].items()}}
    if wf.data.eval_captions is not None:  # image use on the held-out images' captions
        caps = json.loads(Path(wf.data.eval_captions.json).read_text())
        caps = caps[:limit] if limit else caps
        if len(caps) >= 2:
            summary["image_use"] = image_use(m, tok, caps, wf.data.eval_captions.image_root,
                                             wf.data.eval_captions.template, batch_size,
                                             pixels=pixels)
    if teacher is not None:
        from evaluation.transfer import transfer_metrics

        t = MobileVLM.from_pretrained(teacher)
        with vision_token_cache(t):
            summary["transfer"] = {"teacher": str(teacher), **transfer_metrics(
                m, t, tok, records, wf.data.eval.image_root, wf.data.eval.template, batch_size, pixels=pixels)}
    return summary, preds


def compare_predictions(preds: list, other: Path) -> dict:
    """Paired bootstrap of (this model − the model of `other` predictions.jsonl) on the same questions."""
    from evaluation.paired import correctness, paired_diff

    try:
        rows = [json.loads(line) for line in other.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise typer.BadParameter(f"--compare {other}: cannot read predictions.jsonl ({e})") from None
    ids = [p.question_id for p in preds]
    try:
        _, b = correctness(rows, ids)
    except ValueError as e:
        raise typer.BadParameter(f"--compare {other}: {e}") from None
    return paired_diff([p.correct for p in preds], b)
