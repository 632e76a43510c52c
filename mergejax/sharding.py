"""Meshes and partition rules for placing checkpoint leaves on devices.

A partition rule is ``(regex, PartitionSpec)``: the first rule whose regex matches a leaf path (with
``re.search``) gives that leaf's spec. Leaves no rule matches get the default: shard the leaf's largest
axis that the device count divides, else replicate. Every leaf becomes a global ``jax.Array`` with a
``NamedSharding`` on a one-axis mesh over all (global) devices, so the same code serves 1 CPU, 8
simulated devices, a GPU or a multi-host slice.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXIS = "shard"
Rule = tuple[str, P]


def make_mesh(devices: Sequence[Any] | None = None, axis: str = AXIS) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every global device), with Auto axis type."""
  devices = list(devices) if devices is not None else jax.devices()
  return Mesh(np.asarray(devices), (axis,), axis_types=(AxisType.Auto,))


def mesh_from_axes(axes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh with named axes of the given sizes (a config's plain ``dict(data=-1, model=1)``): at most one
  size is -1, the devices left over; the mesh takes the first devices (default: every global device) in
  their order. ValueError (one line) when the sizes do not fit the devices."""
  devices = list(devices) if devices is not None else jax.devices()
  names, sizes = tuple(axes), [int(v) for v in axes.values()]
  if not names or any(not isinstance(n, str) or not n for n in names):
    raise ValueError(f"mesh={dict(axes)!r}: expected axis names with sizes, e.g. dict(data=-1, model=1)")
  if sizes.count(-1) > 1 or any(v == 0 or v < -1 for v in sizes):
    raise ValueError(f"mesh={dict(axes)!r}: sizes must be positive, at most one of them -1 (the devices left over)")
  fixed = int(np.prod([v for v in sizes if v != -1]))
  if -1 in sizes:
    if len(devices) % fixed:
      raise ValueError(f"mesh={dict(axes)!r}: {len(devices)} devices are not a multiple of {fixed}")
    sizes[sizes.index(-1)] = len(devices) // fixed
  n = int(np.prod(sizes))
  if n > len(devices):
    raise ValueError(f"mesh={dict(axes)!r} needs {n} devices, there are {len(devices)}")
  if n == len(devices):
    return jax.make_mesh(tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices)
  return Mesh(np.asarray(devices[:n]).reshape(sizes), names, axis_types=(AxisType.Auto,) * len(names))


def shard_bytes(shape: Sequence[int], itemsize: int, spec: P, axis_sizes: Mapping[str, int]) -> int:
  """Bytes one device holds of a leaf of ``shape`` under ``spec`` on a mesh of ``axis_sizes`` (a split
  dimension's shard rounded up, as XLA pads it)."""
  n = itemsize
  for i, d in enumerate(shape):
    names = spec[i] if i < len(spec) else None
    names = () if names is None else ((names,) if isinstance(names, str) else tuple(names))
    k = int(np.prod([axis_sizes[a] for a in names])) if names else 1
    n *= -(-int(d) // k)
  return n


def default_spec(shape: Sequence[int], n_devices: int, axis: str = AXIS) -> P:
  """Shard the largest axis divisible by ``n_devices`` (ties: the first); replicate if none."""
  if n_devices <= 1 or not shape:
    return P()
  best = None
  for i, d in enumerate(shape):
    if d % n_devices == 0 and d > 0 and (best is None or d > shape[best]):
      best = i
  if best is None:
    return P()
  return P(*([None] * best + [axis]))


def parse_rules(text: str | Sequence[Rule] | None) -> list[Rule]:
  """Rules from a list of (regex, PartitionSpec) or a string ``"regex=spec;regex=spec"``.

  In the string form a spec is a comma list of axis names or ``None`` per dimension, e.g.
  ``"embed_tokens=shard,None;.*=None"``; an empty spec means replicated.
  """
  if not text:
    return []
  if not isinstance(text, str):
    out = []
    for pat, spec in text:
      re.compile(pat)
      out.append((pat, spec if isinstance(spec, P) else P(*spec)))
    return out
  out = []
  for item in text.split(";"):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      raise ValueError(f"partition rule {item!r} must look like 'regex=axis,None'")
    pat, spec = item.rsplit("=", 1)
    try:
      re.compile(pat)
    except re.error as e:
      raise ValueError(f"partition rule {item!r}: bad regex: {e}") from None
    dims = [d.strip() for d in spec.split(",")] if spec.strip() else []
    out.append((pat, P(*[None if d in ("None", "") else d for d in dims])))
  return out


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[Rule] = ()) -> P:
  """The PartitionSpec of one leaf: first matching rule, else :func:`default_spec`.

  Raises ValueError naming the leaf when a rule's spec does not fit the leaf's shape.
  """
  n = mesh.devices.size
  for pat, spec in rules:
    if re.search(pat, path):
      if len(spec) > len(shape):
        raise ValueError(f"leaf '{path}': rule {pat!r} gives {spec} for a rank-{len(shape)} leaf")
      for d, names in zip(shape, spec):
        if names is None:
          continue
        names = (names,) if isinstance(names, str) else tuple(names)
        size = int(np.prod([mesh.shape[a] for a in names]))
        if d % size:
          raise ValueError(f"leaf '{path}': rule {pat!r} shards an axis of size {d} over {size} devices")
      return spec
  return default_spec(shape, n, mesh.axis_names[0])


def sharding_for(path: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[Rule] = ()) -> NamedSharding:
  return NamedSharding(mesh, spec_for(path, shape, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def cpu_device_count(requested: int = 0) -> int:
  """How many devices to split a CPU host into: ``requested``, or for 0 one per core (at most 8).

  XLA:CPU runs one program at a time per device; the embedded world's training runs and the study's
  evaluation batches are small, so one device per core runs them side by side (measured ~1.3-1.4x
  faster than one device using every core: docs/BENCHMARKS.md). A count already forced through
  XLA_FLAGS (as in the tests) is left alone: 1.
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return 1
  if requested:
    return max(1, int(requested))
  return max(1, min(8, host_cores()))


def host_cores() -> int:
  """The CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_host_cpu(requested: int = 0) -> int:
  """Sets ``jax_num_cpu_devices`` to :func:`cpu_device_count` (call before JAX starts its backends; the
  CPU backend is only the default where there is no accelerator). Returns the count."""
  n = cpu_device_count(requested)
  if n > 1:
    jax.config.update("jax_num_cpu_devices", n)
  return n


def broadcast_json(obj: Any) -> Any:
  """Sends a JSON-able object from process 0 to every process (e.g. metrics, a results-store row)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top  # multi-process runs only
  payload = np.frombuffer(json.dumps(obj).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(payload.size)))
  buf = np.zeros(n, np.uint8)
  buf[:payload.size] = payload
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return json.loads(buf.tobytes().decode())
