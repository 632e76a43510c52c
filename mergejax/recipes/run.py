"""Running a recipe :class:`~mergejax.recipes.mergekit.Plan`: open the inputs (LoRA applied, vocabularies
mapped, dtypes aligned), give every leaf its hyperparameters, merge through the engine, write the output
with its tokenizer, config and model card.

``lam`` and the weights reach kernels per leaf (:meth:`MergeMethod.with_leaf_hparams`); leaves that differ
in another hyperparameter (e.g. a per-layer ``density`` gradient) are merged in one engine pass per
distinct value, all writing into one output (the passes share compiled kernels). A method with
model-wide statistics (TIES with ``scope: global``) needs those other values to agree across the model.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mergejax import tree as tree_lib
from mergejax.checkpoints import detect, inputs as inputs_lib, output as output_lib
from mergejax.checkpoints.base import LeafSpec, SpanSink, StagedSink
from mergejax.checkpoints.mapped import RenamedSource, SubsetSource, host_leaf
from mergejax.checkpoints.vocab import TokenSource
from mergejax.methods.base import LEAF_HPARAMS
from mergejax.recipes import mergekit as mk
from mergejax.recipes.mergekit import RecipeError

_NUM_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


class _SharedSink(StagedSink):
  """One sink written by several engine passes: its layout planned once for every leaf (the passes'
  ``begin`` is a no-op), each pass's writes forwarded, its ``finalize`` left to the caller."""

  def __init__(self, sink: Any):
    self.sink = sink
    self.manifests: list[dict] = []

  def begin(self, specs: Sequence[LeafSpec]) -> None:
    del specs  # the layout of every leaf was planned up front

  def write(self, leaves: Mapping[str, Any]) -> None:
    self.sink.write(leaves)

  def finalize(self, metadata: Mapping[str, Any]) -> None:
    self.manifests.append(dict(metadata))

  def abort(self) -> None:
    if isinstance(self.sink, StagedSink):
      self.sink.abort()


class _SharedSpanSink(_SharedSink, SpanSink):
  """:class:`_SharedSink` over a sink that takes leaves piece by piece."""

  def write_span(self, path: str, start: int, data: np.ndarray) -> None:
    self.sink.write_span(path, start, data)

  def mark_written(self, path: str) -> None:
    self.sink.mark_written(path)


def _num_layers(donor: pathlib.Path | None, specs: Sequence[LeafSpec]) -> int:
  if donor is not None and (donor / "config.json").is_file():
    cfg = json.loads((donor / "config.json").read_text())
    for c in (cfg, cfg.get("text_config") or {}):
      for k in _NUM_LAYERS_KEYS:
        if isinstance(c.get(k), int):
          return int(c[k])
  idx = [i for i in (mk.layer_index(s.path) for s in specs) if i is not None]
  return max(idx) + 1 if idx else 1


def _chat_template(recipe: mk.Recipe, dirs: Sequence[pathlib.Path | None]) -> str | None:
  """The chat template the recipe asks for: 'auto' (the most common among the inputs), or Jinja text."""
  t = recipe.chat_template
  if t is None:
    return None
  if t == "auto":
    found = []
    for d in dirs:
      if d is None:
        continue
      if (d / "chat_template.jinja").is_file():
        found.append((d / "chat_template.jinja").read_text().strip())
        continue
      try:
        v = json.loads((d / "tokenizer_config.json").read_text()).get("chat_template")
      except (OSError, ValueError):
        v = None
      if isinstance(v, list):
        v = next((x.get("template") for x in v if isinstance(x, dict) and x.get("name") == "default"), None)
      if isinstance(v, str) and v.strip():
        found.append(v.strip())
    return collections.Counter(found).most_common(1)[0][0] if found else None
  if len(t) < 256 and "\n" not in t and "{" not in t:
    raise RecipeError(f"chat_template: {t!r}: named templates are not bundled with mergejax; give the Jinja "
                      "template itself, or 'auto' (the inputs' most common template)")
  if len(t) < 20 or "{" not in t:
    raise RecipeError(f"chat_template: {t[:40]!r} is not a Jinja chat template")
  return t


