"""MeRGAN's own scoring protocol: an oracle classifier judges generated samples.

Wu et al. (2018) score a conditional generator by classifying its samples with a
classifier trained once on all real training data ("pretrain" in their code; 100
batches of 64 samples per class): the accuracy on class c's samples says how well
the generator still draws c. ``A_t`` under this protocol is the mean of those
accuracies over the classes seen after task t.

The official oracle for MNIST is a pretrained MLP (1024-512-256-128) on [0, 255] pixels;
here the default is the same MLP trained on the run's own preprocessing (a CNN is an
option, ``mergan.oracle_classifier = "cnn"``; the official code uses one for SVHN, and
so do the configs for SVHN and CIFAR-10), so absolute figures are close to, not
identical with, the paper's.

This is a different number from the continual-learning accuracy (a classifier on
real test images), which is what DGM's table reports; results.json keeps both,
labelled. The oracle is trained once per (dataset, preprocessing, architecture,
schedule, seed) and cached on disk with orbax, so every run and every resumed run
scores with the same oracle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from gmcl import compile_cache
from gmcl.evaluation import metrics as evaluation
from gmcl.data.sampling import sample_batch, task_arrays
from gmcl.losses.classification import softmax_cross_entropy
from gmcl.models.classifiers import make_classifier


@dataclasses.dataclass(frozen=True)
class OracleSettings:
  """Everything that decides the oracle's parameters (its cache key)."""
  dataset: str
  pad_to: int
  value_range: tuple[float, float]
  architecture: str = "mlp"
  hidden: tuple[int, ...] = (512, 256, 128)  # the MLP's hidden layers (the official MNIST oracle's)
  steps: int = 2000
  batch_size: int = 128
  learning_rate: float = 1e-3
  seed: int = 0
  data_fingerprint: str = ""  # of the training labels and shapes: see fingerprint()

  def key(self) -> str:
    blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
    return f"{self.dataset}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclasses.dataclass
class Oracle:
  settings: OracleSettings
  model: Any
  params: Any
  test_accuracy: float

  def __post_init__(self):
    # Parameters go in as an argument: closed over, they would be baked into every compile.
    self._logits = jax.jit(lambda params, x: self.model.apply({"params": params}, x))

  def predict(self, x: jax.Array) -> jax.Array:
    return self._logits(self.params, x)


def fingerprint(x_train: np.ndarray, y_train: np.ndarray) -> str:
  """A short hash of the training split's shape and labels (a subset gets another oracle)."""
  h = hashlib.sha256(str(x_train.shape).encode())
  h.update(np.ascontiguousarray(y_train, dtype=np.int64).tobytes())
  return h.hexdigest()[:12]


def default_cache_dir() -> str:
  """``$GMCL_CACHE_DIR/oracles``, or ``~/.cache/gmcl/oracles``."""
  return os.path.join(compile_cache.cache_root(), "oracles")


def _model(settings: OracleSettings, num_classes: int):
  kwargs = {"hidden": tuple(settings.hidden)} if settings.architecture == "mlp" else {}
  return make_classifier(settings.architecture, num_classes, **kwargs)


def train_oracle(settings: OracleSettings, x_train: np.ndarray, y_train: np.ndarray,
                 num_classes: int):
  """Trains the oracle on all of ``(x_train, y_train)``: Adam, ``settings.steps`` batches."""
  model = _model(settings, num_classes)
  key = jax.random.PRNGKey(settings.seed)
  params = model.init(key, jnp.zeros((1,) + x_train.shape[1:]))["params"]
  tx = optax.adam(settings.learning_rate)
  opt_state = tx.init(params)
  data = task_arrays(x_train.astype(np.float32), y_train.astype(np.int32))

  @jax.jit
  def step(params, opt_state, data, k):  # data is an argument: closed over, it would be a constant
    x, y = sample_batch(data, k, settings.batch_size)
    loss_fn = lambda p: jnp.mean(softmax_cross_entropy(logits=model.apply({"params": p}, x),
                                                       labels=y))
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  train_key = jax.random.fold_in(key, 1)
  for i in range(settings.steps):
    params, opt_state = step(params, opt_state, data, jax.random.fold_in(train_key, i))
  return model, params


def load_or_train(settings: OracleSettings, x_train: np.ndarray, y_train: np.ndarray,
                  x_test: np.ndarray, y_test: np.ndarray, num_classes: int,
                  cache_dir: Optional[str] = None,
                  log: Callable[[str], None] = print) -> Oracle:
  """The cached oracle for ``settings``, or a newly trained one (then written to the cache).

  The cache entry is written atomically (orbax writes a temporary folder and renames
  it), so an interrupted write leaves no half-written oracle behind.
  """
  cache_dir = os.path.abspath(cache_dir or default_cache_dir())
  path = os.path.join(cache_dir, settings.key())
  model = _model(settings, num_classes)
  ckptr = ocp.StandardCheckpointer()
  if os.path.isdir(path):
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + x_train.shape[1:]))["params"]
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), template)
    params = ckptr.restore(path, abstract)
    source = "loaded from"
  else:
    log(f"Training the oracle classifier ({settings.architecture}, {settings.steps} steps) "
        f"on all of {settings.dataset}'s training data; it is cached in {cache_dir}.")
    start = time.time()
    model, params = train_oracle(settings, x_train, y_train, num_classes)
    log(f"Oracle trained in {time.time() - start:.0f} s.")
    os.makedirs(cache_dir, exist_ok=True)
    ckptr.save(path, params)
    ckptr.wait_until_finished()
    source = "trained and saved to"
  ckptr.close()
  oracle = Oracle(settings, model, params, 0.0)
  pred = evaluation.predict_labels(oracle.predict, x_test)
  oracle.test_accuracy = float(np.mean(pred == y_test))
  log(f"Oracle {settings.key()} {source} {path}: test accuracy {100 * oracle.test_accuracy:.2f}%.")
  return oracle


def generated_accuracy(sample_fn: Callable[[jax.Array, jax.Array], jax.Array],
                       predict_fn: Callable[[jax.Array], jax.Array], classes: Sequence[int],
                       key: jax.Array, samples_per_class: int = 6400,
                       batch_size: int = 64) -> dict[int, float]:
  """The oracle's accuracy on generated samples of each class (MeRGAN's protocol).

  Args:
    sample_fn: ``(key, labels (B,)) -> images (B, H, W, C)``; every call here asks
      for one class, as the official evaluation does.
    predict_fn: the oracle's logits for a batch of images.
    classes: the classes to score.
    key: PRNG key (class c uses ``fold_in(key, c)``).
    samples_per_class: rounded up to whole batches (the paper: 100 x 64).
    batch_size: samples per call.

  Returns:
    ``{class: accuracy}``.
  """
  out = {}
  n_batches = max(1, -(-samples_per_class // batch_size))
  for c in classes:
    k_c = jax.random.fold_in(key, int(c))
    labels = jnp.full((batch_size,), int(c), jnp.int32)
    correct = jnp.zeros((), jnp.int32)  # summed on the device: one transfer per class
    for b in range(n_batches):
      images = sample_fn(jax.random.fold_in(k_c, b), labels)
      correct += jnp.sum(jnp.argmax(predict_fn(images), -1) == c)
    out[int(c)] = int(correct) / (n_batches * batch_size)
  return out
