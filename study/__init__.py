"""The one-command real study (``run.py study``) and its results page (``run.py study-report``)."""
