"""Memory Replay GAN's losses (Wu, Herranz, Liu, Wang, van de Weijer & Raducanu, NeurIPS 2018).

Two ways to keep a conditional generator G_t from forgetting the classes of earlier
tasks, given a frozen copy G_{t-1}:

* joint retraining with replay (JR, Sec. 4.1): G_{t-1}'s samples of old classes
  join the real data of the current task, in the critic's and the generator's
  objectives;
* replay alignment (RA, Sec. 4.2): the generator's loss gains
  ``lambda * E_{z, c ~ U(old)} ||G_t(z, c) - G_{t-1}(z, c)||^2``, with the same z
  and c given to both generators.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gmcl.checks import check_array


def replay_alignment_loss(*, new_images: jax.Array, old_images: jax.Array) -> jax.Array:
  """Per-example replay alignment ``0.5 * ||G_t(z, c) - G_{t-1}(z, c)||^2`` (Wu et al., 2018, Sec. 4.2).

  The squared distance is summed over every pixel and channel and halved, as the
  official code's ``tf.nn.l2_loss``; the caller multiplies by lambda (1e-3 for
  MNIST, 1e-2 for SVHN in the official code) and reduces over the batch. No
  gradient reaches ``old_images`` (the frozen G_{t-1}'s output).

  Args:
    new_images: (B, H, W, C) G_t(z, c).
    old_images: (B, H, W, C) G_{t-1}(z, c) for the same z and c.

  Returns:
    (B,) losses.
  """
  check_array("replay_alignment_loss", "new_images", new_images, kind="float")
  check_array("replay_alignment_loss", "old_images", old_images, shape=new_images.shape,
              kind="float")
  diff = new_images - jax.lax.stop_gradient(old_images)
  return 0.5 * jnp.sum(jnp.square(diff.reshape(diff.shape[0], -1)), axis=-1)


def balanced_labels(*, classes: jax.Array, num: int) -> jax.Array:
  """``num`` labels that split a batch evenly across the classes where ``classes`` is true.

  Entry i is the (i mod n)-th of the n selected classes in increasing order, so each
  class gets ``num // n`` or ``num // n + 1`` entries (MeRGAN's official code gives
  each old class ``batch // n`` samples). Works under jit, where n is traced.

  Args:
    classes: boolean (K,) mask with at least one class set.
    num: the number of labels (a static int).

  Returns:
    (num,) int32 labels.
  """
  check_array("balanced_labels", "classes", classes, ndim=1, kind="bool")
  k = classes.shape[0]
  ids = jnp.nonzero(classes, size=k, fill_value=0)[0].astype(jnp.int32)
  n = jnp.maximum(jnp.sum(classes.astype(jnp.int32)), 1)
  return ids[jnp.arange(num, dtype=jnp.int32) % n]


def class_mean_weights(*, labels: jax.Array, num_classes: int) -> jax.Array:
  """Per-example weights ``1 / #{j: labels_j = labels_i}``: ``sum_i w_i v_i`` is a sum of class means.

  MeRGAN's official JR objective adds one batch mean per old class, so that each old
  class weighs as much as the current one; with these weights a batch holding
  several classes gives that sum. Computed from the global batch's labels, the
  weights stay right when the batch is split across devices.

  Args:
    labels: (B,) integer classes.
    num_classes: K.

  Returns:
    (B,) float32 weights.
  """
  check_array("class_mean_weights", "labels", labels, ndim=1, kind="int")
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return 1.0 / (onehot @ jnp.sum(onehot, axis=0))


def sum_of_class_means(*, values: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """``sum_c mean_{i: labels_i = c} values_i`` over the classes present in ``labels``.

  Args:
    values: (B,) per-example terms.
    labels: (B,) integer classes.
    num_classes: K.

  Returns:
    A scalar.
  """
  check_array("sum_of_class_means", "values", values, ndim=1, kind="float")
  check_array("sum_of_class_means", "labels", labels, shape=values.shape, kind="int")
  return jnp.sum(class_mean_weights(labels=labels, num_classes=num_classes) * values)
