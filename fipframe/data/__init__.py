"""Tasks, task sequences, data sources and the stored-input memory."""

from fipframe.data.memory import Memory
from fipframe.data.mnist import load_mnist
from fipframe.data.sampling import Sampler
from fipframe.data.task import Split, Task, TaskSequence, class_split

__all__ = ["Memory", "Sampler", "Split", "Task", "TaskSequence", "class_split", "load_mnist"]