def _tokenizer_args(recipe: mk.Recipe, names: Sequence[mk.ModelRef]) -> tuple[Any, dict[str, TokenSource]]:
  src = recipe.tokenizer_source
  if src is not None and src not in ("base", "union"):
    ref = mk.ModelRef.parse(src)
    src = names.index(ref) if ref in names else str(ref.path)
  tokens = {}
  for tok, o in recipe.tokens.items():
    m = None
    if o.model is not None:
      if o.model not in names:
        raise RecipeError(f"tokenizer.tokens.{tok}.source: {o.model} is not one of the merged models")
      m = names.index(o.model)
    tokens[tok] = TokenSource(o.kind, model=m, token=o.token, token_id=o.token_id, force=o.force)
  return src, tokens


def _leaf_groups(pl: mk.Plan, specs: Sequence[LeafSpec], t_of: Callable[[str], float], n_experts: int
                 ) -> tuple[dict[str, list[str]], dict[str, dict], dict[str, Any]]:
  """Float leaves grouped into engine passes: ({key: leaves}, {key: hyperparameters}, {key: method}).

  Leaves whose hyperparameters agree apart from those kernels take per leaf (lam, weights) form one
  pass; lam and weights then vary leaf by leaf inside it (MergeMethod.with_leaf_hparams)."""
  from mergejax import methods  # pylint: disable=g-import-not-at-top  (JAX: only when a merge runs)
  groups: dict[str, list[str]] = collections.OrderedDict()
  hps: dict[str, dict] = {}
  per_leaf: dict[str, dict] = {}
  for s in specs:
    if not tree_lib.is_float_dtype(s.dtype):
      continue
    hp = mk.leaf_hparams(pl, s.path, t_of(s.path))
    per_leaf[s.path] = {k: v for k, v in hp.items() if k in LEAF_HPARAMS}
    fixed = {k: v for k, v in hp.items() if k not in LEAF_HPARAMS}
    key = repr(sorted(fixed.items()))
    groups.setdefault(key, []).append(s.path)
    hps.setdefault(key, hp)  # lam/weights of the group's first leaf: the method's defaults
  if not groups:
    raise RecipeError("models: the checkpoints have no float leaves to merge")
  merge_methods = {}
  for key, hp in hps.items():
    leaf = groups[key][0]
    try:
      m = methods.get(pl.method, **hp).with_leaf_hparams(per_leaf.get)
      for leaf in groups[key]:  # every leaf's values checked before anything runs
        m.context(n_experts, 0, leaf)
    except ValueError as e:
      raise RecipeError(f"tensor '{leaf}': {e}") from None
    m.check_experts(n_experts)
    merge_methods[key] = m
  if len(groups) > 1 and any(m.compute_stats is not None and not m.local_stats for m in merge_methods.values()):
    raise RecipeError(f"parameters: {pl.method} with model-wide statistics (e.g. scope: global) needs one value of "
                      "each parameter other than lambda and weight for the whole model; the recipe varies them "
                      "across tensors")
  varying = len(groups) == 1 and len({repr(v) for v in per_leaf.values()}) > 1
  names = sorted({k for v in per_leaf.values() for k in v
                  if len({repr(w.get(k)) for w in per_leaf.values()}) > 1})  # lam / weights that vary by tensor
  return groups, hps, {"methods": merge_methods, "varying": varying, "varying_names": names}


def _validate(reference: Any, others: Sequence[Any]) -> None:
  from mergejax import engine  # pylint: disable=g-import-not-at-top  (JAX: only when a merge runs)
  try:
    engine.validate_sources(reference, others)
  except ValueError as e:
    raise ValueError(inputs_lib.vocab_mismatch_hint(str(e)).replace("--tokenizer_source=union or base",
                                                                     "tokenizer_source: union or base")) from None


def _written_dtype(manifests: Sequence[Mapping[str, Any]]) -> str | None:
  """The float dtype(s) the merge passes wrote (each pass's manifest states its own)."""
  names = sorted({n.strip() for m in manifests for n in str(m.get("dtype") or "").split(",") if n.strip()})
  return ", ".join(names) or None


def _hparams_manifest(passes: Sequence[tuple[dict, dict, dict]]) -> dict[str, Any]:
  """The manifest's ``hparams`` (one set for the whole merge) or ``per_tensor_hparams`` (one per pass)."""
  varying = sorted({n for _, _, info in passes for n in info.get("varying_names", ())})
  if len(passes) == 1 and len(passes[0][0]) == 1 and not passes[0][2]["varying"]:
    return {"hparams": dict(next(iter(passes[0][1].values()))), "per_tensor_hparams": None, "varying_by_tensor": []}
  return {"hparams": {}, "varying_by_tensor": varying, "per_tensor_hparams": [
      {"hparams": {k: v for k, v in hps[key].items() if k not in LEAF_HPARAMS}, "leaves": len(paths)}
      for groups, hps, _ in passes for key, paths in groups.items()]}


