"""Starting child processes that neither inherit odd signal settings nor outlive sessionkit.

:func:`child_setup` is a ``preexec_fn`` for :class:`subprocess.Popen`: it runs in the child between
fork and exec, restores default signal dispositions and an empty signal mask (a command started from
a shell that ignores SIGINT would otherwise ignore Ctrl-C too), and on Linux asks the kernel to
SIGKILL the child when its parent dies (``prctl(PR_SET_PDEATHSIG)``, see prctl(2)), so that a killed
sessionkit leaves no orphan holding a port or a GPU.
"""

from __future__ import annotations

import signal
import sys

DEFAULT_SIGNALS = tuple(getattr(signal, n) for n in (
    "SIGINT", "SIGQUIT", "SIGTERM", "SIGHUP", "SIGPIPE", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGUSR1",
    "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGXFSZ") if hasattr(signal, n))


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
PR_SET_PDEATHSIG = 1


def child_setup() -> None:
    """Runs in the child between fork and exec. Only async-signal-safe work: no imports, no
    allocation beyond what these calls need."""
    for sig in DEFAULT_SIGNALS:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
