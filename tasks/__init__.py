"""Celery tasks (thin: each calls into :mod:`workers`) and the canvases of each operation."""
