r"""mergekit YAML recipes (mergekit 0.1.5's ``MergeConfiguration``) parsed into a plain :class:`Plan`.

``parse(text)`` checks the YAML's structure and every key (a key mergejax does not support is a
:class:`RecipeError` naming it, never ignored) and returns a :class:`Recipe`; ``plan(recipe)`` maps it
onto a mergejax method (through the method registry and its hyperparameter schema) and the merge's
inputs. Per-leaf hyperparameters then come from :func:`leaf_hparams`, a pure function of the plan, the
leaf's name and its layer position, with mergekit's semantics:

* **precedence** (highest first): the model's own ``parameters`` (per-model parameters: ``weight``,
  ``density``), a slice's ``parameters``, the global ``parameters``; then the method's default, or an
  error for a required one (``weight``). Parameters that apply to the whole merge (``lambda``,
  ``normalize``...) come only from the slice and global levels: set on a model they are refused
  (mergekit ignores them there).
* **gradients**: a list of numbers is interpolated across the layers: layer ``i`` of ``n`` has
  :math:`t = i / (n - 1)` (``t = 1`` when ``n = 1``), :math:`s = t (len - 1)`, and the value
  :math:`(1 - f) v_{\lfloor s\rfloor} + f v_{\lfloor s\rfloor + 1}`, :math:`f = s - \lfloor s\rfloor`. A list of
  booleans or strings picks :math:`v_{\lfloor t (len - 1)\rfloor}`. Leaves outside the layers (embeddings,
  final norm, LM head) have ``t = 0``.
* **filters**: ``{filter: mlp, value: ...}`` (or a list of them, first match wins) applies where the
  filter string occurs in the tensor name (``filter`` absent or ``"*"``: everywhere); no match falls
  through to the next precedence level.
* **methods** (mergekit name: mergejax method and hyperparameters):

  - ``linear``: ``average``; weights of every input in recipe order (the base too when it is
    given, as mergekit); ``normalize`` must be true (an unnormalized weighted sum is not a mergejax method).
  - ``task_arithmetic``: ``task_arithmetic``, ``lam`` = ``lambda``, per-model ``weight``; with
    ``normalize: true`` the weights are divided by their sum (mergekit divides the weighted sum).
  - ``ties``: ``ties`` per tensor (mergekit's top-k is per tensor; ``mergejax: {scope: global}`` selects
    the paper's model-wide top-k), ``density`` (the kept fraction; one value per tensor for all
    models), ``aggregate`` mean (``normalize``, mergekit's default) or sum, sign vote by sum.
  - ``dare_ties`` / ``dare_linear``: mergejax's DARE (masks from a counter-based hash of (seed, tensor,
    position), survivors rescaled by exactly 1/(1-p)) differs from mergekit's (torch's global RNG,
    L1-norm rescale), so these need ``mergejax: {dare: paper}``; ``drop_rate`` = 1 - ``density``,
    no magnitude trim.
  - ``passthrough``: a copy of one model, or ``slices`` of layers stacked (frankenmerges), with
    mergekit's optional per-model ``scale``. Any other method takes ``slices`` written as one slice whose
    sources all span every layer (mergekit's usual SLERP recipe): the slice's ``parameters`` sit between the
    sources' and the top level; other slice layouts are one line.
  - any other name: the registered mergejax method of that name, its hyperparameters given by name
    (``lambda`` is ``lam``; per-model ``weight`` gives ``weights``; ``density``, ``gamma`` and ``epsilon``
    per model or shared, one value per tensor; ``normalize`` true is ``aggregate: mean``). A method whose
    traits say ``base_is_origin`` (``nuslerp``, ``multislerp``) merges task vectors from ``base_model``
    when one is given; one that neither uses nor takes a base as origin (``karcher``) merges the base as
    one more model. A name mergejax does not have is one line listing what it has.
  - data-aware methods (``regmean``, ``fisher``, ``adamerging``; not in mergekit): each merged model's
    examples from ``mergejax: {merge_data: {sources: {MODEL: SOURCE}, ...}}`` (:func:`merge_data`), bound
    as ``mergejax-merge`` binds them (:func:`mergejax.expert_data.bind_checkpoints`).

``dtype`` is mergekit's math dtype; mergejax computes in float32 whatever it says (a documented
difference), and writes ``out_dtype``, else ``dtype``, else the base's dtype.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

from mergejax.checkpoints.inputs import ModelRef

REQUIRED = object()
SHARED, INPUT, NON_BASE = "shared", "input", "non_base"


class RecipeError(ValueError):
  """A recipe that mergejax cannot run as written (the message names the key)."""


@dataclasses.dataclass(frozen=True)
class KitParam:
  """A parameter of a mergekit merge method, as mergekit 0.1.5 declares it."""

  name: str
  type: type  # float, int or bool (a str for a mergejax choice)
  scope: str  # SHARED (one value per tensor), INPUT (per model), NON_BASE (per model except the base)
  default: Any = REQUIRED


def _gta(normalize: bool, rescale: bool) -> tuple[KitParam, ...]:
  return (KitParam("int8_mask", bool, SHARED, False), KitParam("normalize", bool, SHARED, normalize),
          KitParam("rescale", bool, SHARED, rescale), KitParam("lambda", float, SHARED, 1.0),
          KitParam("weight", float, NON_BASE), KitParam("density", float, NON_BASE, 1.0))


# mergekit's own definitions of the methods mergejax maps (parameters, scopes, defaults): facts about
# mergekit (merge_methods/registry.py, linear.py, passthrough.py), not a list of what mergejax has.
MERGEKIT_METHODS: dict[str, tuple[KitParam, ...]] = {
    "linear": (KitParam("weight", float, INPUT), KitParam("normalize", bool, SHARED, True)),
    "task_arithmetic": _gta(normalize=False, rescale=False),
    "ties": _gta(normalize=True, rescale=False),
    "dare_ties": _gta(normalize=False, rescale=True),
    "dare_linear": _gta(normalize=False, rescale=True),
    "passthrough": (KitParam("scale", float, INPUT, None),),
}
# mergekit's per-model parameters besides ``weight`` (its sparsifying methods' tensor parameters): set per
# model; mergejax applies one value to every model of a tensor, so the models must agree.
PER_MODEL = ("density", "gamma", "epsilon")
# mergekit's name for a mergejax method of another name.
MERGEKIT_NAMES = {"linear": "average"}
TOP_KEYS = ("merge_method", "base_model", "models", "slices", "modules", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "mergejax")
OPTION_KEYS = ("scope", "dare", "seed", "merge_data")
MERGE_DATA_KEYS = ("sources", "split", "batches", "batch_size", "inputs_length", "targets_length", "seed")
DTYPES = ("bfloat16", "float16", "float32", "float64")
_LAYER = re.compile(r"(?:^|[./])(?:layers|h|blocks|layer)[./](\d+)(?:[./]|$)")


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Cond:
  """``{filter: F, value: V}``: V where F occurs in the tensor name (F None or "*": everywhere)."""

  filter: str | None
  value: Any  # a scalar or a tuple of scalars (gradient)


Setting = Any  # a scalar, a tuple of scalars (gradient), or a tuple of Cond


def _is_scalar(x: Any) -> bool:
  return isinstance(x, (bool, int, float, str))


def parse_setting(where: str, raw: Any) -> Setting:
  """A parameter setting from YAML: scalar, gradient list, ``{filter, value}`` or a list of those."""
  if isinstance(raw, dict):
    raw = [raw]
  if _is_scalar(raw):
    return raw
  if isinstance(raw, list):
    if all(_is_scalar(x) for x in raw):
      return tuple(raw)
    if all(isinstance(x, dict) for x in raw):
      out = []
      for i, c in enumerate(raw):
        extra = sorted(set(c) - {"filter", "value"})
        if extra or "value" not in c:
          raise RecipeError(f"{where}[{i}]: a conditional setting is {{filter: ..., value: ...}}"
                            + (f" (unknown key '{extra[0]}')" if extra else " (value missing)"))
        v = c["value"]
        if isinstance(v, list) and all(_is_scalar(x) for x in v):
          v = tuple(v)
        elif not _is_scalar(v):
          raise RecipeError(f"{where}[{i}].value: must be a number, boolean, string or a list of them")
        f = c.get("filter")
        if f is not None and not isinstance(f, str):
          raise RecipeError(f"{where}[{i}].filter: must be a string")
        out.append(Cond(f, v))
      return tuple(out)
  raise RecipeError(f"{where}: must be a value, a list of values (gradient) or {{filter: ..., value: ...}} entries")


def check_value(where: str, typ: type, value: Any) -> Any:
  """``value`` as mergekit's parameter type (pydantic's lax conversions): float from numbers and numeric
  strings; int from integral ones; bool from booleans, 0/1 and true/false/yes/no/on/off; None allowed for optional parameters."""
  if value is None:
    return None
  if typ is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, int) and value in (0, 1):
      return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0",
                                                            "t", "f", "y", "n"):
      return value.strip().lower() in ("true", "yes", "on", "1", "t", "y")
    raise RecipeError(f"{where}: {value!r} is not a boolean")
  if typ is int:
    v = check_value(where, float, value)
    if not v.is_integer():
      raise RecipeError(f"{where}: {value!r} is not an integer")
    return int(v)
  if typ is float:
    if isinstance(value, bool):
      raise RecipeError(f"{where}: {value!r} is not a number")
    try:
      v = float(value)
    except (TypeError, ValueError):
      raise RecipeError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(v):
      raise RecipeError(f"{where}: {value!r} is not a finite number")
    return v
  return value


def evaluate(setting: Setting, tensor: str, t: float, typ: type, where: str) -> Any:
  """The setting's value for ``tensor`` at layer position ``t`` (None: no filter matched), as
  mergekit's ``evaluate_setting``."""
  if _is_scalar(setting):
    return check_value(where, typ, setting)
  if not setting:
    return None
  if isinstance(setting[0], Cond):
    for c in setting:
      if c.filter is None or c.filter == "*" or (tensor and c.filter in tensor):
        return evaluate(c.value, tensor, t, typ, where)
    return None
  values = [check_value(where, typ, v) for v in setting]
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    return values[int(t * (len(values) - 1))]
  scaled = t * (len(values) - 1)
  i0 = int(scaled)
  i1 = min(len(values) - 1, i0 + 1)
  frac = scaled - i0
  return check_value(where, typ, (1 - frac) * values[i0] + frac * values[i1])