def run(pl: mk.Plan, output: str, *, output_format: str | None = None, overwrite: bool = False, seed: int = 0,
        shard_bytes: int = 4 << 30, memory_budget_bytes: float | None = 4 << 30, progress: bool = False,
        mesh: Any = None) -> pathlib.Path:
  """Runs the plan into ``output`` (atomic; nothing is left behind on failure)."""
  if pl.method == "passthrough":
    return _passthrough(pl, output, output_format=output_format, overwrite=overwrite, shard_bytes=shard_bytes)
  if pl.parts:
    return _run_slices(pl, output, output_format=output_format, overwrite=overwrite, seed=seed,
                       shard_bytes=shard_bytes, memory_budget_bytes=memory_budget_bytes, progress=progress, mesh=mesh)
  from mergejax import sharding  # pylint: disable=g-import-not-at-top
  r = pl.recipe
  names = ([pl.base] if pl.base is not None else []) + list(pl.inputs)
  tok_source, tokens = _tokenizer_args(r, names)
  opened = inputs_lib.open_inputs(pl.base, list(pl.inputs), dtype=r.out_dtype or r.dtype,
                                  tokenizer_source=tok_source, tokens=tokens, pad_to_multiple_of=r.pad_to_multiple_of)
  reference = opened.reference
  _validate(reference, opened.experts if opened.base is not None else opened.experts[1:])
  specs = reference.specs()
  n_layers = _num_layers(opened.donor_dir, specs)
  if pl.slice_index is not None:
    end = next(e for e in pl.entries if e is not None).layer_range[1]
    if end != n_layers:  # one slice over part of the layers: the output has only those
      return _run_slices(dataclasses.replace(pl, parts=(pl,)), output, output_format=output_format,
                         overwrite=overwrite, seed=seed, shard_bytes=shard_bytes,
                         memory_budget_bytes=memory_budget_bytes, progress=progress, mesh=mesh)
  groups, hps, info = _leaf_groups(pl, specs, lambda p: mk.layer_t(p, n_layers), len(opened.experts))
  others_leaves = [s.path for s in specs if not tree_lib.is_float_dtype(s.dtype)]
  first = next(iter(groups))
  groups[first] = groups[first] + others_leaves
  out_path = pathlib.Path(output)
  output_lib.check_output_path(out_path, [detect.input_path(x.path) for x in names]
                               + [detect.input_path(x.lora) for x in names if x.lora], overwrite)
  data = mk.merge_data(pl)
  if data is not None:  # the models loaded and their statistics computed once the inputs and output check out
    from mergejax import expert_data  # pylint: disable=g-import-not-at-top
    info["methods"] = {key: expert_data.bind_checkpoints(m, pl.base.path if pl.base is not None else None,
                                                         [r.path for r in pl.inputs], *data)
                       for key, m in info["methods"].items()}
  rules = sharding.parse_rules("")
  mesh = mesh if mesh is not None else sharding.make_mesh()
  dirs = [inputs_lib.model_dir(s) for s in [opened.base, *opened.experts] if s is not None]
  chat = _chat_template(r, dirs)
  fingerprints = [{"role": "base" if pl.base is not None and i == 0 else "expert", "name": str(x), **_fingerprint(x)}
                  for i, x in enumerate(names)] if output_lib.is_primary() else []
  with inputs_lib.staged_sidecars(opened.donor_dir, vocab=opened.vocab, chat_template=chat,
                                  config_updates={}) as sidecar_dir:
    sink = output_lib.open_sink(out_path, reference, output_format=output_format, sidecar_dir=sidecar_dir,
                                shard_bytes=shard_bytes, overwrite=overwrite)
    shared = (_SharedSpanSink if isinstance(sink, SpanSink) else _SharedSink)(sink)
    try:
      if isinstance(sink, StagedSink):
        dt = np.dtype(opened.dtype) if opened.dtype is not None else None
        sink.begin([LeafSpec(s.path, s.shape, dt if dt is not None and tree_lib.is_float_dtype(s.dtype) else s.dtype)
                    for s in specs])
      _merge_passes(shared, [(groups, hps, info, opened.base, opened.experts)], seed=seed, dtype=opened.dtype,
                    mesh=mesh, rules=rules, memory_budget_bytes=memory_budget_bytes, progress=progress)
    except BaseException:
      shared.abort()
      raise
    manifest = {"method": pl.method, **_hparams_manifest([(groups, hps, info)]),
                "seed": seed, "leaves": len(specs), "n_experts": len(opened.experts),
                "dtype": _written_dtype(shared.manifests),
                "inputs": fingerprints, "input_format": reference.format, "command": output_lib.command_line(),
                "recipe": r.text, "mergekit_method": r.merge_method,
                **({"merge_data": {"sources": list(data[0]), **dataclasses.asdict(data[1])}}
                   if data is not None else {}),
                "elapsed_s": sum(m.get("elapsed_s", 0.0) for m in shared.manifests)}
    return sink.finalize(manifest)


