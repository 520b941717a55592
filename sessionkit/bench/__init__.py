"""Attention benchmarking: grids, robust statistics, GPU timing, the bench step's result rows and
table, and session-to-session comparison. Configs, FLOP counts, dtypes and the implementations timed
are :mod:`sessionkit.attention`'s. The step itself is :mod:`sessionkit.steps.bench`; nothing here
imports click or :mod:`sessionkit.steps`.

Only :mod:`sessionkit.bench.timing` and :mod:`sessionkit.bench.step` touch torch, and only inside
functions, so that importing this package stays fast.
"""