# --------------------------------------------------------------------------- the recipe


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  ref: ModelRef
  parameters: Mapping[str, Setting]
  where: str  # e.g. "models[1]"
  layer_range: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Slice:
  sources: tuple[ModelEntry, ...]
  parameters: Mapping[str, Setting]


@dataclasses.dataclass(frozen=True)
class TokenOverride:
  """``tokenizer.tokens.<token>``: where its embedding comes from."""

  kind: str  # "model", "model_token", "zero"
  model: ModelRef | None = None
  token: str | None = None
  token_id: int | None = None
  force: bool = False


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A mergekit YAML recipe, checked (plain values; see :func:`parse`)."""

  merge_method: str
  base_model: ModelRef | None
  models: tuple[ModelEntry, ...] | None
  slices: tuple[Slice, ...] | None
  parameters: Mapping[str, Setting]
  dtype: str | None
  out_dtype: str | None
  tokenizer_source: str | None  # "base", "union", or a model string
  tokens: Mapping[str, TokenOverride]
  pad_to_multiple_of: int | None
  chat_template: str | None
  options: Mapping[str, Any]  # the ``mergejax:`` block
  text: str


def _keys(where: str, d: Any, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
  if not isinstance(d, dict):
    raise RecipeError(f"{where}: expected a mapping, got {type(d).__name__}")
  for k in d:
    if k not in allowed:
      hint = {"modules": "multi-module merges (modules:) are not supported by mergejax",
              "residual_weight": "residual_weight is not supported by mergejax"}.get(k, "")
      raise RecipeError(f"{where + '.' if where else ''}{k}: " + (hint or f"unknown key (mergejax reads: "
                                                                           f"{', '.join(allowed)})"))
  for k in required:
    if d.get(k) is None:
      raise RecipeError(f"{where + '.' if where else ''}{k}: required")
  return d


def _model(where: str, raw: Any) -> ModelRef:
  if not isinstance(raw, str) or not raw.strip():
    raise RecipeError(f"{where}: must be a model path (PATH or PATH+LORA_PATH)")
  try:
    return ModelRef.parse(raw.strip())
  except ValueError as e:
    raise RecipeError(f"{where}: {e}") from None


def _params(where: str, raw: Any) -> dict[str, Setting]:
  if raw is None:
    return {}
  if not isinstance(raw, dict):
    raise RecipeError(f"{where}: expected a mapping of parameter names to settings")
  return {str(k): parse_setting(f"{where}.{k}", v) for k, v in raw.items()}


def _dtype(where: str, raw: Any) -> str | None:
  if raw is None:
    return None
  name = str(raw).removeprefix("torch.")
  if name not in DTYPES:
    raise RecipeError(f"{where}: {raw!r} is not one of {list(DTYPES)}")
  return name


def parse(text: str) -> Recipe:
  """The recipe in ``text`` (YAML), checked; RecipeError names the first offending key."""
  import yaml  # pylint: disable=g-import-not-at-top  (PyYAML: only this command reads YAML)
  try:
    raw = yaml.safe_load(text)
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    raise RecipeError(f"not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
  d = _keys("", raw, TOP_KEYS, required=("merge_method",))
  if d.get("modules") is not None:
    raise RecipeError("modules: multi-module merges are not supported by mergejax")
  if (d.get("models") is None) == (d.get("slices") is None):
    raise RecipeError("models / slices: exactly one of them must be given")
  if not isinstance(d["merge_method"], str):
    raise RecipeError("merge_method: must be a method name")
  models = slices = None
  if d.get("models") is not None:
    if not isinstance(d["models"], list) or not d["models"]:
      raise RecipeError("models: must be a non-empty list")
    models = tuple(
        ModelEntry(_model(f"models[{i}].model", m.get("model")), _params(f"models[{i}].parameters", m.get("parameters")),
                   f"models[{i}]")
        for i, m in enumerate(_keys(f"models[{i}]", m, ("model", "parameters"), ("model",))
                              for i, m in enumerate(d["models"])))
  else:
    if not isinstance(d["slices"], list) or not d["slices"]:
      raise RecipeError("slices: must be a non-empty list")
    out = []
    for i, s in enumerate(d["slices"]):
      s = _keys(f"slices[{i}]", s, ("sources", "parameters", "base_model"), ("sources",))
      if s.get("base_model") is not None:
        raise RecipeError(f"slices[{i}].base_model: per-slice base models are not supported by mergejax")
      if not isinstance(s["sources"], list) or not s["sources"]:
        raise RecipeError(f"slices[{i}].sources: must be a non-empty list")
      srcs = []
      for j, src in enumerate(s["sources"]):
        w = f"slices[{i}].sources[{j}]"
        src = _keys(w, src, ("model", "layer_range", "parameters"), ("model", "layer_range"))
        lr = src["layer_range"]
        if (not isinstance(lr, list) or len(lr) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in lr) or not 0 <= lr[0] < lr[1]):
          raise RecipeError(f"{w}.layer_range: must be [start, end) with 0 <= start < end")
        srcs.append(ModelEntry(_model(f"{w}.model", src["model"]), _params(f"{w}.parameters", src.get("parameters")),
                               w, (lr[0], lr[1])))
      out.append(Slice(tuple(srcs), _params(f"slices[{i}].parameters", s.get("parameters"))))
    slices = tuple(out)
  if d.get("tokenizer_source") is not None and d.get("tokenizer") is not None:
    raise RecipeError("tokenizer / tokenizer_source: give one of them, not both")
  tok_source, tokens, pad = d.get("tokenizer_source"), {}, None
  if tok_source is not None and not isinstance(tok_source, str):
    raise RecipeError("tokenizer_source: must be 'base', 'union' or a model path")
  if d.get("tokenizer") is not None:
    t = _keys("tokenizer", d["tokenizer"], ("source", "tokens", "pad_to_multiple_of"))
    tok_source = t.get("source", "union")
    if not isinstance(tok_source, str):
      raise RecipeError("tokenizer.source: must be 'base', 'union' or a model path")
    pad = t.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
      raise RecipeError("tokenizer.pad_to_multiple_of: must be a positive integer")
    tokens = {str(k): _token_override(f"tokenizer.tokens.{k}", v) for k, v in (t.get("tokens") or {}).items()}
  chat = d.get("chat_template")
  if chat is not None and not isinstance(chat, str):
    raise RecipeError("chat_template: must be 'auto' or a Jinja template")
  options = _keys("mergejax", d.get("mergejax") or {}, OPTION_KEYS)
  if "scope" in options and options["scope"] not in ("tensor", "global"):
    raise RecipeError(f"mergejax.scope: {options['scope']!r} is not 'tensor' or 'global'")
  if "dare" in options and options["dare"] != "paper":
    raise RecipeError(f"mergejax.dare: {options['dare']!r}: the only DARE mergejax has is 'paper'")
  if "seed" in options and (not isinstance(options["seed"], int) or isinstance(options["seed"], bool)
                            or not 0 <= options["seed"] < 2 ** 32):
    raise RecipeError("mergejax.seed: must be an integer in [0, 2^32)")
  if "merge_data" in options:
    data = _keys("mergejax.merge_data", options["merge_data"], MERGE_DATA_KEYS, required=("sources",))
    if not isinstance(data["sources"], dict) or not all(isinstance(v, str) and v for v in data["sources"].values()):
      raise RecipeError("mergejax.merge_data.sources: expected a mapping of each merged model to a seqio suite, "
                        "mixture or task (MODEL: SOURCE)")
  return Recipe(
      merge_method=d["merge_method"], base_model=_model("base_model", d["base_model"]) if d.get("base_model") else None,
      models=models, slices=slices, parameters=_params("parameters", d.get("parameters")),
      dtype=_dtype("dtype", d.get("dtype")), out_dtype=_dtype("out_dtype", d.get("out_dtype")),
      tokenizer_source=tok_source, tokens=tokens, pad_to_multiple_of=pad, chat_template=chat, options=dict(options),
      text=text)


def _token_override(where: str, raw: Any) -> TokenOverride:
  d = _keys(where, raw, ("source", "force"))
  force = check_value(f"{where}.force", bool, d.get("force", False))
  src = d.get("source")
  if isinstance(src, str):
    return TokenOverride("model", model=_model(f"{where}.source", src), force=force)
  if isinstance(src, dict):
    s = _keys(f"{where}.source", src, ("kind", "model", "token", "token_id"), ("kind",))
    if s["kind"] == "zero":
      return TokenOverride("zero", force=force)
    if s["kind"] == "model_token":
      if (s.get("token") is None) == (s.get("token_id") is None):
        raise RecipeError(f"{where}.source: give exactly one of token and token_id")
      return TokenOverride("model_token", model=_model(f"{where}.source.model", s.get("model")),
                           token=s.get("token"), token_id=s.get("token_id"), force=force)
    raise RecipeError(f"{where}.source.kind: {s['kind']!r} is not 'model_token' or 'zero'")
  raise RecipeError(f"{where}.source: required (a model, {{kind: model_token, ...}} or {{kind: zero}})")


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """What to run: a mergejax method over inputs, with per-leaf hyperparameters from :func:`leaf_hparams`.

  Attributes:
    recipe: the recipe.
    method: the mergejax method (registered name), or "passthrough" (copies, no merge).
    base: the merge's base (methods that use one), else None.
    inputs: the merged models in mergekit's order (every input of ``linear``, the base included;
      the non-base models of task-vector methods).
    entries: the recipe entry of each input (parameters), same order; None for a base added implicitly.
    params: mergekit's parameter definitions for this method.
    output_layers: for slices, the output's layer count (config.json num_hidden_layers).
    slice_index: the recipe slice this plan merges (its parameters apply), else None.
    parts: a merge of several slices (or of one slice over part of the layers): one plan per slice, each
      merging its sources' layers into the output's next layers (:func:`slice_offsets`); the embeddings
      come from the first slice's sources and the final norm and head from the last's, as in mergekit.
  """

  recipe: Recipe
  method: str
  base: ModelRef | None
  inputs: tuple[ModelRef, ...]
  entries: tuple[ModelEntry | None, ...]
  params: tuple[KitParam, ...]
  output_layers: int | None = None
  slice_index: int | None = None
  parts: tuple["Plan", ...] = ()


def _registered() -> list[str]:
  from mergejax import methods  # pylint: disable=g-import-not-at-top
  return methods.names()


def _kit_params(name: str) -> tuple[KitParam, ...]:
  """mergekit's parameters of ``name``, or for a mergekit name mergejax registers, its schema's: ``weights``
  as mergekit's per-model ``weight``, ``lam`` as ``lambda``, :data:`PER_MODEL` names per model, an
  ``aggregate`` of ``sum`` / ``mean`` as mergekit's ``normalize`` (true: mean), and for task-vector methods
  mergekit's ``int8_mask`` (how mergekit stores masks: no effect on the result)."""
  if name in MERGEKIT_METHODS:
    return MERGEKIT_METHODS[name]
  from mergejax import methods  # pylint: disable=g-import-not-at-top
  traits = methods.get(name).traits
  per_model = NON_BASE if traits.uses_base or traits.base_is_origin else INPUT
  out = []
  for hp in methods.schema(name):
    if hp.name == "weights":
      out.append(KitParam("weight", float, per_model, 1.0))
    elif hp.name == "aggregate" and set(hp.choices or ()) >= {"sum", "mean"}:
      out.append(KitParam("normalize", bool, SHARED, hp.default == "mean"))
    elif hp.type in (float, int, bool):
      out.append(KitParam("lambda" if hp.name == "lam" else hp.name, hp.type,
                          per_model if hp.name in PER_MODEL else SHARED, hp.default))
    else:
      out.append(KitParam(hp.name, hp.type, SHARED, hp.default))
  if traits.uses_base:
    out.append(KitParam("int8_mask", bool, SHARED, False))
  return tuple(out)


