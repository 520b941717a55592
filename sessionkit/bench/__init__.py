"""Attention benchmarking: grids, FLOP counting, robust statistics, GPU timing, the bench step
and session-to-session comparison.

Only :mod:`sessionkit.bench.timing` and :mod:`sessionkit.bench.step` touch torch, and only inside
functions, so that importing this package stays fast.
"""
