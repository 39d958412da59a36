"""A tokenizer laid out as the MobileVLM V2 releases ship theirs (a SentencePiece tokenizer.model,
tokenizer_config.json, special_tokens_map.json, no tokenizer.json), trained here in well under a
second, and MobileVLM's own preprocessing re-done on SentencePieceProcessor directly: the
independent reference the manifest's ids and labels are checked against.
Import as `tests.pipeline.release_tokenizer`."""

from __future__ import annotations

import io
import json
import random
import string
from pathlib import Path

from pipeline.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from pipeline.templates import V1_SYSTEM

BOS, EOS = 1, 2
SP_VOCAB = 400  # pieces of the session's `sp_model` fixture (tests/conftest.py)
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "ba", "do", "fe", "gi", "ho")


def corpus(seed: int = 0, n_lines: int = 400) -> list[str]:
    """Made-up words of the syllables, the template's fixed text, and every printable character."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(150)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice([".", "?", ""])
             for _ in range(n_lines)]
    return lines + [V1_SYSTEM, "USER: What is it? ASSISTANT: It is red.", " ".join(string.printable.split())]


def train_sentencepiece(vocab_size: int = 400, seed: int = 0) -> bytes:
    """A BPE SentencePiece model with LLaMA's settings: <unk>=0 <s>=1 </s>=2, no pad, byte
    fallback (so "\\n" is <0x0A> and "é" two byte pieces, as in LLaMA), dummy prefix, no
    normalisation. vocab_size counts the 3 specials and the 256 byte pieces."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(seed)), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        num_threads=1, minloglevel=2)
    return buf.getvalue()


def write_release_tokenizer(out: Path, model: bytes, legacy: bool = False) -> Path:
    """The three files of a LLaMA-tokenizer release directory (the shape of MobileVLM V2's)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model)

    def added(content: str) -> dict:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": added("<s>"),
              "clean_up_tokenization_spaces": False, "eos_token": added("</s>"), "legacy": legacy,
              "model_max_length": 2048, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizer", "unk_token": added("<unk>")}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return out


# ------------------------------------------------- MobileVLM's preprocessing on SentencePiece alone
def _hf_call(sp, text: str) -> list[int]:
    """`tokenizer(text).input_ids` of the legacy LLaMA tokenizer MobileVLM trained with: <s>, then
    the text cut at "</s>" (a special token), each piece with its own dummy prefix."""
    ids = [BOS]
    for i, part in enumerate(text.split("</s>")):
        ids += [EOS] if i else []
        ids += sp.encode(part) if part else []
    return ids


def _image_token(sp, prompt: str) -> list[int]:
    """mobilevlm.utils.tokenizer_image_token: chunks around <image>, each tokenised with its <s>,
    joined by IMAGE_TOKEN_INDEX with the inner <s> dropped."""
    chunks = [_hf_call(sp, c) for c in prompt.split(IMAGE_PLACEHOLDER)]
    ids = [BOS]
    for i, c in enumerate(chunks):
        ids += ([IMAGE_TOKEN_INDEX] if i else []) + c[1:]
    return ids


def mobilevlm_encode(sp, conversations: list[dict], template: str, has_image: bool) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as MobileVLM's preprocess_multimodal + preprocess_plain / preprocess_v1
    compute them (conversation_lib's v1 prompt, the round-by-round `len(...) - 2` masking)."""
    turns = [dict(t) for t in conversations]
    if template == "plain":
        prompt = IMAGE_PLACEHOLDER + turns[1]["value"] + "\n"
        ids = _image_token(sp, prompt)
        return ids, [IGNORE_INDEX] * 2 + ids[2:]  # len(tokenizer_image_token("<image>")) == 2
    for t in turns:  # preprocess_multimodal: the image goes to the front of its turn
        if IMAGE_PLACEHOLDER in t["value"]:
            t["value"] = (IMAGE_PLACEHOLDER + "\n" + t["value"].replace(IMAGE_PLACEHOLDER, "").strip()).strip()
    prompt = V1_SYSTEM + " "
    for i, t in enumerate(turns):
        prompt += ("USER" if t["from"] == "human" else "ASSISTANT") + ": " + t["value"] + (" ", "</s>")[i % 2]
    enc = (lambda s: _image_token(sp, s)) if has_image else (lambda s: _hf_call(sp, s))
    ids = enc(prompt)
    labels = list(ids)
    cur = 1
    labels[:cur] = [IGNORE_INDEX]
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        before, after = rou.split(" ASSISTANT: ")
        round_len, instruction_len = len(enc(rou)), len(enc(before + " ASSISTANT: ")) - 2
        labels[cur:cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    assert cur == len(ids), f"MobileVLM would mask this sample entirely (tokenisation mismatch {cur} vs {len(ids)})"
    return ids, labels
