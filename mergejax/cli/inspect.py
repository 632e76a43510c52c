r"""``mergejax-inspect``: what a checkpoint is, how checkpoints differ, and what their task vectors look like.

    mergejax-inspect PATH                 # architecture, vocabulary, tied embeddings, every leaf, totals
    mergejax-inspect BASE EXPERT [...]    # differences from BASE; where they agree, task-vector statistics
    mergejax-inspect --values A B         # ... and max |a - b| of each leaf that differs in value

An expert may be a PEFT LoRA adapter directory (it is applied to BASE). Task-vector statistics
(:math:`\tau_i = \theta_i - \theta_{BASE}` over the float leaves every input has with the same shape):
:math:`\|\tau_i\|_2`, :math:`\|\tau_i\| / \|\theta_{BASE}\|`, the fraction of non-zero entries, the cosine
between experts' task vectors and their sign agreement (of the entries where both are non-zero, the
fraction with the same sign; 50% is what independent signs give). Leaves are read one at a time, in
chunks, so memory stays bounded whatever the model's size. The last line is a one-line summary.

Exit status: 0 (one checkpoint, or no structural difference), 1 (differences found), 2 (bad input).
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys
from typing import Any, Sequence

import numpy as np
from absl import app, flags, logging

from mergejax import cli
from mergejax import tree as tree_lib
from mergejax.checkpoints import open_source
from mergejax.checkpoints.mapped import host_leaf

_VALUES = flags.DEFINE_bool("values", False, "Also compare leaf values (reads every leaf, one at a time).")
_STATS = flags.DEFINE_bool("stats", True, "With several checkpoints: task-vector statistics against the first "
                           "(reads every float leaf, one at a time).")
_MAX_SAME = 3  # differences of one kind shown before they are counted
_CHUNK = 1 << 22  # entries per step of the statistics pass


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return str(n)


def _fmt_count(n: int) -> str:
  for unit, k in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= k:
      return f"{n / k:.2f}{unit}"
  return str(n)


def model_info(src: Any) -> dict[str, Any]:
  """Architecture, vocabulary size, tied embeddings and merge provenance from a checkpoint's files."""
  d = getattr(src, "dir", None)
  d = pathlib.Path(d) if d is not None else None
  cfg, man = {}, {}
  for name, into in (("config.json", cfg), ("model_config.json", cfg), ("mergejax_manifest.json", man)):
    if d is not None and (d / name).is_file() and not into:
      try:
        into.update(json.loads((d / name).read_text()))
      except (OSError, ValueError):
        pass
  text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
  paths = {s.path for s in src.specs()}
  has_embed = any("embed" in p or p.endswith("wte.weight") for p in paths)
  has_head = any("lm_head" in p or p.endswith("embed_out.weight") for p in paths)
  tied = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings"))
  if tied is None and has_embed:
    tied = not has_head
  arch = cfg.get("architectures") or []
  vocab = cfg.get("vocab_size", text.get("vocab_size"))
  n_tok = None
  if d is not None and (d / "tokenizer.json").is_file():
    try:
      tj = json.loads((d / "tokenizer.json").read_text())
      v = tj.get("model", {}).get("vocab", {})
      ids = set(v.values()) if isinstance(v, dict) else set(range(len(v)))
      ids |= {t.get("id") for t in tj.get("added_tokens", []) if isinstance(t, dict)}
      n_tok = len(ids)
    except (OSError, ValueError, AttributeError):
      pass
  return {"model_type": cfg.get("model_type"), "architecture": arch[0] if arch else None, "vocab_size": vocab,
          "tokenizer_tokens": n_tok, "tied_embeddings": tied, "dtype": cfg.get("dtype", cfg.get("torch_dtype")),
          "layers": cfg.get("num_hidden_layers", text.get("num_hidden_layers")),
          "merged_with": man.get("method"), "merge_hparams": man.get("hparams")}


def _info_lines(path: str, src: Any, info: dict[str, Any]) -> list[str]:
  out = [f"{path} ({src.format})"]
  if info["model_type"] or info["architecture"]:
    out.append(f"  architecture: {info['architecture'] or '?'} (model_type {info['model_type'] or '?'}"
               + (f", {info['layers']} layers" if info["layers"] else "") + ")")
  if info["vocab_size"] is not None or info["tokenizer_tokens"] is not None:
    out.append(f"  vocabulary: {info['vocab_size'] if info['vocab_size'] is not None else '?'} rows"
               + (f", tokenizer {info['tokenizer_tokens']} tokens" if info["tokenizer_tokens"] is not None else ""))
  if info["tied_embeddings"] is not None:
    out.append(f"  tied embeddings: {'yes' if info['tied_embeddings'] else 'no'}")
  if info["merged_with"]:
    hp = {k: v for k, v in (info["merge_hparams"] or {}).items() if v is not None}
    out.append(f"  merged by mergejax: {info['merged_with']} " + (str(hp) if hp else "(per-tensor hyperparameters: "
                                                                   "see its README.md)"))
  return out