def _slice_names(part: mk.Plan, specs: Sequence[LeafSpec], ref: mk.ModelRef, offset: int, first: bool,
                 last: bool) -> dict[str, str]:
  """{output leaf: input leaf} of one source of a slice: its layers in the slice's range moved to the
  output's layers from ``offset``; the embeddings (first slice) and the final norm and head (last slice)."""
  a, b = mk.source_range(part, ref)
  have = max((i for i in (mk.layer_index(s.path) for s in specs) if i is not None), default=-1) + 1
  if b > have:
    raise RecipeError(f"slices[{part.slice_index}].sources: {ref} has {have} layers, the range ends at {b}")
  names = {}
  for s in specs:
    li = mk.layer_index(s.path)
    if li is None:
      pre = any(x in s.path for x in _PRE)
      if (pre and first) or (not pre and last):
        names[s.path] = s.path
    elif a <= li < b:
      names[mk.renumber_layer(s.path, offset + li - a)] = s.path
  return names


def _run_slices(pl: mk.Plan, output: str, *, output_format, overwrite, seed, shard_bytes, memory_budget_bytes,
                progress, mesh) -> pathlib.Path:
  """Several slices merged into consecutive output layers (mergekit's slices with a merge method): slice k's
  sources' layers [a_k, b_k) merged (with slice k's parameters and mergekit's per-slice gradient position
  t = i / (b_k - a_k - 1)) into output layers from the sum of the earlier slices' lengths; the
  embeddings merged from the first slice's sources, the final norm and head from the last's (t = 0)."""
  from mergejax import sharding  # pylint: disable=g-import-not-at-top
  r = pl.recipe
  offsets = mk.slice_offsets(pl)
  dtype = r.out_dtype or r.dtype
  passes, out_specs, opened_all = [], {}, []
  for k, (part, off) in enumerate(zip(pl.parts, offsets)):
    opened = inputs_lib.open_inputs(part.base, list(part.inputs), dtype=dtype)
    dtype = dtype or opened.dtype
    opened_all.append(opened)
    refs = ([part.base] if part.base is not None else []) + list(part.inputs)
    srcs = ([opened.base] if opened.base is not None else []) + list(opened.experts)
    renamed = [RenamedSource(src, _slice_names(part, src.specs(), ref, off, k == 0, k == len(pl.parts) - 1))
               for ref, src in zip(refs, srcs)]
    _validate(renamed[0], renamed[1:])
    specs = renamed[0].specs()
    length = next(e for e in part.entries if e is not None).layer_range
    length = length[1] - length[0]

    def t_of(path: str, off=off, length=length) -> float:
      li = mk.layer_index(path)
      return 0.0 if li is None else ((li - off) / (length - 1) if length > 1 else 1.0)

    groups, hps, info = _leaf_groups(part, specs, t_of, len(opened.experts))
    others = [s.path for s in specs if not tree_lib.is_float_dtype(s.dtype)]
    first = next(iter(groups))
    groups[first] = groups[first] + others
    base = renamed[0] if opened.base is not None else None
    passes.append((groups, hps, info, base, renamed[1:] if base is not None else renamed))
    for s in specs:
      if s.path in out_specs:
        raise RecipeError(f"slices[{k}]: output leaf '{s.path}' is produced by two slices")
      out_specs[s.path] = s
  names = ([pl.base] if pl.base is not None else []) + list(pl.inputs)
  out_path = pathlib.Path(output)
  output_lib.check_output_path(out_path, [detect.input_path(x.path) for x in names]
                               + [detect.input_path(x.lora) for x in names if x.lora], overwrite)
  rules = sharding.parse_rules("")
  mesh = mesh if mesh is not None else sharding.make_mesh()
  opened0 = opened_all[0]
  dirs = [inputs_lib.model_dir(s) for o in opened_all for s in [o.base, *o.experts] if s is not None]
  chat = _chat_template(r, dirs)
  fingerprints = [{"role": "base" if pl.base is not None and i == 0 else "expert", "name": str(x), **_fingerprint(x)}
                  for i, x in enumerate(names)] if output_lib.is_primary() else []
  donor = opened0.donor_dir
  updates = {}
  if donor is not None and (donor / "config.json").is_file():
    cfg = json.loads((donor / "config.json").read_text())
    updates[next((k for k in _NUM_LAYERS_KEYS if k in cfg), "num_hidden_layers")] = pl.output_layers
  dt = np.dtype(dtype) if dtype is not None else None
  with inputs_lib.staged_sidecars(donor, chat_template=chat, config_updates=updates) as sidecar_dir:
    sink = output_lib.open_sink(out_path, passes[0][3] or passes[0][4][0], output_format=output_format,
                                sidecar_dir=sidecar_dir, shard_bytes=shard_bytes, overwrite=overwrite)
    shared = (_SharedSpanSink if isinstance(sink, SpanSink) else _SharedSink)(sink)
    try:
      if isinstance(sink, StagedSink):
        sink.begin([LeafSpec(p, s.shape, dt if dt is not None and tree_lib.is_float_dtype(s.dtype) else s.dtype)
                    for p, s in sorted(out_specs.items())])
      _merge_passes(shared, passes, seed=seed, dtype=dtype, mesh=mesh, rules=rules,
                    memory_budget_bytes=memory_budget_bytes, progress=progress)
    except BaseException:
      shared.abort()
      raise
    manifest = {"method": pl.method, **_hparams_manifest([p[:3] for p in passes]), "seed": seed,
                "leaves": len(out_specs), "slices": len(pl.parts), "output_layers": pl.output_layers,
                "dtype": _written_dtype(shared.manifests), "inputs": fingerprints,
                "input_format": (passes[0][3] or passes[0][4][0]).format, "command": output_lib.command_line(),
                "recipe": r.text, "mergekit_method": r.merge_method,
                "elapsed_s": sum(m.get("elapsed_s", 0.0) for m in shared.manifests)}
    return sink.finalize(manifest)


