"""T0's prompt templates: the template language of mergejax.tasks.t0_prompts renders every template of
every T0 dataset exactly as promptsource does with Jinja (the independent reference), on fake examples
built from each TFDS builder's feature spec and mapped onto promptsource's field names."""

import jinja2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import t0_fakes
from mergejax.tasks import t0
from mergejax.tasks import t0_prompts
from mergejax.tasks import t0_templates


def _py(x):
  """Tensors (nested dicts of them) as the Python values Hugging Face datasets give promptsource."""
  if isinstance(x, dict):
    return {k: _py(v) for k, v in x.items()}
  x = np.asarray(x)
  if x.ndim:
    return [_py(v) for v in x]
  v = x.item()
  return v.decode("utf-8") if isinstance(v, bytes) else v


def _jinja_env(seed: int):
  """promptsource's Jinja environment (``zip`` global, ``choice`` filter), with the draws of ``choice``
  taken from ``seed`` as t0_prompts takes them (promptsource draws at random)."""
  env = jinja2.Environment(loader=jinja2.BaseLoader)
  env.globals.update(zip=zip)
  draws = [0]

  def choice(items):
    draws[0] += 1
    i = int(tf.strings.to_hash_bucket_fast(f"{seed}:{draws[0]}", 2**31 - 1)) % max(len(items), 1)
    return items[i]

  env.filters["choice"] = choice
  return env


def _jinja(template: t0_prompts.Template, fields: dict, seed: int):
  """promptsource's Template.apply: (choices or None, [parts of the prompt split on |||, stripped], refs)."""
  env = _jinja_env(seed)
  scope = dict(fields)
  choices = None
  if template.answer_choices is not None:
    choices = [c.strip() for c in env.from_string(template.answer_choices).render(**scope).split("|||")]
    scope["answer_choices"] = choices
  parts = [p.strip() for p in env.from_string(template.jinja).render(**scope).split("|||")]
  refs = None
  if template.references is not None:
    refs = [r.strip() for r in env.compile_expression(template.references)(**scope)]
  return choices, parts, refs


@pytest.mark.parametrize("name", [d.name for d in t0.DATASETS])
def test_every_template_renders_as_promptsource_jinja(name):
  d = t0.dataset(name)
  builder = tfds.builder(d.tfds_name)
  fns = [t0_prompts.compile_template(t, f"{d.name}/{t.name}") for t in d.templates]

  @tf.function
  def render_all(ex, seed):
    fields = d.fields(ex)
    outs = [fn(fields, seed) for fn in fns]
    return fields, [{"inputs": o.inputs, "targets": o.targets, "choices": o.choices, "references": o.references,
                     "valid": o.valid} for o in outs]

  checked = valid = 0
  for split in ("train", "test"):
    for i, ex in enumerate(t0_fakes.fake_as_dataset(builder, split)):
      seed = 1000 * len(split) + i
      fields, outs = render_all(ex, tf.constant(seed, tf.int64))
      fields = _py(fields)
      for template, out in zip(d.templates, outs):
        out = _py(out)
        choices, parts, refs = _jinja(template, fields, seed)
        ok = len(parts) == 2 and all(parts) and (choices is None or parts[1] in choices)
        where = f"{d.name} / {template.name!r} on {split} example {i}"
        assert out["valid"] == ok, where
        if ok:
          assert (out["inputs"], out["targets"]) == (parts[0], parts[1]), where
          assert out["references"] == (refs if refs is not None else [parts[1]]), where
        assert out["choices"] == (choices or []), where
        checked += 1
        valid += ok
  assert valid >= checked // 2 > 0  # the fake data exercises the templates, not only their guards


def test_templates_are_promptsource_original_task_templates_with_sources():
  assert set(t0_templates.TEMPLATES) == {d.templates_key or d.name for d in t0.DATASETS}
  for key, templates in t0_templates.TEMPLATES.items():
    assert templates, key
    assert len({t.id for t in templates}) == len(templates), key
    for t in templates:
      assert t0_templates.source(key, t).startswith(f"promptsource/templates/{t0_templates.SOURCES[key]}/")
  sizes = {d.name: len(d.templates) for d in t0.DATASETS}
  assert sizes["wiki_bio"] == 1 and min(v for k, v in sizes.items() if k != "wiki_bio") >= 3


def _render(jinja: str, fields: dict, answer_choices: str | None = None, seed: int = 0):
  out = t0_prompts.compile_template(t0_prompts.Template("t", "id", jinja, answer_choices))(fields, tf.constant(seed))
  return _py({"inputs": out.inputs, "targets": out.targets, "choices": out.choices, "valid": out.valid})


def test_language_follows_jinja_precedence_indexing_and_conditions():
  fields = {"answer": tf.constant("2"), "opts": tf.constant(["x", "y"]), "s": tf.constant("Hello.."),
            "n": tf.constant(3, tf.int64)}
  out = _render("{{ s[0] | lower }}{{ s[1:] | trim('.') }} {{ opts[9] }}|{{ opts[-1] }} ||| "
                "{{ opts[answer | int - 1] }}{% if n > 2 and not answer == '1' %}!{% else %}?{% endif %}", fields)
  assert (out["inputs"], out["targets"], out["valid"]) == ("hello |y", "y!", True)


def test_example_a_template_does_not_apply_to_is_invalid():
  effect_only = '{% if question == "effect" %}{{ premise }} As a result? ||| {{ answer_choices[label] }}{% endif %}'
  fields = {"question": tf.constant("cause"), "premise": tf.constant("It rained."), "label": tf.constant(0, tf.int64),
            "a": tf.constant("x"), "b": tf.constant("y")}
  assert not _render(effect_only, fields, "{{a}} ||| {{b}}")["valid"]
  fields["question"] = tf.constant("effect")
  assert _render(effect_only, fields, "{{a}} ||| {{b}}") == {"inputs": "It rained. As a result?", "targets": "x",
                                                              "choices": ["x", "y"], "valid": True}
  # A target that is no answer choice (e.g. an unlabelled example) makes the example invalid too.
  assert not _render("{{ premise }} ||| z", fields, "{{a}} ||| {{b}}")["valid"]


def test_pipes_inside_the_data_do_not_split_the_prompt():
  out = _render("{{ text }} ||| {{ label }}", {"text": tf.constant("a ||| b"), "label": tf.constant(1, tf.int64)})
  assert (out["inputs"], out["targets"], out["valid"]) == ("a ||| b", "1", True)


def test_unknown_fields_and_unsupported_syntax_fail_with_the_template_named():
  t = t0_prompts.Template("my template", "id", "{{ nope }} ||| x")
  with pytest.raises(t0_prompts.TemplateError, match=r"my template: unknown name 'nope'"):
    t0_prompts.compile_template(t)({"text": tf.constant("a")}, tf.constant(0))
  with pytest.raises(t0_prompts.TemplateError, match="unsupported statement"):
    t0_prompts.parse("{% macro m() %}{% endmacro %}")
  with pytest.raises(t0_prompts.TemplateError, match="unclosed"):
    t0_prompts.parse("{% if a %}x")
