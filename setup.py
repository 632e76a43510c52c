"""mergejax: JAX-native model merging and evaluation at scale."""

import pathlib
import re

from setuptools import Extension, find_packages, setup

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(r'__version__ = "([^"]+)"', (_HERE / "mergejax" / "__init__.py").read_text()).group(1)

# Pinned for Python 3.11: jax 0.10.2 is the last release that supports it (JAX 0.11 dropped 3.11).
_INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "orbax-checkpoint==0.12.8",
    "optax==0.2.8",
    "seqio==0.0.20",
    # seqio imports tensorflow_text at module top; tf-text pins the matching tensorflow.
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "absl-py>=2.1",
    "ml-collections==1.1.0",
    "numpy>=2.0,<2.5",
    # 0.7.0 takes ~0.5 s CPU to import (its ufunc loops registered one by one against numpy's linear duplicate
    # check); 0.6.0 takes ~0.05 s. Every mergejax process imports it through jax (docs/BENCHMARKS.md, "Start-up").
    "ml-dtypes==0.6.0",
    "safetensors>=0.4",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "psutil>=5.9",
    "pyyaml>=6.0",  # mergekit YAML recipes (mergejax-yaml)
    # The checkpoints' own tokenizers: tokenizer.json (Llama 3, Qwen, Gemma 3) and SentencePiece models.
    "tokenizers>=0.20,<1",
    "sentencepiece>=0.2",
    "scipy>=1.12",  # t and normal quantiles of the study's verdicts (also a dependency of jax)
    "rouge-score==0.1.2",  # ROUGE of the T0 suite's generative held-in tasks (summarization, struct-to-text)
]

_EXTRAS = {
    # jinja2: the independent reference the T0 prompt templates are checked against.
    "test": ["pytest>=8", "pytest-xdist>=3.8", "hypothesis>=6.100", "jinja2>=3.1", "torch==2.13.0",
             "transformers==5.23.0",
             "peft==0.21.2",
             "lm-eval==0.4.13"],
    # lm-evaluation-harness bridge (mergejax-lm-eval); lm-eval's core needs no torch.
    "lmeval": ["lm-eval==0.4.13"],
    "bench": ["psutil>=5.9"],
}

# The C passes around NumPy's sort in DELLA's row ranks (mergejax/methods/selection.py); optional: where it
# cannot be built (no C compiler) mergejax runs the same ranks in NumPy, ~2x slower.
_EXTENSIONS = [Extension("mergejax.methods._row_ranks", ["mergejax/methods/_row_ranks.c"], optional=True,
                         extra_compile_args=["-O3"])]

setup(
    name="mergejax",
    version=_VERSION,
    description="JAX-native, sharded model merging and seqio evaluation (What Matters for Model Merging at Scale?)",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mergejax", "mergejax.*"]),
    package_data={"mergejax": ["**/*.model", "**/*.json"]},
    python_requires=">=3.11,<3.12",
    install_requires=_INSTALL_REQUIRES,
    extras_require=_EXTRAS,
    ext_modules=_EXTENSIONS,
    entry_points={
        "console_scripts": [
            "mergejax-demo=mergejax.cli.demo:run",
            "mergejax-merge=mergejax.cli.merge:run",
            "mergejax-yaml=mergejax.cli.recipe:run",
            "mergejax-inspect=mergejax.cli.inspect:run",
            "mergejax-train=mergejax.cli.train:run",
            "mergejax-build-world=mergejax.cli.build_world:run",
            "mergejax-eval=mergejax.cli.eval:run",
            "mergejax-study=mergejax.cli.study:run",
            "mergejax-lm-eval=mergejax.evaluation.lm_harness:main",
        ],
    },
    classifiers=["Programming Language :: Python :: 3.11"],
)
