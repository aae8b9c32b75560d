import numpy as np

from flexmarl.semantic_ids import build_semantic_ids


def test_codes_are_unique_round_trip_and_invalid_codes_name_no_item():
    rng = np.random.default_rng(0)
    embeddings = np.concatenate([rng.normal(c, 0.1, (50, 4)) for c in (-3.0, 0.0, 3.0)])
    ids = build_semantic_ids(embeddings, levels=2, branching=4)
    assert len({tuple(c) for c in ids.codes.tolist()}) == len(embeddings) and ids.length == 3
    assert all(ids.item(code) == i for i, code in enumerate(ids.codes))
    assert ids.item([ids.vocab + 1, 0, 0]) is None
    # the first level separates the three well-separated clusters
    assert len({tuple(np.unique(ids.codes[k * 50:(k + 1) * 50, 0])) for k in range(3)}) == 3