def plan(recipe: Recipe) -> Plan:
  """The recipe mapped onto a mergejax method; RecipeError (one line) for what mergejax cannot do."""
  name = recipe.merge_method
  jname = MERGEKIT_NAMES.get(name, name)
  if name != "passthrough" and jname not in _registered():
    have = [f"{n} (mergekit {k})" if (k := next((a for a, b in MERGEKIT_NAMES.items() if b == n), None)) else n
            for n in _registered()] + ["passthrough"]
    raise RecipeError(f"merge_method: {name!r} is not available in mergejax yet (it has: {', '.join(have)})")
  params = _kit_params(name)
  by_name = {p.name: p for p in params}
  entries = list(recipe.models) if recipe.models is not None else [s for sl in recipe.slices for s in sl.sources]
  # Every parameter given anywhere must be one the method has, at a level where it applies.
  levels = [("parameters", recipe.parameters)] + [(f"slices[{i}].parameters", s.parameters)
                                                  for i, s in enumerate(recipe.slices or ())]
  for where, ps in levels + [(f"{e.where}.parameters", e.parameters) for e in entries]:
    for k in ps:
      if k not in by_name:
        raise RecipeError(f"{where}.{k}: {name} has no parameter {k!r} (it has: {', '.join(by_name) or 'none'})")
  for e in entries:
    for k in e.parameters:
      if by_name[k].scope == SHARED:
        raise RecipeError(f"{e.where}.parameters.{k}: {k} applies to the whole merge: set it under the top-level "
                          "parameters (mergekit ignores it here)")
  opts = recipe.options
  from mergejax import methods  # pylint: disable=g-import-not-at-top
  schema = {hp.name for hp in methods.schema(jname)}
  if "scope" in opts and "scope" not in schema:
    raise RecipeError(f"mergejax.scope: {name} has no scope (where the top-k trim is taken)")
  stochastic = "drop_rate" in schema  # DARE's masks: mergejax's differ from mergekit's (below)
  if stochastic and opts.get("dare") != "paper":
    raise RecipeError(f"merge_method: {name}: mergejax's DARE draws its own masks (a counter-based hash of seed, "
                      "tensor and position) and rescales survivors by exactly 1/(1-p), where mergekit uses torch's "
                      "global RNG and an L1-norm rescale; add `mergejax: {dare: paper}` to run mergejax's")
  if "dare" in opts and not stochastic:
    raise RecipeError(f"mergejax.dare: {name} draws no DARE masks")
  needs = getattr(methods.get(jname).compute_stats, "needs", None) if name != "passthrough" else None
  if needs is not None and "merge_data" not in opts:
    raise RecipeError(f"merge_method: {name} learns from data ({needs}): give one seqio suite, mixture or task per "
                      "merged model, as `mergejax: {merge_data: {sources: {MODEL: SOURCE, ...}}}`")
  if needs is None and "merge_data" in opts:
    raise RecipeError(f"mergejax.merge_data: {name} does not learn from data")
  if recipe.slices is not None and name == "passthrough":
    return _plan_slices(recipe, params)
  if recipe.slices is not None:
    return _plan_merged_slices(recipe, name, jname, params)
  refs = [e.ref for e in recipe.models]
  if name == "passthrough":
    if len(refs) != 1 or (recipe.base_model is not None and recipe.base_model != refs[0]):
      raise RecipeError("models: passthrough copies exactly one model")
    return Plan(recipe, "passthrough", None, tuple(refs), tuple(recipe.models), params)
  return _plan_inputs(recipe, name, jname, params, recipe.models, None)


