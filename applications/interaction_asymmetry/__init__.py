"""Interaction-asymmetry Transformer VAE (Brady et al. 2024): objects without slot attention.

``InteractionAsymmetryVAE`` (in :mod:`.model`) is the model; ``APP`` (in :mod:`.app`) is what
``deqkit train interaction_asymmetry`` runs. See docs/interaction_asymmetry.md.
"""

from .model import InteractionAsymmetryVAE

__all__ = ["InteractionAsymmetryVAE"]
