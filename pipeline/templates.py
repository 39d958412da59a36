"""Conversation templates `plain` (pre-training) and `v1` (Vicuna, fine-tuning), as MobileVLM
trains them, turned into token ids and HF-style labels (unshifted, IGNORE_INDEX where unsupervised).

    plain  <s> <image> {caption}\\n                      caption + "\\n" supervised
    v1     <s> {SYSTEM} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>
                                                       each " {a}</s>" supervised

The ids equal what MobileVLM's `tokenizer_image_token` + `preprocess_v1/plain` give with the legacy
LLaMA tokenizer the released teacher was trained with: the text is cut into segments, each
tokenised on its own (so each gets SentencePiece's dummy "▁" prefix), and the labels follow the
segments, so they align by construction (no `len(...) - 2` arithmetic). Cuts fall where the
dummy prefix is right:
  * at the start, after <s>, after </s> (legacy LLaMA re-adds the prefix after a special token);
  * around <image>: MobileVLM tokenises the text on each side separately, so the tokens around the
    image ("USER:", "▁", <image>, "▁", "\\n", ...) keep that quirk, which the teacher has seen;
  * before an answer: "ASSISTANT:" + " " + answer is cut at the space, and the space is dropped,
    because the answer's own dummy prefix is that space (tokenising " yes" alone would give
    "▁▁yes" with LLaMA's tokenizer, one token too many).
Because every cut is at a special token or a space, the ids do not depend on whether the tokenizer
re-adds the prefix after special tokens (HF's `legacy` flag). `toy_world.tokenizer` trains
toy tokenizers with the same rules; tests/pipeline/test_templates.py checks the ids against the
whole-string tokenisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX

TEMPLATES = ("plain", "v1")
V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
PLAIN_SEP = "\n"  # ends a caption; supervised, so the model learns where captions stop


class TemplateError(ValueError):
    """A conversation the template cannot encode. `reason` is a short code (summarised in the
    manifest's rejects), the message says which turn and why."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.detail = reason, message


@dataclass(frozen=True)
class EncodedSample:
    input_ids: list[int]  # [L] with one IMAGE_TOKEN_INDEX where <image> was (none if image-less)
    labels: list[int]  # [L] aligned with input_ids, IGNORE_INDEX where unsupervised


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation: `text` to tokenise on its own, or literal `ids`."""

    text: str = ""
    ids: tuple[int, ...] = field(default=())
    supervised: bool = False


# ----------------------------------------------------------------------------------- checking
def check_turns(conversations: Any, has_image: bool) -> list[tuple[str, str]]:
    """Validate a LLaVA `conversations` list; return [(from, value)]. Raises TemplateError."""
    if not isinstance(conversations, list) or not conversations:
        raise TemplateError("missing_turns", f"conversations must be a non-empty list, got {_short(conversations)}")
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise TemplateError("bad_turn", f"turn {i} must be {{'from': ..., 'value': str}}, got {_short(turn)}")
        role, value = turn["from"], turn["value"]
        expected = "human" if i % 2 == 0 else "gpt"
        if role != expected:
            raise TemplateError(
                "not_alternating", f"turn {i} is from {role!r}, expected {expected!r} (human first, then alternating)"
            )
        try:  # lone surrogates: undecodable bytes in the file, or a bad \\ud800 escape
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TemplateError("non_utf8", f"turn {i} holds text that is not valid UTF-8 ({exc.reason})") from None
        if not value.strip():
            raise TemplateError("empty_turn", f"turn {i} ({role}) is empty")
        turns.append((role, value))
    where = [i for i, (_, v) in enumerate(turns) if IMAGE_PLACEHOLDER in v]
    n_placeholders = sum(v.count(IMAGE_PLACEHOLDER) for _, v in turns)
    if n_placeholders > 1:
        raise TemplateError("multiple_images", f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholders (turns {where}); one at most")
    if where and turns[where[0]][0] != "human":
        raise TemplateError("image_in_answer", f"{IMAGE_PLACEHOLDER} in turn {where[0]}, an answer")
    if has_image and not where:
        raise TemplateError("image_without_placeholder", f"the record has an image but no turn holds {IMAGE_PLACEHOLDER}")
    if where and not has_image:
        raise TemplateError("placeholder_without_image", f"turn {where[0]} holds {IMAGE_PLACEHOLDER} but the record has no image")
    return turns


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


# ---------------------------------------------------------------------------------- rendering
def render(conversations: Any, template: str, has_image: bool, *, bos_id: int, eos_id: int,
           prompt_only: bool = False) -> list[Segment]:
    """Cut a conversation into segments (see module docstring). `prompt_only`: stop after the last
    "ASSISTANT:" (v1) / the image (plain), dropping a final reference answer if present."""
    if template not in TEMPLATES:
        raise TemplateError("unknown_template", f"template {template!r}; known: {', '.join(TEMPLATES)}")
    turns = check_turns(conversations, has_image)
    if prompt_only and turns[-1][0] == "gpt":
        turns = turns[:-1]  # the reference answer
        if not turns:
            raise TemplateError("missing_turns", "no question before the answer")
    elif not prompt_only and turns[-1][0] != "gpt":
        raise TemplateError("no_answer", f"the last turn ({len(turns) - 1}) is a question without an answer")
    if template == "plain":
        return _render_plain(turns, has_image, bos_id, prompt_only)
    return _render_v1(turns, bos_id, eos_id, prompt_only)


def _render_plain(turns: list[tuple[str, str]], has_image: bool, bos_id: int, prompt_only: bool) -> list[Segment]:
    # One caption per image: the human text is replaced by the image itself (MobileVLM pre-training).
    if not has_image:
        raise TemplateError("plain_without_image", "the plain (caption) template needs an image")
    if len(turns) > (1 if prompt_only else 2):
        raise TemplateError("plain_multi_turn", f"the plain template takes one human/gpt pair, got {len(turns)} turns")
    segs = [Segment(ids=(bos_id, IMAGE_TOKEN_INDEX))]
    if not prompt_only:
        segs.append(Segment(text=turns[1][1] + PLAIN_SEP, supervised=True))
    return segs


def _render_v1(turns: list[tuple[str, str]], bos_id: int, eos_id: int, prompt_only: bool) -> list[Segment]:
    # the system prompt is its own segment (cut at the space before "USER:"), identical in every
    # record, so a batch tokenises it once
    segs = [Segment(ids=(bos_id,)), Segment(text=V1_SYSTEM)]
    text = ""  # text not yet emitted, since the last cut
    for role, value in turns:
        if role == "gpt":
            segs.append(Segment(text=text + "ASSISTANT:"))
            segs.append(Segment(text=value, supervised=True))  # dummy prefix = the " " after ":"
            segs.append(Segment(ids=(eos_id,), supervised=True))
            text = ""
            continue
        if IMAGE_PLACEHOLDER in value:
            # MobileVLM moves the placeholder to the front of its turn: "<image>\n{rest}".strip()
            rest = value.replace(IMAGE_PLACEHOLDER, "").strip()
            after = ("\n" + rest).rstrip()
            segs.append(Segment(text=text + "USER: "))
            segs.append(Segment(ids=(IMAGE_TOKEN_INDEX,)))
            text = after + " "
        else:
            text += "USER: " + value + " "
    if prompt_only:
        segs.append(Segment(text=text + "ASSISTANT:"))
    return segs


# --------------------------------------------------------------------------------- tokenising
def tokenize_segments(batch: Sequence[list[Segment]], tokenizer: Any) -> list[EncodedSample]:
    """Tokenise the text segments of many rendered conversations at once (each distinct text once:
    system prompts and stock questions repeat), then assemble ids and labels."""
    texts = list(dict.fromkeys(s.text for segs in batch for s in segs if not s.ids))
    table = dict(zip(texts, _encode_texts(texts, tokenizer)))
    out = []
    for segs in batch:
        ids: list[int] = []
        labels: list[int] = []
        for s in segs:
            piece = list(s.ids) if s.ids else table[s.text]
            ids += piece
            labels += piece if s.supervised else [IGNORE_INDEX] * len(piece)
        out.append(EncodedSample(ids, labels))
    return out


def _encode_texts(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each text alone, no specials added. Goes straight to the Rust tokenizer of a
    HF fast tokenizer (same ids as `tokenizer(texts, add_special_tokens=False)`, without the
    per-text Python overhead of BatchEncoding)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer, or anything else with the HF call interface
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _specials(tokenizer: Any) -> dict[str, int]:
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise TemplateError("bad_tokenizer", "the tokenizer needs bos and eos tokens (LLaMA: <s>=1, </s>=2)")
    return {"bos_id": tokenizer.bos_token_id, "eos_id": tokenizer.eos_token_id}


def encode_conversation(conversations: Any, template: str, tokenizer: Any, has_image: bool) -> EncodedSample:
    """Ids and labels of a whole training conversation; raises TemplateError if it is malformed."""
    segs = render(conversations, template, has_image, **_specials(tokenizer))
    return tokenize_segments([segs], tokenizer)[0]


def encode_prompt(conversations: Any, template: str, tokenizer: Any, has_image: bool) -> EncodedSample:
    """Ids of the generation prompt: the conversation up to and including the final "ASSISTANT:"
    (v1) or `<s> <image>` (plain); a trailing gpt turn (the reference answer) is dropped.
    Labels are all IGNORE_INDEX."""
    segs = render(conversations, template, has_image, prompt_only=True, **_specials(tokenizer))
    ids = tokenize_segments([segs], tokenizer)[0].input_ids
    return EncodedSample(ids, [IGNORE_INDEX] * len(ids))  # earlier answers are context here
