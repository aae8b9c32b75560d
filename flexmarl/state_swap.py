"""Training-state swapping: a trainer's weights + optimizer state + extra tensors move between the
accelerator, host memory and the Ray object store through one call, `state.to(location)`, wherever the
state lives now (FlexMARL's training engine, arXiv:2602.09578: "training-state swapping" lets agents
whose models do not all fit share accelerators; the scheduler decides when, trainers only swap).

Locations:
- "device": the accelerator the module lives on (cuda when available, else cpu). A state captured from
  a module holds references to the module's own tensors there (no copy).
- "host": a separate CPU copy (pinned memory when CUDA is available, so copies back are fast). On a
  CPU-only machine device and host are both CPU memory: going to host clones the tensors into new
  memory and swap_out releases the module's, so the old memory is really freed; coming back to the
  device adopts the host copy as the live tensors (no second copy is needed).
- "remote": the Ray object store (`ray.put` of the tensors' bytes as numpy arrays), so another process
  or node can bring it back with `to("device")` (`ray.get`). The object is owned by the process that
  put it; if that process dies (or the object is otherwise lost) the state cannot come back and
  `to()` raises StateLostError naming the state: restore from the last checkpoint (`save` / `load`).
  (Ray copies a small object, under ~100 KiB, into the process that receives its reference; such a
  copy outlives its owner.)

What moves: every parameter of the module (each Parameter object once, so tied weights stay tied),
every buffer (persistent or not), the optimizer's `state_dict()` (Adam's exp_avg, exp_avg_sq and step
tensors, and the param_groups' hyperparameters by value), and `extra`, any nested dict/list/tuple whose
tensors move and whose other values are kept as they are (e.g. a value normaliser's moments).
Gradients do not move: swap between optimizer steps (swap_out drops them).
Tensors that were on the CPU while the module was on an accelerator (Adam's `step` when not
capturable) go back to the CPU, not the accelerator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from flexmarl.devices import resolve_device

Location = Literal["device", "host", "remote"]
LOCATIONS = ("device", "host", "remote")


class StateLostError(RuntimeError):
    """A remote training state could not be fetched back (its object was lost or its owner died)."""


@dataclass
class _Leaf:
    """One tensor away from the device: a CPU tensor (host) or its raw bytes (remote)."""

    data: Any
    """torch.Tensor on the CPU (host), or a uint8 numpy array of its bytes (remote)."""
    dtype: torch.dtype
    """Element type to rebuild from raw bytes."""
    shape: tuple[int, ...]
    """Shape to rebuild from raw bytes."""
    on_device: bool
    """True when the tensor lived on the module's device (False: a CPU tensor kept on the CPU, e.g. Adam's step)."""


@dataclass
class TrainingState:
    """A trainer's state (parameters, buffers, optimizer state, extra tensors) at one location."""

    name: str
    """Which state this is, for error messages (e.g. the model group's trainer)."""
    device: torch.device
    """The module's device: where `to("device")` puts the tensors that lived there."""
    nbytes: int
    """Bytes of all tensors together (the same at every location)."""
    location: Location = "device"
    """Where the tensors are now."""
    payload: dict | None = None
    """{"parameters": [...], "buffers": {name: ...}, "optimizer": state_dict | None, "extra": ...}:
    tensors at "device", _Leaf at "host" and "remote" (raw bytes), None once remote or swapped in."""
    remote_ref: Any = None
    """ObjectRef of the payload while the state is remote."""
    swapped_in: bool = False
    """True once swap_in installed the tensors into a module: the state is then used up."""

    @classmethod
    def capture(cls, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                extra: Any = None, name: str = "training state") -> "TrainingState":
        """The module's and optimizer's current tensors, by reference, at location "device": move or
        save it before training goes on (training changes those tensors in place)."""
        parameters = list(module.parameters())  # deduplicated: tied weights appear once
        device = parameters[0].device if parameters else torch.device("cpu")
        payload = _map({  # new containers (the optimizer's per-parameter dicts are its own), same tensors
            "parameters": [p.detach() for p in parameters],
            "buffers": dict(module.named_buffers(remove_duplicate=False)),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "extra": extra,
        }, lambda t: t)
        nbytes = sum(t.numel() * t.element_size() for t in _tensors(payload))
        return cls(name=name, device=device, nbytes=nbytes, payload=payload)

    def to(self, location: Location) -> "TrainingState":
        """Move every tensor to `location` ("device", "host" or "remote"), from wherever it is now;
        returns self. Raises StateLostError when a remote state cannot be fetched."""
        if location not in LOCATIONS:
            raise ValueError(f"location {location!r}; allowed: {', '.join(LOCATIONS)}")
        if self.swapped_in:
            raise ValueError(f"{self.name}: already swapped into its module; call swap_out to move it again")
        if location == self.location:
            return self
        if self.location == "remote":
            self._fetch()
        if location == "host" and self.location == "device":
            self.payload = _map(self.payload, lambda t: _Leaf(_host_copy(t), t.dtype, tuple(t.shape),
                                                                t.device == self.device))
            _synchronize(self.device)
        elif location == "device":
            self.payload = _map(self.payload, lambda leaf: _to_device(leaf, self.device))
            _synchronize(self.device)
        elif location == "remote":
            self._put()
        self.location = location
        return self

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (CPU tensors, torch.save) from any location; the state stays where it is."""
        if self.location == "device":
            flags = [t.device == self.device for t in _tensors(self.payload)]
            payload = _map(self.payload, lambda t: t.detach().cpu())
        else:
            leaves = self._get_remote() if self.location == "remote" else self.payload
            flags = [leaf.on_device for leaf in _tensors(leaves)]
            payload = _map(leaves, _host_tensor if self.location == "remote" else (lambda leaf: leaf.data))
        torch.save({"name": self.name, "payload": payload, "on_device": flags}, path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "TrainingState":
        """A state at location "host" from a checkpoint written by `save`; `device`: where swap_in puts it."""
        saved = torch.load(path, weights_only=False)
        flags = iter(saved["on_device"])
        payload = _map(saved["payload"], lambda t: _Leaf(_host_copy(t), t.dtype, tuple(t.shape), next(flags)))
        nbytes = sum(leaf.data.numel() * leaf.data.element_size() for leaf in _tensors(payload))
        return cls(name=saved["name"], device=resolve_device(device), nbytes=nbytes, location="host",
                   payload=payload)

    def _put(self) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError(f"{self.name}: moving to 'remote' needs Ray (ray.init or a cluster)")
        if self.location == "device":  # to bytes straight from the device tensors (one copy less)
            self.payload = _map(self.payload, lambda t: _Leaf(t.detach(), t.dtype, tuple(t.shape),
                                                                t.device == self.device))
        wire = _map(self.payload, lambda leaf: _Leaf(_raw_bytes(leaf.data), leaf.dtype, leaf.shape, leaf.on_device))
        self.remote_ref = ray.put(wire)  # copies into the object store; the local tensors are dropped
        self.payload = None

    def _get_remote(self) -> dict:
        import ray

        try:
            return ray.get(self.remote_ref)
        except ray.exceptions.ObjectLostError as error:  # includes OwnerDiedError, ObjectFreedError
            raise StateLostError(
                f"training state {self.name!r} ({self.nbytes / 2**20:.1f} MiB) was in the Ray object store "
                f"as {self.remote_ref.hex()} and is lost ({type(error).__name__}: its owner process died "
                f"or the object was freed); restore it from the last checkpoint") from error

    def _fetch(self) -> None:
        """remote -> host: copy the bytes out of the object store into (pinned) CPU tensors."""
        wire = self._get_remote()
        self.payload = _map(wire, lambda leaf: _Leaf(_host_tensor(leaf), leaf.dtype, leaf.shape, leaf.on_device))
        self.remote_ref = None
        self.location = "host"


def swap_out(module: torch.nn.Module, optimizer: torch.optim.Optimizer | None, extra: Any = None,
             where: Location = "host", name: str = "training state") -> TrainingState:
    """Take the module's parameters and buffers, the optimizer's state and `extra` to `where`, and
    release them in the module and optimizer (parameters become empty tensors, the optimizer's state
    is cleared, gradients are dropped), so their memory is freed. The Parameter objects stay, so the
    optimizer still refers to them and swap_in can refill them."""
    state = TrainingState.capture(module, optimizer, extra, name).to(where)
    for parameter in module.parameters():
        parameter.data = torch.empty(0, dtype=parameter.dtype, device=parameter.device)
        parameter.grad = None
    for submodule in module.modules():
        for buffer_name, buffer in submodule._buffers.items():
            if buffer is not None:
                submodule._buffers[buffer_name] = torch.empty(0, dtype=buffer.dtype, device=buffer.device)
    if optimizer is not None:
        optimizer.state.clear()
    return state


def swap_in(state: TrainingState, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> Any:
    """Bring `state` to the module's device and install it in place: parameters (same Parameter
    objects), buffers, optimizer state. Returns the state's `extra`. The state is used up."""
    parameters = list(module.parameters())
    state.device = parameters[0].device if parameters else state.device
    payload = state.to("device").payload
    if len(payload["parameters"]) != len(parameters):
        raise ValueError(f"{state.name}: holds {len(payload['parameters'])} parameters, the module has {len(parameters)}")
    for parameter, tensor in zip(parameters, payload["parameters"]):
        parameter.data = tensor
    owners = dict(module.named_modules(remove_duplicate=False))
    for qualified_name, tensor in payload["buffers"].items():
        owner_name, _, buffer_name = qualified_name.rpartition(".")
        owners[owner_name]._buffers[buffer_name] = tensor
    if optimizer is not None and payload["optimizer"] is not None:
        optimizer.load_state_dict(payload["optimizer"])
    state.payload, state.swapped_in = None, True
    return payload["extra"]


