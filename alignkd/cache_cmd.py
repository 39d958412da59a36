"""`alignkd cache info/ls/show/verify/size-table`: inspect, list and verify a teacher cache.

info and ls read metadata only (zarr.json, commit records, index); show reads one sample;
verify reads everything and exits non-zero on any fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cache_schema import CacheError, CacheReader, verify_store
from cache_schema.summary import list_samples, store_info

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=code)


def _mb(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:,.2f} {unit}"
    return f"{n:.0f} B"


@app.command("info")
def info(path: Path = typer.Argument(..., help="cache directory"),
         as_json: bool = typer.Option(False, "--json", help="print the info as JSON")) -> None:
    """Provenance, counts, per-array sizes and compression (reads no payload)."""
    try:
        d = store_info(path)
    except CacheError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(f"cache {d['path']}  (finalised: {'yes' if d['finalized'] else 'NO'})")
    typer.echo("provenance:")
    for k, v in d["provenance"].items():
        typer.echo(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    typer.echo(f"units: {d['units']} committed, {len(d['incomplete_units'])} incomplete"
               + (f" ({', '.join(d['incomplete_units'][:5])})" if d["incomplete_units"] else ""))
    typer.echo(f"samples: {d['samples']}   images: {d['images']}")
    typer.echo(f"{'array':<24}{'dtype':<7}{'codec':<26}{'stored':>16}{'decoded':>16}{'ratio':>8}{'files':>7}")
    for name, a in d["arrays"].items():
        ratio = "-" if a["compression_ratio"] is None else f"{a['compression_ratio']:.2f}x"
        typer.echo(f"{name:<24}{a['dtype']:<7}{a['codec']:<26}{_mb(a['stored_bytes']):>16}"
                   f"{_mb(a['decoded_bytes']):>16}{ratio:>8}{a['files']:>7}")
    ratio = "-" if d["compression_ratio"] is None else f"{d['compression_ratio']:.2f}x"
    typer.echo(f"total stored {_mb(d['stored_bytes'])} (decoded {_mb(d['decoded_bytes'])}, {ratio}); "
               f"index {_mb(d['index_bytes'])}; per sample {_mb(d['bytes_per_sample'])}")


@app.command("ls")
def ls(path: Path = typer.Argument(..., help="cache directory"),
       dataset: Optional[str] = typer.Option(None, help="only sample ids '<dataset>/...'"),
       unit: Optional[str] = typer.Option(None, help="only this unit"),
       limit: Optional[int] = typer.Option(50, help="at most this many rows (0: all)")) -> None:
    """List samples from the index (or commit records before finalize); reads no payload."""
    try:
        rows = list_samples(path, dataset=dataset, unit=unit, limit=limit or None)
    except CacheError as e:
        _fail(str(e))
    typer.echo(f"{'sample_id':<40}{'unit':<16}{'row':>5}{'n_text':>7}{'n_resp':>7}  image_hash        token_hash")
    for r in rows:
        typer.echo(f"{r['sample_id']:<40}{r['unit']:<16}{r['row']:>5}{r['n_text']:>7}{r['n_resp']:>7}  "
                   f"{(r['image_hash'] or '-'):<18}{r['token_hash']}")
    typer.echo(f"({len(rows)} rows)")


def _image_path(image: Optional[Path], manifest: Optional[Path], sample_id: str) -> Optional[Path]:
    if image is not None:
        return image
    if manifest is None:
        return None
    import pyarrow.compute as pc

    from pipeline.data.contract import read_manifest

    t = read_manifest(manifest, ["sample_id", "image_path"])
    t = t.filter(pc.equal(t["sample_id"], sample_id))
    if t.num_rows == 0 or not t["image_path"][0].as_py():
        _fail(f"sample {sample_id!r} has no image_path in manifest {manifest}")
    return Path(t["image_path"][0].as_py())


def _draw_png(out: Path, grid: np.ndarray, focus: np.ndarray, img_path: Optional[Path], title: str) -> None:
    """Head-mean T→V attention as a √|V|×√|V| heatmap over the (pad-to-square) picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    g = grid.shape[0]
    fig, ax = plt.subplots(figsize=(6, 6))
    extent = (0, 1, 1, 0)
    if img_path is not None:
        from PIL import Image

        im = Image.open(img_path).convert("RGB")
        side = max(im.size)  # MobileVLM/LLaVA pad to square (centred) before resizing
        sq = Image.new("RGB", (side, side), (122, 116, 104))
        sq.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        ax.imshow(np.asarray(sq), extent=extent)
    ax.imshow(grid, cmap="inferno", alpha=0.55 if img_path is not None else 1.0, extent=extent,
              interpolation="bilinear" if img_path is not None else "nearest")
    for j in focus.tolist():
        r, c = divmod(int(j), g)
        ax.add_patch(Rectangle((c / g, r / g), 1 / g, 1 / g, fill=False, edgecolor="cyan", linewidth=1.5))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


