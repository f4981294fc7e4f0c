"""Statistics: latent scores, the shuffled-label null, intervals and tests (stats).

Why a package: the tests and intervals every reported number stands on are in one place,
where docs/statistics.md and the calibration bench find them.
"""
