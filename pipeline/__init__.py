"""FOV-Seg reference pipeline. Importing the package sets the CPU thread defaults (pipeline/threads.py)
before any of its modules loads torch."""
from pipeline.threads import configure_threads

configure_threads()
