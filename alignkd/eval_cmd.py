"""`alignkd eval` — greedy, batched, exact-match evaluation of a model on the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def eval_model(
    model: Path = typer.Option(..., "--model", help="MobileVLM-layout checkpoint directory"),
    workflow: Path = typer.Option(Path("workflows/toy.yaml"), help="workflow YAML (its data.eval split)"),
    out: Path = typer.Option(None, help="output directory (default: <model>/eval)"),
    limit: int = typer.Option(0, help="evaluate only the first N records (0: all)"),
    batch_size: int = typer.Option(0, help="0: the workflow's eval.batch_size"),
    tokenizer: Path = typer.Option(None, help="tokenizer dir (default: the model dir if it has one, else data.tokenizer)"),
) -> None:
    """Evaluate MODEL on the workflow's held-out split; writes predictions.jsonl and summary.json."""
    from transformers import AutoTokenizer

    from pipeline.evaluation import evaluate, image_use, summarise, with_other_images, write_predictions
    from pipeline.models import MobileVLM
    from pipeline.workflow import load_workflow

    wf = load_workflow(workflow)
    if wf.data.eval is None:
        raise typer.BadParameter(f"{workflow}: data.eval is not set: no held-out split to evaluate on")
    records = json.loads(Path(wf.data.eval.json).read_text())
    if limit:
        records = records[:limit]
    tok_dir = tokenizer or (model if (model / "tokenizer.json").is_file() else Path(wf.data.tokenizer))
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    m = MobileVLM.from_pretrained(model)
    preds = evaluate(m, tok, records, wf.data.eval.image_root, wf.data.eval.template,
                     batch_size or wf.eval.batch_size, wf.eval.max_new_tokens)
    out = out or model / "eval"
    write_predictions(preds, out / "predictions.jsonl")
    summary = summarise(preds)
    if len({r.get("image") for r in records}) >= 2:  # the same questions, each shown another record's image
        swapped = evaluate(m, tok, with_other_images(records), wf.data.eval.image_root, wf.data.eval.template,
                           batch_size or wf.eval.batch_size, wf.eval.max_new_tokens)
        sw = summarise(swapped)
        summary["other_image"] = {"overall": sw["overall"], "drop": round(summary["overall"] - sw["overall"], 4),
                                  "per_task": {t: v["acc"] for t, v in sw["per_task"].items()}}
    if wf.data.eval_captions is not None:  # image use on the held-out images' captions
        caps = json.loads(Path(wf.data.eval_captions.json).read_text())
        caps = caps[:limit] if limit else caps
        if len(caps) >= 2:
            summary["image_use"] = image_use(m, tok, caps, wf.data.eval_captions.image_root,
                                             wf.data.eval_captions.template, batch_size or wf.eval.batch_size)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"{model}: exact match {summary['overall']:.3f} on {summary['n']} questions")
    for task, s in summary["per_task"].items():
        typer.echo(f"  {task:<12} {s['acc']:.3f}  (n={s['n']})")
    if "other_image" in summary:
        o = summary["other_image"]
        typer.echo(f"  with another record's image: exact match {o['overall']:.3f} (drop {o['drop']:+.3f}: what it reads from the image)")
    if "image_use" in summary:
        u = summary["image_use"]
        typer.echo(f"  image use: caption loss {u['loss_own_image']:.3f} with its own image, {u['loss_other_image']:.3f} "
                   f"with another: gap {u['gap']:+.3f} nats/token over {u['n_captions']} held-out captions")
    typer.echo(f"predictions: {out / 'predictions.jsonl'}")
