"""Click parameter types shared by the CLI and the steps' options."""

from __future__ import annotations

import click


class FilePath(click.Path):
    """A file path (not a folder). A NUL character, which no file name can hold, is a usage
    error here rather than a ValueError from ``os.stat``; so is an empty path, which would
    otherwise stand for the working folder or for no path at all."""

    name = "file"

    def __init__(self, **kwargs):
        kwargs.setdefault("dir_okay", False)
        super().__init__(**kwargs)

    def convert(self, value, param, ctx):
        if "\x00" in str(value):
            self.fail(f"{str(value)!r} contains a NUL character", param, ctx)
        if str(value) == "":
            self.fail("an empty path names no file", param, ctx)
        return super().convert(value, param, ctx)


STDOUT = "-"  # the path that stands for standard output, as in click.File and most Unix tools


class OutputPath(FilePath):
    """An output file (``-o FILE``), where ``-`` stands for standard output, as in click.File and
    most Unix tools (a file of that name is ``./-``).

    With ``stdout`` (a command that prints what it would write when ``-o`` is left out) ``-`` is
    converted to None: the command prints, as without ``-o``. Otherwise ``-`` is a usage error
    (exit status 2) that gives ``refusal``, the reason the output must be a file.
    """

    def __init__(self, *, stdout: bool = True, refusal: str = "", **kwargs):
        super().__init__(**kwargs)
        self.stdout, self.refusal = stdout, refusal

    def convert(self, value, param, ctx):
        if value == STDOUT:
            if self.stdout:
                return None
            self.fail(f"'-' (standard output) is not taken here: {self.refusal}; give a file "
                      "path (./- for a file named '-')", param, ctx)
        return super().convert(value, param, ctx)
