"""Placeholder: the euplane branch replaces this file with the real ``fuq.prune.eu_plane``.

It exists only so that ``fuq.prune`` imports on the compress branch; it does nothing.
"""


def eu_plane(*args, **kwargs):
    """Not built on this branch: the euplane branch replaces this module."""
    raise NotImplementedError("fuq.prune.eu_plane is built on the euplane branch; this is its placeholder")
