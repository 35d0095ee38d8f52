"""The learning-rate schedules' names (``detector.training.optim``), without torch: the command line
lists them before importing it."""

SCHEDULES = ("step", "cosine")
