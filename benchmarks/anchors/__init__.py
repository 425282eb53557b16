"""Scripts that time other projects' code, each run by its own interpreter (own venv)."""
