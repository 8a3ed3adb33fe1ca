"""FOV-Seg reference pipeline: the library the DVC stages (``stages/``) and the ``fovseg`` command use."""