def _plan_inputs(recipe: Recipe, name: str, jname: str, params: tuple[KitParam, ...],
                 models: Sequence[ModelEntry], slice_index: int | None) -> Plan:
  """The plan of one merge over ``models`` (the recipe's models, or the sources of slice ``slice_index``)."""
  from mergejax import methods  # pylint: disable=g-import-not-at-top
  refs = [e.ref for e in models]
  where = "models" if slice_index is None else f"slices[{slice_index}].sources"
  traits = methods.get(jname).traits
  base = recipe.base_model
  if traits.uses_base and base is None:
    raise RecipeError(f"base_model: required by {name}")
  if len(set(refs)) != len(refs):
    raise RecipeError(f"{where}: {next(str(r) for r in refs if refs.count(r) > 1)} is listed twice")
  uses_base = traits.uses_base or (traits.base_is_origin and base is not None)
  if uses_base:  # the base is the origin of the task vectors, listed among the models or not
    if slice_index is not None and base not in refs:  # a slice's base layers come from its sources
      raise RecipeError(f"{where}: {name} needs base_model {base} among the sources of every slice (its layers "
                        "there are the origin of the task vectors)")
    pairs = [(e.ref, e) for e in models if e.ref != base]
  else:  # every input is merged, the base too (mergekit adds it after the listed models, not to slices)
    pairs = [(e.ref, e) for e in models]
    if base is not None and base not in refs and slice_index is None:
      pairs.append((base, None))
  if not pairs:
    raise RecipeError(f"{where}: {name} needs at least one model besides the base")
  lo, hi = max(1, traits.min_experts), traits.max_experts
  if not lo <= len(pairs) <= (hi or len(pairs)):
    count = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
    besides = " besides base_model" if uses_base else ""
    raise RecipeError(f"{where}: {name} merges {count} model{'s' if (hi or lo) > 1 else ''}{besides}, got "
                      f"{len(pairs)}")
  if "merge_data" in recipe.options:  # plan() allows it for data-aware methods only
    _check_merge_data(recipe, name, [r for r, _ in pairs], slice_index)
  return Plan(recipe, jname, base if uses_base else None, tuple(r for r, _ in pairs), tuple(e for _, e in pairs),
              params, slice_index=slice_index)