def _merge_passes(shared: Any, passes: Sequence[tuple], *, seed: int, dtype: Any, mesh: Any, rules: Any,
                  memory_budget_bytes: float | None, progress: bool) -> None:
  """Runs the engine once per leaf group of each pass ``(groups, hparams, info, base, experts)`` into
  ``shared``; one progress bar over the groups (the engine's own when there is one group)."""
  from mergejax import engine  # pylint: disable=g-import-not-at-top  (JAX: only when a merge runs)
  total = sum(len(p[0]) for p in passes)
  bar = _bar(progress and total > 1, total)
  for groups, _, info, base, experts in passes:
    for key, paths in groups.items():
      engine.merge_sources(SubsetSource(base, paths) if base is not None else None,
                           [SubsetSource(e, paths) for e in experts], shared, info["methods"][key], seed=seed,
                           dtype=dtype, mesh=mesh, rules=rules, memory_budget_bytes=memory_budget_bytes,
                           allow_nonfinite=False, progress=progress and total == 1)
      if bar is not None:
        bar.update(1)
  if bar is not None:
    bar.close()


def _bar(enabled: bool, total: int):
  if not enabled:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc="merge (per-tensor parameter groups)", dynamic_ncols=True)


_PRE = ("embed", "wte", "wpe", "tok_embeddings", "word_embeddings", "embed_in")


def _fingerprint(ref) -> dict[str, Any]:
  """A recipe input's fingerprint for the manifest: the model's, and a ``BASE+LORA`` input's adapter's too
  (two adapters on one base are different inputs)."""
  out = output_lib.fingerprint(detect.input_path(ref.path))
  if ref.lora:
    out["lora"] = {"path": str(ref.lora), **output_lib.fingerprint(detect.input_path(ref.lora))}
  return out


