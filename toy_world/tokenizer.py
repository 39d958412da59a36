"""A small LLaMA-style tokenizer trained locally (no model hub here): BPE over SentencePiece-style
"▁"-prefixed words, specials `<unk>`=0 (also pad), `<s>`=1, `</s>`=2 like LLaMA's.

It behaves like the legacy LLaMA SentencePiece tokenizer the MobileVLM teachers were trained with:
every text section gets the dummy "▁" prefix (so "yes" and "say yes" end in the same token, and
" yes" is "▁▁yes" as it would be inside a longer text), the prefix is re-added after a special
token, and no piece crosses a word boundary: a text cut at a space, or at a special token,
tokenises to the same ids as the whole. `train_tokenizer` is shared by the toy world generator and the tests.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIALS = (UNK, BOS, EOS)  # ids 0, 1, 2 in this order (BpeTrainer assigns specials first)
# Every printable ASCII character is in the vocabulary even if the corpus lacks it, so that
# unseen text degrades to characters rather than <unk>. Spaces become "▁" before the model sees them.
_ALPHABET = sorted(set(string.printable.replace(" ", "").replace("\x0b", "").replace("\x0c", "")) | {"▁"})


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> None:
    """Train a BPE tokenizer on `texts` and save it as a transformers fast tokenizer in `out_dir`
    (tokenizer.json + tokenizer_config.json), loadable with `AutoTokenizer.from_pretrained(out_dir)`.

    `vocab_size` includes the 3 specials and the ~100-character base alphabet; deterministic for
    the same texts (BPE ties break by pair order, not by hash).
    """
    from transformers import PreTrainedTokenizerFast  # heavy import: only when training

    if vocab_size < len(SPECIALS) + len(_ALPHABET):
        raise ValueError(f"vocab_size {vocab_size} is below the base alphabet ({len(SPECIALS) + len(_ALPHABET)})")
    tok = Tokenizer(models.BPE(unk_token=UNK, fuse_unk=True))
    # The legacy LLaMA tokenizer.json recipe: prepend "▁" to every text section unconditionally
    # (so " yes" is "▁▁yes", exactly what it is inside a longer text, and the prefix comes back
    # after a special token), spaces to "▁"; the decoder undoes both.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # split at "▁" so that no piece crosses a word boundary (SentencePiece's split_by_whitespace)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=_ALPHABET, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    ids = [tok.token_to_id(s) for s in SPECIALS]
    if ids != [0, 1, 2]:
        raise RuntimeError(f"special ids came out as {dict(zip(SPECIALS, ids))}, expected <unk>=0 <s>=1 </s>=2")
    # LLaMA adds <s> (not </s>) when add_special_tokens=True; the templates add both themselves.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=UNK,
        model_max_length=1 << 20,  # the manifest decides lengths; no truncation warnings
        padding_side="right", clean_up_tokenization_spaces=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