def _check_merge_data(recipe: Recipe, name: str, merged: Sequence[ModelRef], slice_index: int | None) -> None:
  """A data-aware merge's ``mergejax.merge_data``: one source per merged model, examples settings that
  :class:`mergejax.expert_data.Settings` accepts, models loadable whole (no slices, LoRA or vocabulary
  mapping)."""
  from mergejax import expert_data  # pylint: disable=g-import-not-at-top
  if slice_index is not None:
    raise RecipeError(f"slices: {name} learns from each model's examples: write the merge with models:")
  sources, data = _merge_data_options(recipe)
  names = [str(r) for r in merged]
  missing, extra = [n for n in names if n not in sources], [k for k in sources if k not in names]
  if missing or extra:
    raise RecipeError(f"mergejax.merge_data.sources: needs one source for each merged model ({', '.join(names)}); "
                      + (f"missing {missing[0]}" if missing else f"{extra[0]} is not merged"))
  lora = next((r for r in merged if r.lora), None)
  if lora is not None:
    raise RecipeError(f"models: {lora}: {name} loads each model whole for its statistics; a LoRA adapter is "
                      "not supported with it (merge the adapter first)")
  if recipe.tokenizer_source is not None:
    raise RecipeError(f"tokenizer_source: {name} learns from examples tokenized with one vocabulary; it cannot be "
                      "combined with a vocabulary mapping")
  try:
    expert_data.Settings(**data)
  except (TypeError, ValueError) as e:
    raise RecipeError(f"mergejax.merge_data: {e}") from None


