"""The blog's own alternative to hubembed's search (seed 002): datasets' add_faiss_index and
get_nearest_examples on EmbeddedDataset.dataset give the same nearest rows as index.search."""

from __future__ import annotations

import numpy as np
import pytest

import hubembed
from tests.conftest import MEDICARE_QUERY, MEDICARE_TOP5

faiss = pytest.importorskip("faiss")


def test_add_faiss_index_on_a_hub_build_gives_search_top_5(hub, alice, repo_name):
    dst = f"alice/{repo_name}"
    hubembed.build("sample:medicare-faqs", dst, progress=False)
    index = hubembed.load(dst)
    ds = index.dataset
    # Inner product on unit vectors: cosine, the score hubembed reports.
    ds.add_faiss_index(column="embedding", metric_type=faiss.METRIC_INNER_PRODUCT)
    query = index.embed_queries([MEDICARE_QUERY]).numpy()[0]
    scores, examples = ds.get_nearest_examples("embedding", query, k=5)

    hits = index.search(MEDICARE_QUERY, top_k=5)
    assert examples["text"] == [hit["row"]["text"] for hit in hits]
    np.testing.assert_allclose(scores, [hit["score"] for hit in hits], atol=1e-5)
    assert [(hit["corpus_id"], round(hit["score"], 4)) for hit in hits] == MEDICARE_TOP5
    # The rows found carry their vectors: what load_dataset users get.
    np.testing.assert_allclose(np.array(examples["embedding"]), index.embeddings[[8, 7, 3, 9, 10]], atol=0)
