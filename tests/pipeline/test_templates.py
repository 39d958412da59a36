"""Templates `plain` and `v1` at token level, on a real (tiny, locally trained) fast tokenizer:
ids equal MobileVLM's whole-string tokenisation, supervised spans are exactly the answers + </s>,
and the index sets (pipeline.positions) come out as the losses expect."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from pipeline.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from pipeline.positions import sample_index
from pipeline.templates import V1_SYSTEM, TemplateError, encode_conversation, encode_prompt, render, tokenize_segments
from tests.pipeline.data_fixtures import make_tokenizer

N_VISION = 16


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return AutoTokenizer.from_pretrained(make_tokenizer(tmp_path_factory.mktemp("tok")))


def conv(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def mobilevlm_ids(turns: list[dict], tok) -> list[int]:
    """Reference: MobileVLM's conv_vicuna_v1.get_prompt() + tokenizer_image_token, written out
    independently: the whole prompt string, tokenised in one call per side of <image>."""
    text = V1_SYSTEM + " "
    for i, t in enumerate(turns):
        value = t["value"]
        if "<image>" in value:
            value = ("<image>\n" + value.replace("<image>", "").strip()).strip()
        text += ("USER" if i % 2 == 0 else "ASSISTANT") + ": " + value + (" " if i % 2 == 0 else "</s>")
    ids = [tok.bos_token_id]
    for j, chunk in enumerate(text.split("<image>")):
        ids += ([IMAGE_TOKEN_INDEX] if j else []) + tok(chunk, add_special_tokens=False)["input_ids"]
    return ids


def supervised_runs(labels: list[int]) -> list[list[int]]:
    runs, cur = [], []
    for x in labels + [IGNORE_INDEX]:
        if x != IGNORE_INDEX:
            cur.append(x)
        elif cur:
            runs, cur = runs + [cur], []
    return runs


V1_CASES = {
    "image_first_turn": conv("<image>\nWhat colour is the square?", "The square is red.",
                             "How many circles are there?", "There are two circles."),
    "image_second_turn": conv("Where is the triangle?", "The triangle is at the top left.",
                              "Describe it. <image>", "Two green triangles."),
    "image_alone": conv("<image>", "A red square and a blue circle."),
    "text_only": conv("What colour is the square?", "The square is red.", "yes?", "no"),
    "odd_whitespace": conv("<image>  What is  it? ", " The square.", "Two lines?", "\nTwo\nlines \n"),
}


@pytest.mark.parametrize("case", V1_CASES)
def test_v1_ids_equal_mobilevlm_whole_string_tokenisation(tok, case):
    turns = V1_CASES[case]
    enc = encode_conversation(turns, "v1", tok, has_image="<image>" in str(turns))
    assert enc.input_ids == mobilevlm_ids(turns, tok)
    assert len(enc.labels) == len(enc.input_ids)


@pytest.mark.parametrize("case", V1_CASES)
def test_v1_supervised_spans_are_exactly_the_answers_and_eos(tok, case):
    turns = V1_CASES[case]
    enc = encode_conversation(turns, "v1", tok, has_image="<image>" in str(turns))
    answers = [t["value"] for t in turns[1::2]]
    runs = supervised_runs(enc.labels)
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert run[-1] == tok.eos_token_id and tok.eos_token_id not in run[:-1]
        assert tok.decode(run[:-1]) == answer
    for i, lab in zip(enc.input_ids, enc.labels):
        assert lab in (IGNORE_INDEX, i)  # unshifted: a label is its own input id
    assert enc.input_ids[0] == tok.bos_token_id and enc.labels[0] == IGNORE_INDEX


@pytest.mark.parametrize("case", V1_CASES)
def test_v1_sample_index(tok, case):
    turns = V1_CASES[case]
    has_image = "<image>" in str(turns)
    enc = encode_conversation(turns, "v1", tok, has_image=has_image)
    n_sup = sum(lab != IGNORE_INDEX for lab in enc.labels)
    img = [p for p, i in enumerate(enc.input_ids) if i == IMAGE_TOKEN_INDEX]
    assert len(img) == (1 if has_image else 0)
    idx = sample_index(enc.input_ids, enc.labels, N_VISION)
    assert len(idx.resp) == n_sup  # |R|: every supervised token is predicted by the logit before it
    if has_image:
        p = img[0]
        assert enc.labels[p] == IGNORE_INDEX
        assert idx.length == len(enc.input_ids) - 1 + N_VISION and idx.v_start == p
        assert idx.n_text_after == len(enc.input_ids) - p - 1  # |T|: text after the image
        # embedded logit positions of the supervised tokens, shifted by one
        emb = [q + (N_VISION - 1 if q > p else 0) for q, lab in enumerate(enc.labels) if lab != IGNORE_INDEX]
        assert idx.resp.tolist() == [q - 1 for q in emb]
    else:
        assert idx.length == len(enc.input_ids) and idx.n_text_after == 0 and not idx.has_image


def test_image_in_a_later_turn_stays_there(tok):
    turns = V1_CASES["image_second_turn"]
    enc = encode_conversation(turns, "v1", tok, has_image=True)
    p = enc.input_ids.index(IMAGE_TOKEN_INDEX)
    first_answer_end = enc.input_ids.index(tok.eos_token_id)
    assert p > first_answer_end  # after the first round, not moved to the front


def test_plain_supervises_the_caption_and_newline_only(tok):
    caption = "A red square and a blue circle."
    enc = encode_conversation(conv("<image>\nDescribe the image.", caption), "plain", tok, has_image=True)
    assert enc.input_ids[:2] == [tok.bos_token_id, IMAGE_TOKEN_INDEX]  # the human text is replaced by the image
    assert enc.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX] and enc.labels[2:] == enc.input_ids[2:]
    assert tok.decode(enc.labels[2:]) == caption + "\n"
    assert enc.input_ids[2:] == tok(caption + "\n", add_special_tokens=False)["input_ids"]  # MobileVLM's chunk
    idx = sample_index(enc.input_ids, enc.labels, N_VISION)
    n_cap = len(enc.input_ids) - 2
    assert (idx.length, idx.v_start, idx.n_text_after, len(idx.resp)) == (1 + N_VISION + n_cap, 1, n_cap, n_cap)
    assert idx.resp[0] == N_VISION  # the last vision position predicts the first caption token


@pytest.mark.parametrize("case", ["image_first_turn", "image_second_turn", "text_only"])
def test_v1_prompt_is_the_conversation_up_to_the_last_assistant(tok, case):
    turns = V1_CASES[case]
    has_image = "<image>" in str(turns)
    full = encode_conversation(turns, "v1", tok, has_image=has_image)
    start_of_last_answer = len(full.labels) - len(supervised_runs(full.labels)[-1])
    for given in (turns, turns[:-1]):  # with or without the reference answer
        prompt = encode_prompt(given, "v1", tok, has_image=has_image)
        assert prompt.input_ids == full.input_ids[:start_of_last_answer]
        assert set(prompt.labels) == {IGNORE_INDEX}
    assert tok.decode(prompt.input_ids[-3:]).endswith("ASSISTANT:")


def test_plain_prompt_is_bos_and_image(tok):
    prompt = encode_prompt(conv("<image>", "A caption."), "plain", tok, has_image=True)
    assert prompt.input_ids == [tok.bos_token_id, IMAGE_TOKEN_INDEX]


def test_batch_tokenisation_equals_one_by_one(tok):
    rendered = [render(t, "v1", "<image>" in str(t), bos_id=1, eos_id=2) for t in V1_CASES.values()]
    one = [encode_conversation(t, "v1", tok, "<image>" in str(t)) for t in V1_CASES.values()]
    assert tokenize_segments(rendered, tok) == one


BAD = {
    "missing_turns": (None, "v1", False),
    "missing_turns ": ([], "v1", False),
    "bad_turn": ([{"from": "human"}, {"from": "gpt", "value": "a"}], "v1", False),
    "bad_turn  ": (["hi", "a"], "v1", False),
    "empty_turn": (conv("q", "  "), "v1", False),
    "not_alternating": (conv("q", "a")[::-1], "v1", False),
    "not_alternating ": ([{"from": "human", "value": "q"}] * 2, "v1", False),
    "placeholder_without_image": (conv("<image>\nq", "a"), "v1", False),
    "image_without_placeholder": (conv("q", "a"), "v1", True),
    "multiple_images": (conv("<image> q <image>", "a"), "v1", True),
    "multiple_images ": (conv("<image> q", "a", "<image> q2", "a2"), "v1", True),
    "image_in_answer": (conv("q", "<image> a"), "v1", True),
    "no_answer": (conv("q", "a", "q2"), "v1", False),
    "non_utf8": (conv("q", "caf\udce9"), "v1", False),
    "unknown_template": (conv("q", "a"), "llama_2", False),
    "plain_without_image": (conv("q", "a caption"), "plain", False),
    "plain_multi_turn": (conv("<image>", "a", "q", "b"), "plain", True),
}


@pytest.mark.parametrize("reason", BAD)
def test_malformed_conversations_raise_with_a_reason(tok, reason):
    turns, template, has_image = BAD[reason]
    with pytest.raises(TemplateError) as exc:
        encode_conversation(turns, template, tok, has_image=has_image)
    assert exc.value.reason == reason.strip() and exc.value.detail


def test_tokenizer_has_llama_specials_and_is_deterministic(tmp_path, tok):
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    assert tok("yes")["input_ids"][0] == 1  # adds <s> like LLaMA
    a, b = make_tokenizer(tmp_path / "a"), make_tokenizer(tmp_path / "b")
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
