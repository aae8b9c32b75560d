import pytest

from orchestrator.store import ExperienceStore, StoreError


def _publish(store, sid, version=0, group="g"):
    store.begin(group, sid, version)
    store.write(group, sid, "payload", {"x": sid}, ready=False)
    return store.mark_ready(group, sid, "payload", meta={"num_active": 3})


def test_rows_are_invisible_until_every_field_is_ready():
    store = ExperienceStore(["g"], field_names=("obs", "reward"))
    store.begin("g", "s1", 0)
    store.write("g", "s1", "obs", [1, 2])
    assert store.ready_rows("g") == []
    store.write("g", "s1", "reward", None, ready=False)
    assert store.ready_rows("g") == []
    assert store.mark_ready("g", "s1", "reward") is True
    (row,) = store.ready_rows("g")
    assert row.sample_id == "s1" and row.fields["obs"] == [1, 2]


def test_duplicate_sample_ids_are_refused():
    store = ExperienceStore(["g"])
    _publish(store, "it0-req0-g")
    with pytest.raises(StoreError, match="duplicate sample_id"):
        store.begin("g", "it0-req0-g", 0)
    store.begin("g", "it0-req1-g", 0)
    with pytest.raises(StoreError, match="already pending"):
        store.begin("g", "it0-req1-g", 0)


def test_rows_are_filtered_by_version_and_consumed_once():
    store = ExperienceStore(["g"])
    _publish(store, "b", version=1)
    _publish(store, "a", version=1)
    _publish(store, "c", version=0)
    assert [r.sample_id for r in store.ready_rows("g", policy_version=1)] == ["a", "b"]
    store.consume("g", ["a", "b"])
    assert store.ready_rows("g", policy_version=1) == []
    assert store.evict(older_than_version=2) == 2
    assert [r.sample_id for r in store.ready_rows("g")] == ["c"]


def test_aborted_row_of_a_dead_worker_is_regenerated_under_the_same_id():
    store = ExperienceStore(["g"])
    store.begin("g", "it0-req0-g", 0)
    store.write("g", "it0-req0-g", "payload", "lost", ready=False)
    store.abort("g", "it0-req0-g")
    assert store.ready_rows("g") == [] and store.tables["g"].aborted == 1
    assert _publish(store, "it0-req0-g")
    (row,) = store.ready_rows("g")
    assert row.fields["payload"] == {"x": "it0-req0-g"}


def test_a_published_row_lost_with_its_node_is_withdrawn_and_published_again_under_its_id():
    store = ExperienceStore(["g"])
    store.begin("g", "it0-req0-g", 0, meta={"worker": 1})
    store.write("g", "it0-req0-g", "payload", "on the dead node", ready=False)
    store.mark_ready("g", "it0-req0-g", "payload")
    store.consume("g", ["it0-req0-g"])  # handed to a trainer that could not read it
    assert store.withdraw("g", "it0-req0-g").meta == {"worker": 1}
    assert store.ready_rows("g", include_consumed=True) == [] and store.tables["g"].lost == 1
    assert _publish(store, "it0-req0-g")
    (row,) = store.ready_rows("g")
    assert row.fields["payload"] == {"x": "it0-req0-g"} and not row.consumed
    store.begin("g", "it0-req1-g", 0)
    with pytest.raises(StoreError, match="cannot withdraw 'it0-req1-g': not a visible row"):
        store.withdraw("g", "it0-req1-g")


def test_unknown_group_field_and_row_are_named():
    store = ExperienceStore(["g"])
    with pytest.raises(StoreError, match="no table for group 'h'"):
        store.begin("h", "s", 0)
    store.begin("g", "s", 0)
    with pytest.raises(StoreError, match="unknown field 'nope'"):
        store.write("g", "s", "nope", 1)
    with pytest.raises(StoreError, match="no pending row 'zz'"):
        store.mark_ready("g", "zz", "payload")
    with pytest.raises(StoreError, match="not a visible row"):
        store.consume("g", ["s"])
