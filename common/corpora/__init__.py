"""Text corpora for SAE training and Phase 2's general-text filter: the one reader of a corpus file
and of pile-10k (files) and the offline builder of ``run.py build-corpus`` (builder).

Why their own package: two consumers (``train-saes --corpus`` and ``--general-corpus``) must
read a file as the same documents, and neither owns the format.
"""
