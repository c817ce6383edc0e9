"""The paper's tasks: copying, adding, pixel and permuted MNIST, behind one `Task` interface."""

from studies.mnist_idx import MNISTFormatError
from studies.tasks.adding import AddingTask
from studies.tasks.base import Task
from studies.tasks.copying import CopyingTask
from studies.tasks.mnist_data import MNISTData, MNISTNotFoundError, load_mnist
from studies.tasks.registry import TASK_NAMES, default_success, make_task
from studies.tasks.sequential_mnist import SequentialMNISTTask

__all__ = [
    "TASK_NAMES",
    "AddingTask",
    "CopyingTask",
    "MNISTData",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "SequentialMNISTTask",
    "Task",
    "default_success",
    "load_mnist",
    "make_task",
]
