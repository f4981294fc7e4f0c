"""Running generated programs and judging them: the executor (forked single-threaded zygotes, an empty
network namespace) and labelling (extraction, the entry-point check, the verdict).

Why one package: every label the study reports is decided here, so the code that runs untrusted
programs and the code that turns their outcome into a label are read and changed together.
"""
