"""Data: TFDS sources -> in-memory arrays -> task sequences -> on-device batches."""

from gmcl.data.sampling import TaskArrays, sample_batch, task_arrays
from gmcl.data.sources import (DATASETS, DatasetInfo, DatasetUnavailableError,
                               load_split, prepare_dataset)
from gmcl.data.tasks import (Task, TaskSequence, permuted_tasks, per_class_tasks,
                             preprocess_images, split_tasks, task_examples)

__all__ = [
    "DATASETS", "DatasetInfo", "DatasetUnavailableError", "Task", "TaskArrays",
    "TaskSequence", "load_split", "per_class_tasks", "permuted_tasks",
    "prepare_dataset", "preprocess_images", "sample_batch", "split_tasks",
    "task_arrays", "task_examples",
]
