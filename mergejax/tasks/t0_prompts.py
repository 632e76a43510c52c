"""Promptsource-style prompt templates rendered with tf.strings inside tf.data (no Jinja at run time).

T0's prompts (bigscience ``promptsource``) are Jinja templates ``"<inputs> ||| <target>"`` with an optional
``answer_choices`` template ``"<choice> ||| <choice> ..."``. :class:`Template` holds one as data and
:func:`compile_template` turns it into a function of a TFDS example that runs in a ``tf.data`` map. The
language is the subset of Jinja those prompts use, with Jinja's semantics, so a template renders exactly
as promptsource's Jinja renderer would render it (``tests/test_t0_prompts.py`` checks every template
against Jinja):

* text, ``{{ expr }}``, ``{% if %}/{% elif %}/{% else %}/{% endif %}``, ``{% set name = expr %}`` and
  ``{% for x in expr %}`` / ``{% for a, b in zip(x, y) %}`` / ``{% for n in range(k) %}`` (one level;
  ``loop.index`` / ``loop.index0``; the body is rendered for all items at once);
* expressions: fields (``premise``, ``choices.text``, ``input_text["table"]["content"]``), string, int
  and list literals, ``x[i]`` / ``x[a:b]`` on strings (characters) and lists (out of range: ""), ``+``,
  ``-``, comparisons, ``and`` / ``or`` / ``not``, ``a if c else b``;
* filters ``| lower``, ``upper``, ``capitalize``, ``trim`` / ``trim(chars)``, ``join(sep)``,
  ``replace(a, b)``, ``length``, ``int``, ``string``, ``choice``; methods ``.lower()``, ``.upper()``,
  ``.strip()``, ``.split(sep)``, ``.replace(a, b)``, ``sep.join(list)``, ``list.index(x)``.

Rendering follows promptsource's ``Template.apply``: every ``|||`` in the example's strings is protected,
``answer_choices`` is rendered, split on ``|||`` and stripped, then the prompt is rendered with it, split
on ``|||`` into inputs and target, each stripped. As in T0's seqio tasks, an example a template does not
apply to (not exactly two parts, or an empty input or target) is dropped, and a choice task's correct
answer is the choice equal to the target.

One deliberate difference: Jinja's ``choice`` filter draws at random on every rendering; here it draws
from a per-example seed (a hash of the example), so a template renders an example the same way every
time (evaluation must be reproducible).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any, Callable, Mapping

import tensorflow as tf

_PIPE = "|||"
_PIPE_GUARD = "\x1fPIPE\x1f"  # stands in for "|||" inside the example's strings while rendering


@dataclasses.dataclass(frozen=True)
class Template:
  """One prompt template, as data.

  Attributes:
    name: the name of the promptsource template this one follows.
    id: that template's id (its key in promptsource's ``templates.yaml``).
    jinja: ``"<inputs> ||| <target>"`` in the language above.
    answer_choices: ``"<choice> ||| ..."`` (rank classification), or None (generation).
    references: for generation, an expression giving every acceptable answer (a list), e.g.
      ``"answers"``; None: the target alone.
    note: how the task it poses differs from the followed template's (e.g. the TFDS copy of the data).
  """

  name: str
  id: str
  jinja: str
  answer_choices: str | None = None
  references: str | None = None
  note: str = ""


class TemplateError(ValueError):
  """A template uses something the language does not have, or a field the example lacks."""


# -- parsing ------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"(\{\{.*?\}\}|\{%.*?%\})", re.DOTALL)


@dataclasses.dataclass
class _Text:
  text: str


@dataclasses.dataclass
class _Out:
  expr: ast.AST


@dataclasses.dataclass
class _If:
  branches: list  # [(condition, body)]
  otherwise: list


@dataclasses.dataclass
class _For:
  names: tuple[str, ...]
  items: ast.AST
  body: list


@dataclasses.dataclass
class _Set:
  name: str
  expr: ast.AST


_ARITH = (ast.Add, ast.Sub, ast.Mult)


def _jinja_precedence(node: ast.AST) -> ast.AST:
  """Jinja filters bind tighter than arithmetic (``x | int - 1`` is ``(x | int) - 1``); Python's ``|``
  binds looser. Rotates ``a | (b - c)`` into ``(a | b) - c`` wherever it occurs."""
  for field, value in ast.iter_fields(node):
    if isinstance(value, ast.AST):
      setattr(node, field, _jinja_precedence(value))
    elif isinstance(value, list):
      setattr(node, field, [_jinja_precedence(v) if isinstance(v, ast.AST) else v for v in value])
  if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
    right = node.right
    if isinstance(right, ast.BinOp) and isinstance(right.op, _ARITH):
      return ast.BinOp(_jinja_precedence(ast.BinOp(node.left, ast.BitOr(), right.left)), right.op, right.right)
  return node


def _expr(source: str) -> ast.AST:
  try:
    tree = ast.parse(source.strip(), mode="eval").body
  except SyntaxError as e:
    raise TemplateError(f"cannot parse expression {source.strip()!r}: {e.msg}") from None
  return _jinja_precedence(tree)


def parse(source: str) -> list:
  """The template's node list (raises :class:`TemplateError` on unsupported syntax)."""
  root: list = []
  stack: list[tuple[str, Any, list]] = [("root", None, root)]  # (kind, node, list being filled)
  for piece in _TOKEN.split(source):
    if not piece:
      continue
    body = stack[-1][2]
    if piece.startswith("{{"):
      body.append(_Out(_expr(piece[2:-2])))
      continue
    if not piece.startswith("{%"):
      body.append(_Text(piece))
      continue
    stmt = piece[2:-2].strip()
    if stmt.startswith("-") or stmt.endswith("-"):
      raise TemplateError(f"whitespace control is not supported: {piece!r}")
    word = stmt.split(None, 1)[0]
    rest = stmt[len(word):].strip()
    if word == "if":
      node = _If([(_expr(rest), [])], [])
      body.append(node)
      stack.append(("if", node, node.branches[0][1]))
    elif word in ("elif", "else"):
      kind, node, _ = stack[-1]
      if kind != "if":
        raise TemplateError(f"{{% {word} %}} outside {{% if %}}")
      if word == "elif":
        node.branches.append((_expr(rest), []))
        stack[-1] = ("if", node, node.branches[-1][1])
      else:
        stack[-1] = ("else", node, node.otherwise)
    elif word == "endif":
      if stack[-1][0] not in ("if", "else"):
        raise TemplateError("{% endif %} without {% if %}")
      stack.pop()
    elif word == "for":
      m = re.fullmatch(r"([\w\s,]+?)\s+in\s+(.+)", rest, re.DOTALL)
      if not m:
        raise TemplateError(f"cannot parse {piece!r}")
      if any(k == "for" for k, _, _ in stack):
        raise TemplateError("nested {% for %} loops are not supported")
      node = _For(tuple(n.strip() for n in m.group(1).split(",")), _expr(m.group(2)), [])
      body.append(node)
      stack.append(("for", node, node.body))
    elif word == "endfor":
      if stack[-1][0] != "for":
        raise TemplateError("{% endfor %} without {% for %}")
      stack.pop()
    elif word == "set":
      m = re.fullmatch(r"(\w+)\s*=\s*(.+)", rest, re.DOTALL)
      if not m:
        raise TemplateError(f"cannot parse {piece!r}")
      body.append(_Set(m.group(1), _expr(m.group(2))))
    else:
      raise TemplateError(f"unsupported statement {piece!r}")
  if len(stack) != 1:
    raise TemplateError(f"unclosed {{% {stack[-1][0]} %}}")
  return root