def merge_data(pl: Plan) -> tuple[tuple[str, ...], Any] | None:
  """(each merged input's source, in ``pl.inputs`` order; :class:`mergejax.expert_data.Settings`) of a
  data-aware plan, else None."""
  if "merge_data" not in pl.recipe.options:
    return None
  from mergejax import expert_data  # pylint: disable=g-import-not-at-top
  sources, data = _merge_data_options(pl.recipe)
  return tuple(sources[str(r)] for r in pl.inputs), expert_data.Settings(**data)


def _merge_data_options(recipe: Recipe) -> tuple[dict[str, str], dict[str, Any]]:
  """``mergejax.merge_data``: (model -> source, the examples' settings)."""
  data = dict(recipe.options["merge_data"])
  return {str(k).strip(): v for k, v in data.pop("sources").items()}, data


def _plan_merged_slices(recipe: Recipe, name: str, jname: str, params: tuple[KitParam, ...]) -> Plan:
  """A merge written with slices. One slice whose sources all span layers [0, n) of n-layer models is the
  merge written with ``models:`` and the slice's ``parameters`` between the sources' and the top level
  (mergekit turns ``models:`` into exactly such a slice): one plan (slice_index 0). Any other slices are
  merged slice by slice into consecutive output layers (``parts``); whether the first form spans every
  layer is known once the models are opened (:func:`mergejax.recipes.run.run` then runs it as parts)."""
  parts = []
  for i, sl in enumerate(recipe.slices):
    lengths = sorted({e.layer_range[1] - e.layer_range[0] for e in sl.sources})
    if len(lengths) != 1:
      raise RecipeError(f"slices[{i}].sources: every source of a slice spans the same number of layers (got "
                        f"{', '.join(str(list(e.layer_range)) for e in sl.sources)})")
    parts.append(_plan_inputs(recipe, name, jname, params, sl.sources, i))
  if len(recipe.slices) > 1:
    if len(recipe.slices[0].sources) != len(recipe.slices[-1].sources):
      raise RecipeError("slices: the first and the last slice need the same number of sources (the embeddings are "
                        "merged from the first's, the final norm and head from the last's)")
    if recipe.tokenizer_source is not None or recipe.tokens:
      raise RecipeError("tokenizer: vocabulary mapping is not available for a merge of several slices")
  outputs = sum(sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0] for sl in recipe.slices)
  first = parts[0]
  if len(parts) == 1 and len({e.layer_range for e in recipe.slices[0].sources}) == 1 \
      and recipe.slices[0].sources[0].layer_range[0] == 0:
    return dataclasses.replace(first, output_layers=outputs)
  refs = tuple(r for r in dict.fromkeys(r for p in parts for r in p.inputs) if r != first.base)
  return Plan(recipe, jname, first.base, refs, tuple(None for _ in refs), params, output_layers=outputs,
              parts=tuple(parts))


