"""Index sets and teacher reductions against slow, obvious references."""

import numpy as np
import pytest
import torch

from pipeline.constants import IGNORE_INDEX as X
from pipeline.constants import IMAGE_TOKEN_INDEX as IMG
from pipeline.positions import sample_index
from pipeline.targets import focus_indices, focus_scores, sparse_topk


def test_index_sets_with_image_in_the_middle():
    # bos, "a", <image>, "q", "?", answer tokens 7, 8, eos
    ids = [1, 5, IMG, 6, 9, 7, 8, 2]
    lab = [X, X, X, X, X, 7, 8, 2]
    ix = sample_index(ids, lab, n_vision=4)
    assert ix.length == 7 + 4 and ix.v_start == 2 and ix.n_vision == 4
    assert ix.t_start == 6 and ix.n_text_after == 5
    # embedded labels: [X, X, X*4, X, X, 7, 8, 2] -> supervised embedded positions 8, 9, 10; logits at 7, 8, 9
    assert ix.resp.tolist() == [7, 8, 9]


def test_text_only_sample_has_empty_v_and_t():
    ix = sample_index([1, 5, 6, 2], [X, X, 6, 2], n_vision=64)
    assert not ix.has_image and ix.n_text_after == 0 and ix.resp.tolist() == [1, 2]


def test_two_placeholders_are_refused():
    with pytest.raises(ValueError, match="one image placeholder"):
        sample_index([IMG, 3, IMG], [X, X, X], 4)


def test_focus_is_topk_of_head_and_query_mean():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 10, generator=g)
    s_ref = np.array([[a[h, i, j].item() for h in range(3) for i in range(5)] for j in range(10)]).mean(1)
    assert np.allclose(focus_scores(a).numpy(), s_ref, atol=1e-6)
    assert focus_indices(a, 4).tolist() == sorted(np.argsort(-s_ref)[:4].tolist())


def test_sparse_topk_keeps_exact_logprobs_and_tail_mass():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    sp = sparse_topk(logits, 8)
    p = torch.softmax(logits.double(), -1)
    for r in range(6):
        order = torch.argsort(p[r], descending=True)[:8]
        assert set(sp.ids[r].tolist()) == set(order.tolist())
        assert torch.allclose(sp.logprobs[r].double(), p[r, sp.ids[r]].log(), atol=1e-5)
        tail = 1 - p[r, order].sum()
        assert abs(sp.tail_logmass[r].double().exp() - tail) < 1e-6
    full = sparse_topk(logits, 50)
    assert torch.isinf(full.tail_logmass).all()
