"""`alignkd probe` — the paper's §3.1 layer analysis (Figure 2 a–c) for any MobileVLM checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer


def probe(
    model: Path = typer.Option(..., "--model", help="MobileVLM-layout checkpoint directory"),
    data: Path = typer.Option(Path("workflows/toy.yaml"), "--data", help="workflow whose eval split (or first dataset) is probed"),
    out: Path = typer.Option(None, help="output directory (default: <model>/probe)"),
    limit: int = typer.Option(64, help="number of samples with an image"),
    batch_size: int = typer.Option(16),
) -> None:
    """Adjacent-layer cosine similarity and vision–text similarity/distance per layer → CSV + PNG."""
    import torch
    from PIL import Image

    from alignkd.tokenizer_arg import cli_tokenizer
    from evaluation.layer_probe import LayerProbe
    from pipeline.models import MobileVLM, preprocess_image
    from pipeline.templates import encode_conversation
    from pipeline.tokenizer_load import tokenizer_dir_for
    from pipeline.workflow import load_workflow

    wf = load_workflow(data)
    ds = wf.data.eval or (wf.data.datasets[0] if wf.data.datasets else None)
    if ds is None:
        raise typer.BadParameter(f"{data}: no data.eval and no data.datasets to probe")
    records = [r for r in json.loads(Path(ds.json).read_text()) if r.get("image")][:limit]
    tok = cli_tokenizer(tokenizer_dir_for(model, wf.data.tokenizer), "--model / data.tokenizer")
    m = MobileVLM.from_pretrained(model).eval()
    acc = LayerProbe()
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        encs = [encode_conversation(r["conversations"], ds.template, tok, True) for r in chunk]
        width = max(len(e.input_ids) for e in encs)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        am = torch.zeros_like(ids)
        px = torch.zeros(len(chunk), 3, m.image_size, m.image_size)
        for row, (r, e) in enumerate(zip(chunk, encs)):
            ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
            am[row, : len(e.input_ids)] = 1
            with Image.open(Path(ds.image_root) / r["image"]) as im:
                px[row] = preprocess_image(im.convert("RGB"), m.config)
        with torch.no_grad():
            o = m.forward_align(input_ids=ids, images=px, attention_mask=am, output_hidden_states=True)
        acc.add(o.hidden_states, o.index, o.attention_mask)
    res = acc.result()
    out = out or model / "probe"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "layers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(res.rows()[0]))
        w.writeheader()
        w.writerows(res.rows())
    plot_probe(res, out / "layers.png", title=str(model))
    typer.echo(f"probed {res.n_samples} samples of {ds.name}: {out / 'layers.csv'}, {out / 'layers.png'}")


def plot_probe(res, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(range(len(res.adjacent_cos)), res.adjacent_cos, "o-")
    ax[0].set(title="(a) cos(h_l, h_l+1)", xlabel="layer l (0 = embeddings)")
    ax[1].plot(range(len(res.vt_cos)), res.vt_cos, "o-", color="tab:orange")
    ax[1].set(title="(b) vision–text cosine", xlabel="layer")
    ax[2].plot(range(len(res.vt_dist)), res.vt_dist, "o-", color="tab:green")
    ax[2].set(title="(c) vision–text distance", xlabel="layer")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