@app.command("show")
def show(path: Path = typer.Argument(..., help="cache directory"),
         sample_id: str = typer.Argument(..., help="sample id (see `alignkd cache ls`)"),
         tokenizer: Optional[Path] = typer.Option(None, help="tokenizer dir to decode top tokens"),
         png: Optional[Path] = typer.Option(None, help="write the head-mean T→V attention heatmap here"),
         image: Optional[Path] = typer.Option(None, help="the sample's image file (for --png)"),
         manifest: Optional[Path] = typer.Option(None, help="manifest parquet to look up image_path (for --png)"),
         positions: int = typer.Option(5, help="response positions to print"),
         top: int = typer.Option(5, help="top tokens per position to print")) -> None:
    """One sample: shapes, focus indices, top tokens (decoded with --tokenizer), optional heatmap."""
    try:
        r = CacheReader(path)
        s = r.get(sample_id)
    except (CacheError, KeyError) as e:
        _fail(str(e).strip('"'))
    prov = r.provenance
    typer.echo(f"sample {s.sample_id}  token_hash {s.token_hash}  image {s.image_hash or '-'}  "
               f"|T|={s.n_text} |R|={s.n_resp}")
    for (layer, block), a in s.attn.items():
        typer.echo(f"  attn {layer}.{block}: {list(a.shape)} float32  row sums mean {a.sum(-1).mean():.4f}"
                   if a.size else f"  attn {layer}.{block}: {list(a.shape)} (empty)")
    typer.echo(f"  focus ({len(s.focus)}): {s.focus.tolist()}")
    if s.image_hash and prov.projector_tokens != "stored":
        typer.echo(f"  vision tokens: not stored (recomputed by a student with tower {prov.vision_tower_fingerprint})")
    elif s.image_hash:
        v = r.image_tokens(s.image_hash)
        typer.echo(f"  vision tokens: {list(v.shape)} float32  mean|x| {np.abs(v).mean():.4g}  max|x| {np.abs(v).max():.4g}")
    tok = None
    if tokenizer is not None:
        from alignkd.tokenizer_arg import cli_tokenizer

        tok = cli_tokenizer(tokenizer)
    typer.echo(f"  top-{s.topk_ids.shape[1] if s.topk_ids.ndim == 2 else 0} logits per response position "
               f"(showing {min(positions, s.n_resp)}):")
    for t in range(min(positions, s.n_resp)):
        parts = []
        for i, lp in zip(s.topk_ids[t, :top].tolist(), s.topk_logprobs[t, :top].tolist()):
            name = repr(tok.convert_ids_to_tokens(i)) if tok is not None else str(i)
            parts.append(f"{name}:{np.exp(lp):.3f}")
        typer.echo(f"    r{t}: {' '.join(parts)}  | tail {np.exp(s.tail_logmass[t]):.4f}")
    if png is not None:
        tv = next((a for (_, b), a in s.attn.items() if b == "tv"), None)
        if prov.attention == "recompute":
            _fail(f"{path}: the store keeps no attention (cache.attention: recompute, the student recomputes it); "
                  "draw from a store dumped with cache.attention: stored")
        if tv is None or not tv.size:
            _fail(f"sample {sample_id!r} has no T→V attention to draw (blocks: {list(prov.attn_blocks)})")
        g = int(round(tv.shape[2] ** 0.5))
        if g * g != tv.shape[2]:
            _fail(f"|V|={tv.shape[2]} is not a square grid")
        grid = tv.mean(axis=(0, 1)).reshape(g, g)  # [√V, √V] focus scores
        img = _image_path(image, manifest, sample_id)
        _draw_png(png, grid, s.focus, img, f"{sample_id}: head-mean first-layer T→V attention (focus boxed)")
        typer.echo(f"wrote {png}")


@app.command("verify")
def verify(path: Path = typer.Argument(..., help="cache directory"),
           manifest: Optional[Path] = typer.Option(None, help="also check coverage against this manifest"),
           subset: Optional[str] = typer.Option(None, help="manifest subset (column in_<subset>)")) -> None:
    """Check every checksum, the index and coverage; list incomplete units. Exit 1 on any fault."""
    expected = None
    if manifest is not None:
        from pipeline.data.contract import read_manifest, subset_column, subsets_in

        if subset is not None and subset not in subsets_in(manifest):
            _fail(f"manifest {manifest} has no column {subset_column(subset)} (subsets: {subsets_in(manifest)})")
        t = read_manifest(manifest, ["sample_id"] + ([subset_column(subset)] if subset is not None else []))
        if subset is not None:
            t = t.filter(t[subset_column(subset)])
        expected = t["sample_id"].to_pylist()
    from rich.progress import Progress

    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("verifying units", total=None)

            def progress(done: int, total: int, unit: str) -> None:
                bar.update(task, completed=done, total=total, description=f"unit {unit}")

            rep = verify_store(path, expected_sample_ids=expected, progress=progress)
    except CacheError as e:
        _fail(str(e))
    typer.echo(f"{rep.path}: {rep.n_units} units, {rep.n_samples} samples, {rep.n_images} images, "
               f"{_mb(rep.bytes_read)} decoded and checked; finalised: {'yes' if rep.finalized else 'no'}")
    if rep.incomplete_units:
        typer.echo(f"INCOMPLETE units ({len(rep.incomplete_units)}): {', '.join(rep.incomplete_units)}")
    for f in rep.faults:
        typer.echo(f"FAULT: {f}")
    for f in rep.leftovers:
        typer.echo(f"LEFTOVER: {f}")
    if not rep.ok:
        raise typer.Exit(code=1)
    typer.echo(f"OK, with {len(rep.leftovers)} leftover(s) that readers ignore; the next teacher-dump of this "
               "cache removes those whose writer is gone" if rep.leftovers else "OK")


@app.command("size-table")
def size_table_cmd(quick: bool = typer.Option(False, help="1 sample instead of 6 (for tests; numbers noisier)"),
                   out: Optional[Path] = typer.Option(None, help="write size_table.json and size_table.md here")) -> None:
    """Measure bytes/sample and fidelity of each storage option at the real teacher's shapes."""
    from cache_schema.sizes import size_table

    _, md = size_table(out, quick=quick)
    typer.echo(md)
    if out is not None:
        typer.echo(f"wrote {out / 'size_table.json'} and {out / 'size_table.md'}")
