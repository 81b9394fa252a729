"""Slot attention object discovery (Locatello et al. 2020) with implicit gradients (Chang et al. 2022).

``SlotAutoencoder`` (in :mod:`.model`) assembles the core's reusable modules (:mod:`deqkit.nn`); ``APP``
(in :mod:`.app`) is what ``deqkit train slot_attention`` runs. See docs/slot_attention.md.
"""

from .model import SlotAutoencoder

__all__ = ["SlotAutoencoder"]