# -- values -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _V:
  """A value: a tensor and what it means. ``kind`` is "str", "int", "bool", "list" (of strings) or
  "other" (a field no operation accepts). Inside a for loop a scalar kind may hold one value per item (a
  vector); a "list" is always one list."""

  t: tf.Tensor
  kind: str
  py: Any = None  # the Python value of a literal


_EMPTY_LIST = object()  # the literal []


def _const(x) -> _V:
  if isinstance(x, bool):
    return _V(tf.constant(x), "bool", x)
  if isinstance(x, int):
    return _V(tf.constant(x, tf.int64), "int", x)
  if isinstance(x, str):
    return _V(tf.constant(x), "str", x)
  raise TemplateError(f"unsupported literal {x!r}")


def _wrap(x) -> Any:
  """A field of the example (a tensor or a dict of them) as a value."""
  if isinstance(x, Mapping):
    return {k: _wrap(v) for k, v in x.items()}
  if isinstance(x, _V):
    return x
  t = tf.convert_to_tensor(x)
  if t.dtype == tf.string:
    return _V(t, "list" if t.shape.rank == 1 else "str")
  if t.dtype == tf.bool:
    return _V(t, "bool")
  if t.dtype.is_integer and t.shape.rank == 0:
    return _V(tf.cast(t, tf.int64), "int")
  return _V(t, "other")  # integer lists, floats: no template reads them


