"""Slot attention object discovery (Locatello et al. 2020) with implicit gradients (Chang et al. 2022).

``SlotAttention`` and ``SlotAttentionStep`` (in :mod:`.model`) are reusable by other applications; ``APP``
(in :mod:`.app`) is what ``deqkit train slot_attention`` runs. See docs/slot_attention.md.
"""

from .model import SlotAttention, SlotAttentionStep, SlotAutoencoder

__all__ = ["SlotAttention", "SlotAttentionStep", "SlotAutoencoder"]
