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
