"""Repository-level pytest choices: the pytester fixture for plugin tests, headless plotting."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are rendered to files, never shown
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # avoids fork warnings under xdist

pytest_plugins = ["pytester"]