def slice_offsets(pl: Plan) -> list[int]:
  """The first output layer of each of ``pl.parts``."""
  out, n = [], 0
  for part in pl.parts:
    out.append(n)
    e = next(e for e in part.entries if e is not None)
    n += e.layer_range[1] - e.layer_range[0]
  return out


def source_range(pl: Plan, ref: ModelRef) -> tuple[int, int]:
  """The layer range the slice of part ``pl`` reads from ``ref`` (one of its sources)."""
  return next(e.layer_range for e in pl.recipe.slices[pl.slice_index].sources if e.ref == ref)


def _plan_slices(recipe: Recipe, params: tuple[KitParam, ...]) -> Plan:
  for i, s in enumerate(recipe.slices):
    if len(s.sources) != 1:
      raise RecipeError(f"slices[{i}].sources: passthrough takes exactly one source per slice")
  srcs = [s.sources[0] for s in recipe.slices]
  layers = sum(e.layer_range[1] - e.layer_range[0] for e in srcs)
  return Plan(recipe, "passthrough", None, tuple(e.ref for e in srcs), tuple(srcs), params, output_layers=layers)


# --------------------------------------------------------------------------- per-leaf values


def layer_index(leaf: str) -> int | None:
  """The transformer layer a leaf belongs to ('model.layers.3.mlp...' -> 3), None outside the layers."""
  m = _LAYER.search(leaf)
  return int(m.group(1)) if m else None


def renumber_layer(leaf: str, layer: int) -> str:
  """``leaf`` moved to layer ``layer`` ('model.layers.3.mlp.w' -> 'model.layers.7.mlp.w')."""
  m = _LAYER.search(leaf)
  return leaf[:m.start(1)] + str(layer) + leaf[m.end(1):]


def layer_t(leaf: str, n_layers: int) -> float:
  """mergekit's gradient position of a leaf: i / (n - 1) for layer i of n (1 when n == 1), 0 outside."""
  i = layer_index(leaf)
  if i is None:
    return 0.0
  return i / (n_layers - 1) if n_layers > 1 else 1.0


