"""Do alignkd's exported checkpoints run in the original MobileVLM code, and compute what alignkd does?

Loads each checkpoint with Meituan-AutoML/MobileVLM's own code (`load_pretrained_model`, then the
same steps in fp32) inside a separate venv holding the original's pins (transformers 4.33.1,
tokenizers 0.13.3), from a working directory that is neither the checkpoint's nor this repo's,
and compares with alignkd (this venv, transformers 5) on the same eval questions:
prompt token ids, pixel values, logits (max abs diff, fp32) and greedy answers.

    git clone https://github.com/Meituan-AutoML/MobileVLM /tmp/MobileVLM     # the original code
    python -m benchmarks.original_compat --src /tmp/MobileVLM --venv /tmp/mobilevlm-venv \\
        --model runs/toy_144/world/student_init --model runs/toy_144/sft \\
        --eval runs/toy_144/world/data/eval.json --image-root runs/toy_144/world/images --n 12

The venv is created when absent (~2-3 min; see `ensure_venv`). Results: docs/results/original_compat.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ORIGINAL_PINS = ("transformers==4.33.1", "tokenizers==0.13.3", "accelerate==0.21.0", "sentencepiece", "safetensors",
                 "pillow", "numpy<2")
RUNNER = Path(__file__).with_name("original_runner.py")


def ensure_venv(venv: Path) -> Path:
    """The python of a venv with the original's pins, created when absent. torch: the original pins
    torch 2.0.1, whose Linux wheels on PyPI are CUDA builds (~2.5 GB with their nvidia-* deps) and
    have no Python > 3.11 build; the tested pins that decide loading (transformers, tokenizers) are
    exact, torch is the version this interpreter runs (a CPU build here)."""
    py = venv / "bin" / "python"
    probe = "import transformers, tokenizers; assert transformers.__version__ == '4.33.1', transformers.__version__"
    if py.is_file() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_spec = f"torch=={torch.__version__.split('+')[0]}"
    subprocess.run([str(py), "-m", "pip", "install", "-q", torch_spec, *ORIGINAL_PINS], check=True)
    return py


def questions(eval_json: Path, image_root: Path, n: int) -> list[dict]:
    """The first `n` image questions of an eval split (LLaVA JSON): {image (absolute), question, answer}."""
    out = []
    for rec in json.loads(eval_json.read_text()):
        if not rec.get("image"):
            continue
        human, gpt = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
        out.append({"image": str((image_root / rec["image"]).resolve()),
                    "question": human.replace("<image>", "").strip(), "answer": gpt})
        if len(out) == n:
            break
    return out


def run_original(py: Path, src: Path, ckpt: Path, qfile: Path, max_new: int) -> dict:
    """Run the original code on `ckpt` from a fresh temp cwd; its records (see original_runner.py)."""
    with tempfile.TemporaryDirectory(prefix="original_cwd_") as cwd:
        out = Path(cwd) / "original.pt"
        r = subprocess.run([str(py), str(RUNNER), str(src.resolve()), str(ckpt.resolve()), str(qfile.resolve()),
                            str(out), str(max_new)], cwd=cwd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"the original MobileVLM code failed on {ckpt}:\n{r.stderr[-4000:]}")
        return torch.load(out, weights_only=False)


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def compare(ckpt: Path, original: dict, max_new: int) -> dict:
    """alignkd on the original's exact inputs (and its own tokenisation / preprocessing of them)."""
    from PIL import Image
    from transformers import AutoTokenizer

    from pipeline.constants import IMAGE_TOKEN_INDEX
    from pipeline.models import MobileVLM, preprocess_image

    model = MobileVLM.from_pretrained(ckpt, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    eos = model.config.eos_token_id
    res = {"logits_max_abs_diff": 0.0, "pixel_max_abs_diff": 0.0, "ids_equal": 0, "answers_equal": 0,
           "n": len(original["rows"]), "answers": []}
    for row, q in zip(original["rows"], original["questions"]):
        chunks = [tok(c).input_ids for c in row["prompt"].split("<image>")]  # tokenizer_image_token, alignkd side
        ids = chunks[0] + [IMAGE_TOKEN_INDEX] + [t for c in chunks[1:] for t in c[1:]]
        res["ids_equal"] += ids == row["input_ids"].tolist()
        px = preprocess_image(Image.open(q["image"]), model.config)
        res["pixel_max_abs_diff"] = max(res["pixel_max_abs_diff"], (px - row["pixel_values"]).abs().max().item())
        x, p = row["input_ids"][None], row["pixel_values"][None]
        with torch.no_grad():
            logits = model(input_ids=x, images=p, attention_mask=torch.ones_like(x)).logits[0]
            new = model.generate(input_ids=x, images=p, attention_mask=torch.ones_like(x), max_new_tokens=max_new)[0]
        if logits.shape != row["logits"].shape:  # e.g. a grid other than 12: the original still pools to 144
            res["logits_shapes"] = f"alignkd {tuple(logits.shape)} vs original {tuple(row['logits'].shape)}"
            diff = float("inf")
        else:
            diff = (logits - row["logits"]).abs().max().item()
        res["logits_max_abs_diff"] = max(res["logits_max_abs_diff"], diff)
        ours, theirs = _until_eos(new.tolist(), eos), _until_eos(row["new_ids"], eos)
        res["answers_equal"] += ours == theirs
        res["answers"].append({"question": q["question"], "expected": q["answer"], "original": row["answer"],
                               "alignkd": tok.decode(ours, skip_special_tokens=True).strip()})
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True, help="a checkout of github.com/Meituan-AutoML/MobileVLM")
    ap.add_argument("--venv", type=Path, required=True, help="venv with the original's pins (created when absent)")
    ap.add_argument("--model", type=Path, action="append", required=True, help="exported checkpoint dir (repeatable)")
    ap.add_argument("--eval", type=Path, required=True, help="eval split, LLaVA JSON")
    ap.add_argument("--image-root", type=Path, required=True)
    ap.add_argument("--n", type=int, default=12, help="questions")
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    a = ap.parse_args(argv)
    if not (a.src / "mobilevlm" / "model" / "mobilellama.py").is_file():
        ap.error(f"--src {a.src}: no mobilevlm/model/mobilellama.py; git clone https://github.com/Meituan-AutoML/MobileVLM")
    t0 = time.perf_counter()
    py = ensure_venv(a.venv)
    results = {"venv_s": round(time.perf_counter() - t0, 1), "models": {}}
    qs = questions(a.eval, a.image_root, a.n)
    with tempfile.TemporaryDirectory() as d:
        qfile = Path(d) / "questions.json"
        qfile.write_text(json.dumps(qs))
        for ck in a.model:
            t = time.perf_counter()
            orig = run_original(py, a.src, ck, qfile, a.max_new_tokens)
            orig["questions"] = qs
            r = compare(ck, orig, a.max_new_tokens)
            r.update({k: orig[k] for k in ("transformers", "tokenizers", "torch", "tokenizer_class")},
                     seconds=round(time.perf_counter() - t, 1))
            results["models"][str(ck)] = r
            print(f"{ck}: original {r['transformers']}/{r['tokenizers']} loaded it; logits max |diff| "
                  f"{r['logits_max_abs_diff']:.2e}, pixels {r['pixel_max_abs_diff']:.1e}, prompt ids equal "
                  f"{r['ids_equal']}/{r['n']}, greedy answers equal {r['answers_equal']}/{r['n']} ({r['seconds']} s)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
