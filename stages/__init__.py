"""DVC stage entry points (``python -m stages.<name>``)."""
import pipeline  # noqa: F401  # first: sets the OpenMP thread defaults before a stage imports torch (pipeline/threads.py)