def _as_str(v: _V) -> tf.Tensor:
  if v.kind == "str":
    return v.t
  if v.kind == "int":
    return tf.strings.as_string(v.t)
  if v.kind == "bool":
    return tf.where(v.t, "True", "False")
  raise TemplateError(f"cannot render a {v.kind} value (a list must be joined first)")


def _chars(s: tf.Tensor) -> tf.Tensor:
  return tf.strings.length(s, unit="UTF8_CHAR")


def _substr(s: tf.Tensor, start, stop) -> tf.Tensor:
  """Python's ``s[start:stop]`` on characters (None: open end), never out of range."""
  n = tf.cast(_chars(s), tf.int64)

  def norm(i, default):
    if i is None:
      return default
    i = tf.cast(i, tf.int64)
    return tf.clip_by_value(tf.where(i < 0, i + n, i), 0, n)

  a, b = norm(start, tf.zeros_like(n)), norm(stop, n)
  return tf.strings.substr(s, tf.cast(a, tf.int32), tf.cast(tf.maximum(b - a, 0), tf.int32), unit="UTF8_CHAR")


def _char_at(s: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
  n = tf.cast(_chars(s), tf.int64)
  i = tf.where(i < 0, i + n, i)
  ok = (i >= 0) & (i < n)
  return tf.where(ok, _substr(s, tf.where(ok, i, 0), tf.where(ok, i + 1, 0)), "")


def _item(lst: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
  """``lst[i]`` with Python's negative indices; "" when out of range (Jinja's undefined renders empty)."""
  n = tf.cast(tf.size(lst), tf.int64)
  i = tf.where(i < 0, i + n, i)
  ok = (i >= 0) & (i < n)
  safe = tf.concat([lst, [""]], 0)
  return tf.where(ok, tf.gather(safe, tf.where(ok, i, n)), "")


def _escape_regex_t(s: tf.Tensor) -> tf.Tensor:
  return tf.strings.regex_replace(s, r"([\\.^$|?*+()\[\]{}])", r"\\\1")


def _replace(s: _V, old: _V, new: _V) -> _V:
  if old.kind != "str" or new.kind != "str":
    raise TemplateError("replace() takes strings")
  if s.kind not in ("str", "list"):
    raise TemplateError("replace() applies to strings")
  # regex_replace takes one pattern; a per-item pattern (inside a loop) is not supported.
  if old.t.shape.rank != 0 or new.t.shape.rank != 0:
    raise TemplateError("replace() with per-item arguments is not supported")
  new_escaped = tf.strings.regex_replace(new.t, r"\\", r"\\\\")
  return _V(tf.strings.regex_replace(s.t, _escape_regex_t(old.t), new_escaped), s.kind)


def _strip(s: _V, chars: _V | None) -> _V:
  if s.kind not in ("str", "list"):
    raise TemplateError("trim / strip applies to strings")
  if chars is None:
    return _V(tf.strings.strip(s.t), s.kind)
  if chars.t.shape.rank != 0:
    raise TemplateError("trim(chars) with per-item arguments is not supported")
  cls = tf.strings.join(["[", _escape_regex_t(chars.t), "]+"])
  pattern = tf.strings.join(["^", cls, "|", cls, "$"])
  return _V(tf.strings.regex_replace(s.t, pattern, ""), s.kind)


def _capitalize(s: _V) -> _V:
  first = tf.strings.upper(_substr(s.t, 0, 1), encoding="utf-8")
  return _V(tf.strings.join([first, tf.strings.lower(_substr(s.t, 1, None), encoding="utf-8")]), s.kind)


def _to_int(v: _V) -> _V:
  if v.kind == "int":
    return v
  if v.kind == "bool":
    return _V(tf.cast(v.t, tf.int64), "int")
  if v.kind == "str":
    s = tf.strings.strip(v.t)
    ok = tf.strings.regex_full_match(s, r"[+-]?[0-9]+")
    return _V(tf.where(ok, tf.strings.to_number(tf.where(ok, s, "0"), tf.int64), tf.zeros_like(s, tf.int64)), "int")
  raise TemplateError("int of a list")


def _length(v: _V) -> _V:
  if v.kind == "list":
    return _V(tf.cast(tf.size(v.t), tf.int64), "int")
  if v.kind == "str":
    return _V(tf.cast(_chars(v.t), tf.int64), "int")
  raise TemplateError(f"length of a {v.kind}")


def _join(lst: _V, sep: _V) -> _V:
  if lst.kind != "list":
    raise TemplateError("join applies to a list")
  if not isinstance(sep.py, str):
    raise TemplateError("join's separator must be a string literal")
  return _V(tf.strings.reduce_join(lst.t, separator=sep.py), "str")


class _Renderer:
  """Evaluates one template's nodes on one example's fields (inside a tf.data map)."""

  def __init__(self, fields: Mapping[str, Any], seed: tf.Tensor, where: str):
    self.scope: dict[str, Any] = dict(fields)
    self.seed = tf.cast(seed, tf.int64)
    self.where = where
    self.loop_len: tf.Tensor | None = None
    self.draws = 0

  def fail(self, msg: str):
    raise TemplateError(f"{self.where}: {msg}")

  # expressions
  def ev(self, node: ast.AST) -> Any:
    meth = getattr(self, "ev_" + type(node).__name__, None)
    if meth is None:
      self.fail(f"unsupported expression {ast.unparse(node)!r}")
    return meth(node)

  def ev_Constant(self, node):
    return _const(node.value)

  def ev_List(self, node):
    if not node.elts:
      return _EMPTY_LIST
    values = [self.ev(e) for e in node.elts]
    if any(not isinstance(v, _V) or v.kind != "str" or v.t.shape.rank != 0 for v in values):
      self.fail(f"only lists of strings are supported: {ast.unparse(node)!r}")
    return _V(tf.stack([v.t for v in values]), "list")

  def ev_Name(self, node):
    if node.id not in self.scope:
      self.fail(f"unknown name {node.id!r} (fields: {sorted(k for k in self.scope if not k.startswith('_'))})")
    return self.scope[node.id]

  def _key(self, obj, key: str, text: str):
    if not isinstance(obj, Mapping):
      self.fail(f"{text!r}: not a record")
    if key not in obj:
      self.fail(f"{text!r}: no field {key!r} (has {sorted(obj)})")
    return obj[key]

  def ev_Attribute(self, node):
    return self._key(self.ev(node.value), node.attr, ast.unparse(node))

  def ev_Subscript(self, node):
    obj = self.ev(node.value)
    if isinstance(obj, Mapping):
      key = node.slice
      if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
        self.fail(f"records are indexed by a string: {ast.unparse(node)!r}")
      return self._key(obj, key.value, ast.unparse(node))
    if not isinstance(obj, _V) or obj.kind not in ("str", "list"):
      self.fail(f"cannot index {ast.unparse(node.value)!r}")
    if isinstance(node.slice, ast.Slice):
      if node.slice.step is not None:
        self.fail("slices with a step are not supported")
      lo = None if node.slice.lower is None else self._int(node.slice.lower)
      hi = None if node.slice.upper is None else self._int(node.slice.upper)
      if obj.kind == "str":
        return _V(_substr(obj.t, lo, hi), "str")
      return _V(obj.t[lo:hi], "list")
    i = self._int(node.slice)
    if obj.kind == "str":
      return _V(_char_at(obj.t, i), "str")
    return _V(_item(obj.t, i), "str")

  def _int(self, node) -> tf.Tensor:
    v = self.ev(node)
    if not isinstance(v, _V) or v.kind != "int":
      self.fail(f"{ast.unparse(node)!r} is not an integer")
    return v.t

  def ev_BinOp(self, node):
    if isinstance(node.op, ast.BitOr):
      return self.filter(self.ev(node.left), node.right)
    a, b = self.ev(node.left), self.ev(node.right)
    if isinstance(node.op, ast.Add) and a.kind == "str" and b.kind == "str":
      return _V(tf.strings.join([a.t, b.t]), "str")
    if a.kind != "int" or b.kind != "int":
      self.fail(f"arithmetic on non-integers: {ast.unparse(node)!r}")
    ops = {ast.Add: tf.add, ast.Sub: tf.subtract, ast.Mult: tf.multiply}
    if type(node.op) not in ops:
      self.fail(f"unsupported operator in {ast.unparse(node)!r}")
    return _V(ops[type(node.op)](a.t, b.t), "int")

  def ev_UnaryOp(self, node):
    v = self.ev(node.operand)
    if isinstance(node.op, ast.Not):
      return _V(tf.logical_not(self._truth(v)), "bool")
    if isinstance(node.op, ast.USub) and v.kind == "int":
      return _V(-v.t, "int")
    self.fail(f"unsupported operator in {ast.unparse(node)!r}")

  def _truth(self, v) -> tf.Tensor:
    if v is _EMPTY_LIST:
      return tf.constant(False)
    if v.kind == "bool":
      return v.t
    if v.kind == "int":
      return tf.not_equal(v.t, 0)
    if v.kind == "str":
      return tf.not_equal(v.t, "")
    return tf.greater(tf.size(v.t), 0)

  def ev_BoolOp(self, node):
    vals = [self._truth(self.ev(v)) for v in node.values]
    fn = tf.logical_and if isinstance(node.op, ast.And) else tf.logical_or
    out = vals[0]
    for v in vals[1:]:
      out = fn(out, v)
    return _V(out, "bool")

  def ev_Compare(self, node):
    if len(node.ops) != 1:
      self.fail(f"chained comparisons are not supported: {ast.unparse(node)!r}")
    op, a, b = node.ops[0], self.ev(node.left), self.ev(node.comparators[0])
    if a is _EMPTY_LIST or b is _EMPTY_LIST:  # `x == []`: is the list empty
      other = b if a is _EMPTY_LIST else a
      if not isinstance(op, (ast.Eq, ast.NotEq)) or other is _EMPTY_LIST or other.kind != "list":
        self.fail(f"unsupported comparison with []: {ast.unparse(node)!r}")
      empty = tf.equal(tf.size(other.t), 0)
      return _V(empty if isinstance(op, ast.Eq) else tf.logical_not(empty), "bool")
    if a.kind == "list" or b.kind == "list":
      self.fail(f"list comparisons are not supported: {ast.unparse(node)!r}")
    if isinstance(op, (ast.Eq, ast.NotEq)):
      if (a.kind == "str") != (b.kind == "str"):  # Jinja: a string never equals a number
        eq = tf.zeros_like(a.t if a.t.shape.rank else b.t, tf.bool)
      else:
        eq = tf.equal(a.t, b.t)
      return _V(eq if isinstance(op, ast.Eq) else tf.logical_not(eq), "bool")
    ops = {ast.Lt: tf.less, ast.LtE: tf.less_equal, ast.Gt: tf.greater, ast.GtE: tf.greater_equal}
    if type(op) not in ops or a.kind != "int" or b.kind != "int":
      self.fail(f"unsupported comparison {ast.unparse(node)!r}")
    return _V(ops[type(op)](a.t, b.t), "bool")

  def ev_IfExp(self, node):
    return self.select(self._truth(self.ev(node.test)), self.ev(node.body), self.ev(node.orelse))

  def select(self, cond: tf.Tensor, a: _V, b: _V) -> _V:
    if a.kind == "list" or b.kind == "list":
      if a.kind != b.kind or cond.shape.rank != 0:
        self.fail("a conditional list must be a list in both branches, outside loops")
      return _V(tf.cond(cond, lambda: a.t, lambda: b.t), "list")
    if a.kind != b.kind:
      a, b = _V(_as_str(a), "str"), _V(_as_str(b), "str")
    return _V(tf.where(cond, a.t, b.t), a.kind)

  def ev_Call(self, node):
    if node.keywords:
      self.fail(f"keyword arguments are not supported: {ast.unparse(node)!r}")
    if isinstance(node.func, ast.Attribute):
      return self.method(self.ev(node.func.value), node.func.attr, [self.ev(a) for a in node.args], node)
    self.fail(f"unsupported call {ast.unparse(node)!r}")

  def method(self, obj, name: str, args: list, node) -> _V:
    if not isinstance(obj, _V):
      self.fail(f"{ast.unparse(node)!r}: not a string")
    if name == "join" and obj.kind == "str":
      if len(args) != 1:
        self.fail("join() takes one list")
      return _join(args[0], obj)
    if name == "index" and obj.kind == "list" and len(args) == 1 and args[0].kind == "str":
      # list.index(x): the first position of x (past the end when absent, which renders as "").
      hits = tf.cast(tf.where(tf.equal(obj.t, args[0].t))[:, 0], tf.int64)
      return _V(tf.concat([hits, [tf.cast(tf.size(obj.t), tf.int64)]], 0)[0], "int")
    if obj.kind not in ("str", "list"):
      self.fail(f"{ast.unparse(node)!r}: not a string")
    if name == "lower" and not args:
      return _V(tf.strings.lower(obj.t, encoding="utf-8"), obj.kind)
    if name == "upper" and not args:
      return _V(tf.strings.upper(obj.t, encoding="utf-8"), obj.kind)
    if name == "capitalize" and not args:
      return _capitalize(obj)
    if name == "strip" and len(args) <= 1:
      return _strip(obj, args[0] if args else None)
    if name == "replace" and len(args) == 2:
      return _replace(obj, args[0], args[1])
    if name == "split" and obj.kind == "str" and len(args) <= 1:
      if obj.t.shape.rank != 0:
        self.fail("split() inside a loop is not supported")
      if args and not isinstance(args[0].py, str):
        self.fail("split's separator must be a string literal")
      return _V(tf.strings.split(obj.t, args[0].py) if args else tf.strings.split(obj.t), "list")
    self.fail(f"unsupported method {ast.unparse(node)!r}")

  def filter(self, v, node) -> _V:
    if isinstance(node, ast.Name):
      name, args = node.id, []
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
      name, args = node.func.id, [self.ev(a) for a in node.args]
    else:
      self.fail(f"unsupported filter {ast.unparse(node)!r}")
    if v is _EMPTY_LIST:
      v = _V(tf.zeros([0], tf.string), "list")
    if name in ("lower", "upper", "capitalize") and not args:
      return self.method(v, name, [], node)
    if name == "trim" and len(args) <= 1:
      return _strip(v, args[0] if args else None)
    if name == "join" and len(args) <= 1:
      return _join(v, args[0] if args else _const(""))
    if name == "replace" and len(args) == 2:
      return _replace(v, args[0], args[1])
    if name == "length" and not args:
      return _length(v)
    if name == "int" and not args:
      return _to_int(v)
    if name == "string" and not args:
      return _V(_as_str(v), "str")
    if name == "choice" and not args:
      return self.choice(v)
    self.fail(f"unsupported filter {ast.unparse(node)!r}")

  def choice(self, v: _V) -> _V:
    """One item of a list, drawn from the example's seed (each use in a template draws anew)."""
    if v.kind != "list":
      self.fail("choice applies to a list")
    self.draws += 1
    key = tf.strings.join([tf.strings.as_string(self.seed), str(self.draws)], separator=":")
    n = tf.maximum(tf.cast(tf.size(v.t), tf.int64), 1)
    i = tf.math.floormod(tf.strings.to_hash_bucket_fast(key, 2**31 - 1), n)
    return _V(_item(v.t, i), "str")

  # statements
  def render(self, nodes: list) -> tf.Tensor:
    parts = []
    for node in nodes:
      if isinstance(node, _Text):
        parts.append(tf.constant(node.text))
      elif isinstance(node, _Out):
        v = self.ev(node.expr)
        if v is _EMPTY_LIST or isinstance(v, Mapping):
          self.fail(f"cannot render {ast.unparse(node.expr)!r}")
        parts.append(_as_str(v))
      elif isinstance(node, _Set):
        self.scope[node.name] = self.ev(node.expr)
      elif isinstance(node, _If):
        parts.append(self.render_if(node))
      elif isinstance(node, _For):
        parts.append(self.render_for(node))
    if not parts:
      return tf.constant("")
    return parts[0] if len(parts) == 1 else tf.strings.join(parts)

  def render_if(self, node: _If) -> tf.Tensor:
    out = self.render(node.otherwise)
    for cond, body in reversed(node.branches):
      out = tf.where(self._truth(self.ev(cond)), self.render(body), out)
    return out

  def _loop_items(self, node: _For) -> list[tf.Tensor]:
    it = node.items
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id in ("zip", "range"):
      if it.func.id == "range":
        if len(it.args) != 1:
          self.fail("range() takes one argument")
        return [tf.range(self._int(it.args[0]), dtype=tf.int64)]
      lists = [self.ev(a) for a in it.args]
      if any(not isinstance(x, _V) or x.kind != "list" for x in lists):
        self.fail("zip() takes lists")
      n = tf.reduce_min([tf.size(x.t) for x in lists])
      return [x.t[:n] for x in lists]
    v = self.ev(it)
    if not isinstance(v, _V) or v.kind != "list":
      self.fail(f"cannot loop over {ast.unparse(it)!r}")
    return [v.t]

  def render_for(self, node: _For) -> tf.Tensor:
    items = self._loop_items(node)
    if len(items) != len(node.names):
      self.fail(f"{{% for {', '.join(node.names)} %}} unpacks {len(items)} value(s)")
    saved = dict(self.scope)
    n = tf.size(items[0], out_type=tf.int64)
    for name, x in zip(node.names, items):
      self.scope[name] = _V(x, "int" if x.dtype == tf.int64 else "str")
    self.scope["loop"] = {"index": _V(tf.range(1, n + 1), "int"), "index0": _V(tf.range(n), "int")}
    body = self.render(node.body)
    self.scope = saved
    # A body that does not depend on the items renders once per item.
    body = tf.broadcast_to(body, [n]) if body.shape.rank == 0 else body
    return tf.strings.reduce_join(body)


# -- compiled templates -------------------------------------------------------------------------------
def _guard(fields: Any) -> Any:
  """Every string of the example with "|||" protected (promptsource's pipe escaping)."""
  if isinstance(fields, Mapping):
    return {k: _guard(v) for k, v in fields.items()}
  if isinstance(fields, _V):
    return fields if fields.kind not in ("str", "list") else _V(
        tf.strings.regex_replace(fields.t, re.escape(_PIPE), _PIPE_GUARD), fields.kind)
  return _guard(_wrap(fields))


def _unguard(t: tf.Tensor) -> tf.Tensor:
  return tf.strings.regex_replace(t, re.escape(_PIPE_GUARD), _PIPE)


def _split_parts(rendered: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Rendered text split on "|||", each part stripped: (parts, number of parts)."""
  parts = tf.strings.strip(tf.strings.split(rendered, _PIPE))
  return parts, tf.size(parts)


@dataclasses.dataclass(frozen=True)
class Rendered:
  """One template applied to one example (tensors).

  Attributes:
    inputs, targets: the prompt and its target (scalar strings).
    choices: the answer choices (a string vector; empty for generation templates).
    references: every acceptable answer of a generation template (the target unless the template
      names them).
    valid: whether the example counts for this template (exactly two non-empty parts, and for a choice
      template a choice equal to the target).
  """

  inputs: tf.Tensor
  targets: tf.Tensor
  choices: tf.Tensor
  references: tf.Tensor
  valid: tf.Tensor


def compile_template(template: Template, where: str = "") -> Callable[[Mapping[str, Any], tf.Tensor], Rendered]:
  """``fn(fields, seed) -> Rendered``: the template as a function of an example's fields (a dict of
  tensors, nested dicts for nested features) and a per-example integer seed (for ``choice``)."""
  where = where or template.name
  body = parse(template.jinja)
  choices_body = parse(template.answer_choices) if template.answer_choices is not None else None
  references = _expr(template.references) if template.references is not None else None

  def fn(fields: Mapping[str, Any], seed: tf.Tensor) -> Rendered:
    scope = _guard(dict(fields))
    r = _Renderer(scope, seed, where)
    if choices_body is not None:
      choices, _ = _split_parts(r.render(choices_body))
      r.scope["answer_choices"] = _V(choices, "list")
    else:
      choices = tf.zeros([0], tf.string)
    parts, n = _split_parts(r.render(body))
    padded = tf.concat([parts, ["", ""]], 0)
    inputs, target = padded[0], padded[1]
    valid = tf.equal(n, 2) & tf.not_equal(inputs, "") & tf.not_equal(target, "")
    if choices_body is not None:
      valid &= tf.reduce_any(tf.equal(choices, target))
    if references is not None:
      ref = r.ev(references)
      if ref is _EMPTY_LIST or not isinstance(ref, _V) or ref.kind != "list":
        r.fail(f"references {template.references!r} must be a list")
      refs = tf.strings.strip(ref.t)
    else:
      refs = target[None]
    return Rendered(_unguard(inputs), _unguard(target), _unguard(choices), _unguard(refs), valid)

  return fn
