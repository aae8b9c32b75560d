"""Training-state swapping (flexmarl.state_swap): round trips are bit-identical, training is unchanged
by a swap, a lost remote state fails clearly and the checkpoint taken before still restores it."""

import os
import time

import pytest
import torch

from flexmarl.state_swap import StateLostError, TrainingState, swap_in, swap_out

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-CPU local Ray instance for this module (the remote location is Ray's object store)."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=200 * 1024 * 1024)
    yield
    ray.shutdown()


class Net(torch.nn.Module):
    """Parameters, a tied weight, a buffer: everything a state has to carry."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh())
        self.body_out = torch.nn.Linear(16, 8)
        self.head = torch.nn.Linear(8, 11, bias=False)
        self.head.weight = self.embed.weight  # tied, as in small language models

    def forward(self, tokens):
        return self.head(self.body_out(self.body(self.embed(tokens))))


def trained(steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    net = Net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(steps):
        train_step(net, optimizer, step)
    return net, optimizer


def train_step(net, optimizer, step: int) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(0, 11, (32,), generator=generator)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(tokens), (tokens + 1) % 11).backward()
    optimizer.step()


def snapshot(net, optimizer) -> dict:
    """Deep copies of every parameter, buffer and optimizer-state tensor."""
    return {"model": {k: v.clone() for k, v in net.state_dict().items()},
            "adam": {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state_dict()["state"].items()}}


def assert_identical(before: dict, after: dict) -> None:
    assert before["model"].keys() == after["model"].keys() and before["adam"].keys() == after["adam"].keys()
    for name, tensor in before["model"].items():
        assert torch.equal(tensor, after["model"][name]), name
    for index, moments in before["adam"].items():
        for key, tensor in moments.items():  # exp_avg, exp_avg_sq, step
            assert torch.equal(tensor, after["adam"][index][key]), (index, key)


@pytest.mark.parametrize("where", ["host", "remote"])
def test_round_trip_is_bit_identical(where, request):
    if where == "remote":
        request.getfixturevalue("ray_cluster")
    net, optimizer = trained()
    before = snapshot(net, optimizer)
    extra = {"value_norm": {"mean": torch.tensor([0.5, 1.5]), "count": 7}}
    state = swap_out(net, optimizer, extra, where=where, name="group speaker")
    assert state.location == where and state.nbytes > 0
    assert all(p.numel() == 0 for p in net.parameters()) and not optimizer.state  # memory released
    returned = swap_in(state, net, optimizer)
    assert_identical(before, snapshot(net, optimizer))
    assert torch.equal(returned["value_norm"]["mean"], extra["value_norm"]["mean"])
    assert returned["value_norm"]["count"] == 7
    assert net.head.weight is net.embed.weight  # ties survive
    with pytest.raises(ValueError, match="already swapped into"):
        state.to("host")


def test_any_location_to_any_other(ray_cluster):
    net, optimizer = trained()
    before = snapshot(net, optimizer)
    state = swap_out(net, optimizer, None, where="device")
    for location in ["remote", "host", "remote", "device", "host", "device", "remote"]:
        assert state.to(location).location == location
    swap_in(state, net, optimizer)
    assert_identical(before, snapshot(net, optimizer))


def test_training_with_a_swap_between_steps_ends_with_the_same_parameters(ray_cluster):
    reference, reference_optimizer = trained(steps=6)
    net, optimizer = trained(steps=3)
    for step, where in zip(range(3, 6), ["host", "remote", "host"]):
        swap_in(swap_out(net, optimizer, None, where=where), net, optimizer)
        train_step(net, optimizer, step)
    assert_identical(snapshot(reference, reference_optimizer), snapshot(net, optimizer))


def test_a_lost_remote_state_fails_clearly_and_the_checkpoint_still_restores(ray_cluster, tmp_path):
    import ray

    net, optimizer = trained()
    before = snapshot(net, optimizer)
    TrainingState.capture(net, optimizer, {"iteration": 3}, name="group listener").save(tmp_path / "ckpt.pt")

    @ray.remote(num_cpus=0)
    class Trainer:
        """Another process that swaps its state out to the object store and then dies (the owner)."""

        def swap_out_remote(self, state: TrainingState) -> TrainingState:
            net, optimizer = trained()
            swap_in(state, net, optimizer)
            # > 100 KiB, so Ray keeps it in the object store instead of inlining it into the reply
            return swap_out(net, optimizer, {"buffer": torch.zeros(128_000)}, where="remote", name="group listener")

    trainer = Trainer.remote()
    remote_state = ray.get(trainer.swap_out_remote.remote(TrainingState.load(tmp_path / "ckpt.pt")))
    ray.kill(trainer)
    wait_until_lost(remote_state.remote_ref)
    swap_out(net, optimizer, None, where="host")  # our copy is gone too: only the checkpoint is left
    with pytest.raises(StateLostError, match="'group listener'.*lost.*OwnerDiedError"):
        swap_in(remote_state, net, optimizer)
    extra = swap_in(TrainingState.load(tmp_path / "ckpt.pt"), net, optimizer)
    assert_identical(before, snapshot(net, optimizer))
    assert extra == {"iteration": 3}


def wait_until_lost(ref, timeout_s: float = 60.0) -> None:
    """The object store frees a dead owner's objects a moment after the owner is gone."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(ref, timeout=10)
        except ray.exceptions.ObjectLostError:
            return
        time.sleep(0.2)
    raise AssertionError(f"object {ref.hex()} still readable {timeout_s} s after its owner was killed")
