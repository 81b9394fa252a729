"""SLATE (Singh et al. 2022) with vanilla or implicit slot attention (Chang et al. 2022).

``Slate`` (in :mod:`.model`) assembles the core's modules (:mod:`deqkit.nn`); ``APP`` (in :mod:`.app`) is
what ``deqkit train slate`` runs. See docs/slate.md.
"""

from .model import Slate, slate_loss

__all__ = ["Slate", "slate_loss"]