def describe(path: str) -> list[str]:
  src = open_source(path)
  specs = src.specs()
  info = model_info(src)
  width = max((len(s.path) for s in specs), default=4)
  lines = _info_lines(path, src, info)
  lines.append(f"{'leaf':<{width}}  {'shape':<20} {'dtype':<10} {'bytes':>12}")
  for s in specs:
    lines.append(f"{s.path:<{width}}  {str(list(s.shape)):<20} {str(s.dtype):<10} {s.nbytes:>12}")
  total = sum(s.nbytes for s in specs)
  params = sum(s.size for s in specs)
  dtypes = sorted({str(s.dtype) for s in specs})
  lines.append(f"total: {len(specs)} leaves, {params:,} parameters, {total:,} bytes ({_fmt_bytes(total)})")
  bits = [f"{info['architecture'] or info['model_type'] or src.format}", f"{_fmt_count(params)} parameters",
          "/".join(dtypes), _fmt_bytes(total)]
  if info["vocab_size"] is not None:
    bits.append(f"vocab {info['vocab_size']}")
  if info["tied_embeddings"] is not None:
    bits.append("tied embeddings" if info["tied_embeddings"] else "untied embeddings")
  lines.append("summary: " + ", ".join(bits))
  return lines


def _open_all(paths: Sequence[str]) -> list[Any]:
  first = open_source(paths[0])
  return [first] + [open_source(p, base=first) for p in paths[1:]]


def differences(paths: Sequence[str], values: bool = False, srcs: Sequence[Any] | None = None) -> list[str]:
  """Every difference between the first checkpoint and each other one (repeats of one kind counted)."""
  srcs = list(srcs) if srcs is not None else _open_all(paths)
  ref = {s.path: s for s in srcs[0].specs()}
  out = []
  for p, src in zip(paths[1:], srcs[1:]):
    other = {s.path: s for s in src.specs()}
    kinds: dict[tuple, list[str]] = collections.OrderedDict()
    for k in sorted(set(ref) - set(other)):
      kinds.setdefault(("missing",), []).append(f"{p}: missing leaf '{k}' (in {paths[0]})")
    for k in sorted(set(other) - set(ref)):
      kinds.setdefault(("extra",), []).append(f"{p}: extra leaf '{k}' (not in {paths[0]})")
    for k in sorted(set(ref) & set(other)):
      a, b = ref[k], other[k]
      if a.shape != b.shape:
        kinds.setdefault(("shape",), []).append(f"{p}: leaf '{k}' has shape {list(b.shape)}, {paths[0]} has "
                                                f"{list(a.shape)}")
      elif a.dtype != b.dtype:
        kinds.setdefault(("dtype", str(a.dtype), str(b.dtype)), []).append(
            f"{p}: leaf '{k}' has dtype {b.dtype}, {paths[0]} has {a.dtype}")
      elif values:
        x = np.asarray(host_leaf(srcs[0], k)).astype(np.float64)
        y = np.asarray(host_leaf(src, k)).astype(np.float64)
        if not np.array_equal(x, y, equal_nan=True):
          d = np.abs(x - y)
          kinds.setdefault(("values",), []).append(
              f"{p}: leaf '{k}' values differ: max |a-b| = {np.nanmax(d):.6g}, "
              f"{int(np.count_nonzero(x != y)):,} of {x.size:,} entries")
    for kind, lines in kinds.items():
      limit = None if kind == ("values",) else _MAX_SAME
      out += lines[:limit]
      if limit is not None and len(lines) > limit:
        if kind[0] == "dtype":
          what = f"leaves with dtype {kind[-1]} ({paths[0]}: {kind[1]})"
        else:
          what = {"missing": "missing leaves", "extra": "extra leaves", "shape": "leaves with other shapes"}[kind[0]]
        out.append(f"{p}: ... and {len(lines) - limit} more {what}")
  return out


