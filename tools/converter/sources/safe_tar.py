"""Tar member checks shared by every reader: nothing is ever extracted, but a member whose name
is absolute or climbs out with '..' marks a hostile or broken archive and is refused outright."""
from __future__ import annotations

import tarfile
from pathlib import PurePosixPath


class UnsafeArchiveError(ValueError):
    pass


def check_member(member: tarfile.TarInfo, archive: str) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or ".." in name.split("\\") or (
        len(name) > 1 and name[1] == ":"
    ):
        raise UnsafeArchiveError(
            f"{archive}: refusing tar member {name!r} (absolute path or '..' component)"
        )


def members(tar: tarfile.TarFile, archive: str):
    """Iterate a tar's members (streaming or not), refusing unsafe names."""
    for member in tar:
        check_member(member, archive)
        yield member
