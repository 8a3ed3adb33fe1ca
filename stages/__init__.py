"""DVC stage entry points (``python -m stages.<name>``), one module per stage in dvc.yaml."""