def _passthrough(pl: mk.Plan, output: str, *, output_format, overwrite, shard_bytes) -> pathlib.Path:
  """A copy of one model, or layers of several stacked (slices), with mergekit's optional ``scale``."""
  r = pl.recipe
  srcs = [inputs_lib.open_model(x) for x in pl.inputs]
  out_dt = r.out_dtype or r.dtype
  plan_leaves: list[tuple[str, int, str, int | None]] = []  # (output leaf, source, source leaf, slice)
  slices = r.slices
  if slices is None:
    plan_leaves = [(s.path, 0, s.path, None) for s in srcs[0].specs()]
    n_layers = _num_layers(inputs_lib.model_dir(srcs[0]), srcs[0].specs())
  else:
    out_layer = 0
    for i, e in enumerate(pl.entries):
      by_layer = collections.defaultdict(list)
      for s in srcs[i].specs():
        by_layer[mk.layer_index(s.path)].append(s.path)
      a, b = e.layer_range
      have = max((k for k in by_layer if k is not None), default=-1) + 1
      if b > have:
        raise RecipeError(f"{e.where}.layer_range: {e.ref} has {have} layers, the range ends at {b}")
      for k in range(a, b):
        for p in by_layer[k]:
          plan_leaves.append((mk.renumber_layer(p, out_layer), i, p, i))
        out_layer += 1
      if i == 0:
        plan_leaves += [(p, i, p, None) for p in by_layer[None] if any(x in p for x in _PRE)]
      if i == len(pl.entries) - 1:
        plan_leaves += [(p, i, p, None) for p in by_layer[None] if not any(x in p for x in _PRE)]
    n_layers = None
  specs_by = [{s.path: s for s in src.specs()} for src in srcs]
  out_specs = []
  for name, i, p, _ in sorted(plan_leaves):
    s = specs_by[i][p]
    dt = np.dtype(out_dt) if out_dt is not None and tree_lib.is_float_dtype(s.dtype) else s.dtype
    out_specs.append(LeafSpec(name, s.shape, dt))
  out_path = pathlib.Path(output)
  output_lib.check_output_path(out_path, [detect.input_path(x.path) for x in pl.inputs], overwrite)
  donor = inputs_lib.model_dir(srcs[0])
  updates = {}
  if pl.output_layers is not None and donor is not None and (donor / "config.json").is_file():
    cfg = json.loads((donor / "config.json").read_text())
    key = next((k for k in _NUM_LAYERS_KEYS if k in cfg), "num_hidden_layers")
    updates[key] = pl.output_layers
  chat = _chat_template(r, [inputs_lib.model_dir(s) for s in srcs])
  fingerprints = [{"role": "input", "name": str(x), **_fingerprint(x)}
                  for x in pl.inputs] if output_lib.is_primary() else []
  with inputs_lib.staged_sidecars(donor, chat_template=chat, config_updates=updates) as sidecar_dir:
    sink = output_lib.open_sink(out_path, srcs[0], output_format=output_format, sidecar_dir=sidecar_dir,
                                shard_bytes=shard_bytes, overwrite=overwrite)
    try:
      if isinstance(sink, StagedSink):
        sink.begin(out_specs)
      dtypes = {s.path: s.dtype for s in out_specs}
      for name, i, p, sl in sorted(plan_leaves):
        x = host_leaf(srcs[i], p)
        if tree_lib.is_float_dtype(x.dtype):
          n = (pl.entries[i].layer_range[1] - pl.entries[i].layer_range[0]) if sl is not None else n_layers
          li = mk.layer_index(p)
          t = 0.0 if li is None else ((li - (pl.entries[i].layer_range[0] if sl is not None else 0))
                                      / (n - 1) if n > 1 else 1.0)
          scale = mk.passthrough_scale(pl, p, t, i, sl)
          if scale is not None:
            x = np.asarray(x, np.float32) * np.float32(scale)
        sink.write({name: np.asarray(x).astype(dtypes[name], copy=False)})  # a map of the input: written from it
    except BaseException:
      if isinstance(sink, StagedSink):
        sink.abort()
      raise
    manifest = {"method": "passthrough", "hparams": {}, "leaves": len(out_specs), "inputs": fingerprints,
                "dtype": out_dt, "command": output_lib.command_line(), "recipe": r.text,
                "mergekit_method": r.merge_method, "output_layers": pl.output_layers}
    return sink.finalize(manifest)
