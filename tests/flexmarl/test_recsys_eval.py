import numpy as np

from envs import make_env
from flexmarl.recsys_eval import offline_metrics


def test_offline_negatives_are_unrated_items_for_every_user():
    """Every user, heavy raters included, gets its held-out item and `negatives` items it never rated."""
    env = make_env("recsys/movielens", num_envs=1)
    seen = {}

    def record(obs, scenario, users, candidates):
        seen["users"], seen["candidates"] = users, candidates
        return np.zeros(candidates.shape)

    offline_metrics(env, record, users=env.data.num_users, negatives=19, seed=1)
    data = env.data
    for u, row in zip(seen["users"], seen["candidates"]):
        rated = set(data.train[u]) | set(data.test[u])
        assert len(set(row)) == 20 and data.test[u][0] in row
        assert sum(int(i) in rated for i in row) == 1
