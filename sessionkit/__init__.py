"""sessionkit: make each GPU kernel optimization session count.

The package is a library first: sessions, steps, telemetry, benchmarks and reports are plain
modules; ``sessionkit.cli`` only parses arguments and prints.
"""

__version__ = "0.1.0"