def _map(obj: Any, fn: Callable[[Any], Any], memo: dict | None = None) -> Any:
    """obj with fn applied to every tensor / _Leaf inside nested dicts, lists and tuples (new
    containers). A tensor reached twice (a buffer shared by two submodules) is mapped once, so it stays
    shared wherever the state goes (pickling keeps shared references too)."""
    memo = {} if memo is None else memo
    if isinstance(obj, (torch.Tensor, _Leaf)):
        if id(obj) not in memo:
            memo[id(obj)] = fn(obj)
        return memo[id(obj)]
    if isinstance(obj, dict):
        return {key: _map(value, fn, memo) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(value, fn, memo) for value in obj)
    return obj


def _tensors(obj: Any) -> list:
    """Every distinct tensor / _Leaf in obj, in traversal order."""
    found: list = []
    _map(obj, found.append)
    return found


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy in new memory (pinned when CUDA is there, for fast copies back)."""
    tensor = tensor.detach()
    if torch.cuda.is_available():
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)
    return tensor.clone()


def _to_device(leaf: _Leaf, device: torch.device) -> torch.Tensor:
    if not leaf.on_device:
        return leaf.data
    return leaf.data.to(device, non_blocking=True)  # a no-op on a CPU device: the host copy is adopted


def _raw_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a uint8 numpy array (a view for CPU tensors: ray.put does the one copy)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _host_tensor(leaf: _Leaf) -> torch.Tensor:
    """A writable CPU tensor from raw bytes in the object store (read-only shared memory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffer: we copy it right away
        raw = torch.from_numpy(leaf.data).view(leaf.dtype).reshape(leaf.shape)
    return _host_copy(raw)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