def task_vector_stats(srcs: Sequence[Any]) -> dict[str, Any]:
  """Statistics of tau_i = expert_i - base over the float leaves all inputs share (same shape), read leaf by
  leaf in chunks of float64: norms, non-zeros, pairwise dot products and sign agreement counts."""
  base, experts = srcs[0], srcs[1:]
  per = [{s.path: s for s in x.specs()} for x in srcs]
  leaves = [p for p, s in per[0].items() if tree_lib.is_float_dtype(s.dtype)
            and all(p in q and q[p].shape == s.shape and tree_lib.is_float_dtype(q[p].dtype) for q in per[1:])]
  n = len(experts)
  sq, nz = np.zeros(n), np.zeros(n, np.int64)
  dot = np.zeros((n, n))
  same, both = np.zeros((n, n), np.int64), np.zeros((n, n), np.int64)
  base_sq, entries = 0.0, 0
  for p in leaves:
    b = np.asarray(host_leaf(base, p)).reshape(-1)
    xs = [np.asarray(host_leaf(e, p)).reshape(-1) for e in experts]
    for a in range(0, b.size, _CHUNK):
      b64 = b[a:a + _CHUNK].astype(np.float64)
      taus = [x[a:a + _CHUNK].astype(np.float64) - b64 for x in xs]
      signs = [np.sign(t) for t in taus]
      base_sq += float(b64 @ b64)
      entries += b64.size
      for i in range(n):
        sq[i] += taus[i] @ taus[i]
        nz[i] += int(np.count_nonzero(taus[i]))
        for j in range(i + 1, n):
          dot[i, j] += taus[i] @ taus[j]
          nonzero = (signs[i] != 0) & (signs[j] != 0)
          both[i, j] += int(nonzero.sum())
          same[i, j] += int((nonzero & (signs[i] == signs[j])).sum())
  norm = np.sqrt(sq)
  cos = np.full((n, n), np.nan)
  agree = np.full((n, n), np.nan)
  for i in range(n):
    cos[i, i], agree[i, i] = 1.0, 1.0
    for j in range(i + 1, n):
      if norm[i] > 0 and norm[j] > 0:
        cos[i, j] = cos[j, i] = dot[i, j] / (norm[i] * norm[j])
      if both[i, j]:
        agree[i, j] = agree[j, i] = same[i, j] / both[i, j]
  return {"leaves": len(leaves), "entries": entries, "norm": norm, "base_norm": float(np.sqrt(base_sq)),
          "nonzero": nz / max(entries, 1), "cosine": cos, "sign_agreement": agree}


def _stats_lines(paths: Sequence[str], st: dict[str, Any]) -> list[str]:
  names = [str(p) for p in paths[1:]]
  w = max(8, *(len(x) for x in names))
  out = [f"task vectors (expert - {paths[0]}) over {st['leaves']} float leaves, {st['entries']:,} entries:",
         f"  {'expert':<{w}}  {'|tau|':>10}  {'|tau|/|base|':>12}  {'non-zero':>9}"]
  for i, x in enumerate(names):
    rel = st["norm"][i] / st["base_norm"] if st["base_norm"] > 0 else float("nan")
    out.append(f"  {x:<{w}}  {st['norm'][i]:>10.4g}  {rel:>12.4g}  {100 * st['nonzero'][i]:>8.2f}%")
  if len(names) > 1:
    out.append("  cosine between task vectors / sign agreement where both are non-zero:")
    for i, x in enumerate(names):
      cells = []
      for j in range(len(names)):
        c, a = st["cosine"][i, j], st["sign_agreement"][i, j]
        cells.append("-" if i == j else f"{c:+.3f} / {100 * a:.1f}%" if not np.isnan(c) else "n/a")
      out.append(f"  {x:<{w}}  " + "  ".join(f"{c:>16}" for c in cells))
  return out


def _summary(paths: Sequence[str], diffs: Sequence[str], st: dict[str, Any] | None) -> str:
  n = len(paths) - 1
  if diffs:
    counted = sum(int(l.split("... and ")[1].split()[0]) if "... and " in l else 1 for l in diffs)
    head = f"summary: {counted} difference{'s' * (counted != 1)} from {paths[0]} in {n} checkpoint{'s' * (n != 1)}"
  else:
    head = f"summary: {n + 1} checkpoints with the same structure"
  if st is None or not st["leaves"]:
    return head
  rel = st["norm"] / st["base_norm"] if st["base_norm"] > 0 else st["norm"] * np.nan
  parts = [f"|tau|/|base| {', '.join(f'{r:.3g}' for r in rel)}"]
  if n > 1:
    iu = np.triu_indices(n, 1)
    parts.append(f"mean cosine {np.nanmean(st['cosine'][iu]):+.3f}")
    parts.append(f"mean sign agreement {100 * np.nanmean(st['sign_agreement'][iu]):.1f}%")
  return head + "; " + ", ".join(parts)


def main(argv: Sequence[str]) -> None:
  paths = argv[1:]
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not paths:
    raise app.UsageError("give one or more checkpoint paths")
  try:
    if len(paths) == 1:
      print("\n".join(describe(paths[0])))
      return
    srcs = _open_all(paths)
    for p, s in zip(paths, srcs):
      print("\n".join(_info_lines(p, s, model_info(s))))
    diffs = differences(paths, values=_VALUES.value, srcs=srcs)
    st = task_vector_stats(srcs) if _STATS.value else None
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"mergejax-inspect: error: {msg}", file=sys.stderr)
    sys.exit(2)
  if diffs:
    print("\n".join(diffs))
  else:
    print(f"no differences between {len(paths)} checkpoints" + (" (structure and values)" if _VALUES.value else
                                                              " (structure; --values to compare contents)"))
  if st is not None and st["leaves"]:
    print("\n".join(_stats_lines(paths, st)))
  print(_summary(paths, diffs, st))
  if diffs:
    sys.exit(1)


def run() -> None:
  cli.run_main(main)


if __name__ == "__main__":
  run()
