"""``python -m sessionkit.kernels.digest [CSRC]``: the SHA-256 over the kernel sources that the
build step records (every source file under csrc/, paths and contents:
:func:`sessionkit.kernels.build.sources_digest`), so that a session's kernels can be matched to a
checkout where its git commit is stale or dirty. Exit status 2 when CSRC holds no sources."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import csrc_dir, source_files, sources_digest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sessionkit.kernels.digest",
                                     description="Print the SHA-256 over the kernel sources that "
                                                 "the build step records.")
    parser.add_argument("csrc", nargs="?", type=Path, default=None,
                        help="the csrc/ folder to digest (default: the installed package's)")
    args = parser.parse_args(argv)
    root = (args.csrc or csrc_dir()).resolve()
    files = source_files(root) if root.is_dir() else []
    if not files:
        print(f"error: no kernel sources under {root}", file=sys.stderr)
        return 2
    print(f"{sources_digest(files, root)}  {len(files)} files under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