def _resolve(p: KitParam, levels: Sequence[tuple[str, Mapping[str, Setting]]], leaf: str, t: float,
             who: str) -> Any:
  for where, ps in levels:
    if p.name in ps:
      v = evaluate(ps[p.name], leaf, t, p.type, f"{where}.{p.name}")
      if v is not None:
        return v
  if p.default is REQUIRED:
    raise RecipeError(f"{who}: parameter {p.name!r} is required for tensor '{leaf}' (mergekit has no default)")
  return p.default


def kit_values(pl: Plan, leaf: str, t: float, slice_index: int | None = None) -> tuple[dict, list[dict]]:
  """(shared values, per-input values) of mergekit's parameters for ``leaf`` at position ``t``."""
  r = pl.recipe
  common = [(f"slices[{slice_index}].parameters", r.slices[slice_index].parameters)] if slice_index is not None else []
  common.append(("parameters", r.parameters))
  shared = {p.name: _resolve(p, common, leaf, t, "parameters") for p in pl.params if p.scope == SHARED}
  per_input = []
  for ref, e in zip(pl.inputs, pl.entries):
    levels = ([(f"{e.where}.parameters", e.parameters)] if e is not None else []) + common
    per_input.append({p.name: _resolve(p, levels, leaf, t, e.where if e is not None else f"base_model {ref}")
                      for p in pl.params if p.scope != SHARED})
  return shared, per_input


def leaf_hparams(pl: Plan, leaf: str, t: float) -> dict[str, Any]:
  """The mergejax hyperparameters for ``leaf`` (see the module doc for the mapping)."""
  shared, per = kit_values(pl, leaf, t, pl.slice_index)
  name = pl.recipe.merge_method
  where = f"tensor '{leaf}'"
  w = [p["weight"] for p in per] if per and "weight" in per[0] else None
  if name == "linear":
    if not shared["normalize"]:
      raise RecipeError("parameters.normalize: linear with normalize false (an unnormalized weighted sum) is not "
                        "available in mergejax")
    return {"weights": w}
  if name in ("task_arithmetic", "ties", "dare_ties", "dare_linear"):
    densities = sorted({p["density"] for p in per})
    if len(densities) > 1:
      raise RecipeError(f"density: the models have different densities {densities} for {where}; mergejax applies "
                        "one density to all models of a tensor")
    density = densities[0]
    normalize = shared["normalize"]
    out: dict[str, Any] = {"lam": shared["lambda"]}
    if name in ("task_arithmetic", "dare_linear"):
      if normalize:
        s = sum(w)
        w = [x / s for x in w] if abs(s) >= 1e-8 else w
      out["weights"] = w
    else:
      out.update(weights=w, aggregate="mean" if normalize else "sum", sign="sum",
                 scope=pl.recipe.options.get("scope", "tensor"))
    if name == "task_arithmetic":
      if density != 1.0:
        raise RecipeError(f"density: task_arithmetic trims nothing (mergekit ignores density there; {where} has "
                          f"{density})")
    elif name == "ties":
      if shared["rescale"]:
        raise RecipeError("parameters.rescale: ties with rescale (mergekit's L1-norm rescale of the trimmed "
                          "task vectors) is not available in mergejax")
      out["density"] = min(density, 1.0)
    else:  # DARE: mergekit's density is the keep probability
      out["drop_rate"] = max(0.0, 1.0 - density)
      if name == "dare_ties":
        if not shared["rescale"]:
          raise RecipeError("parameters.rescale: dare_ties without rescale is not available in mergejax (use "
                            "dare_linear or keep rescale)")
        out["density"] = 1.0
      else:
        out["rescale"] = shared["rescale"]
    return out
  # A method mergejax registers under the mergekit name: hyperparameters by name.
  out = {("lam" if k == "lambda" else k): v for k, v in shared.items() if k != "int8_mask"}
  if "normalize" in out:
    out["aggregate"] = "mean" if out.pop("normalize") else "sum"
  for k in (per[0] if per else {}):
    if k == "weight":
      continue
    values = sorted({p[k] for p in per}, key=repr)
    if len(values) > 1:
      raise RecipeError(f"{k}: the models have different values {values} for {where}; mergejax applies one {k} to "
                        "all models of a tensor")
    out[k] = values[0]
  if w is not None:
    out["weights"] = w
  return out


def passthrough_scale(pl: Plan, leaf: str, t: float, source: int, slice_index: int | None = None) -> float | None:
  """mergekit passthrough's per-model ``scale`` for ``leaf`` (None: copy unscaled)."""
  r = pl.recipe
  e = pl.entries[source]
  levels = [(f"{e.where}.parameters", e.parameters)]
  if slice_index is not None:
    levels.append((f"slices[{slice_index}].parameters", r.slices[slice_index].parameters))
  levels.append(("parameters", r.parameters))
  return _resolve(KitParam("scale", float, INPUT, None), levels, leaf, t, e.where)
