"""Evaluation protocols.

* :mod:`gmcl.evaluation.metrics`: continual-learning accuracy on real test images (the accuracy
  matrix, A_t, forgetting, backward and forward transfer, intransigence, per-class accuracy, the
  confusion matrix), class- and task-incremental.
* :mod:`gmcl.evaluation.oracle`: MeRGAN's protocol, an oracle classifier's accuracy on generated
  images (a measure of the generator, not of a continual classifier).

The metrics' functions are re-exported here (``gmcl.evaluation.average_forgetting``).
"""

from gmcl.evaluation.metrics import (average_forgetting, backward_transfer, class_scores, evaluate_after_task,
                                     evaluate_task_incremental, format_table, forward_transfer, intransigence,
                                     predict_labels, task_accuracies)

__all__ = ["average_forgetting", "backward_transfer", "class_scores", "evaluate_after_task",
           "evaluate_task_incremental", "format_table", "forward_transfer", "intransigence", "predict_labels",
           "task_accuracies"]
