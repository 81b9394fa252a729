"""Reusable modules for iterative refinement models, built on the core's fixed points.

Applications import these instead of each other: slot attention (any gradient estimator), position
embeddings (soft and Fourier), attention that returns its weights, a CNN image encoder and spatial broadcast decoders. See docs/nn.md.
"""

from deqkit.nn.attention import Attention
from deqkit.nn.decoders import MLPBroadcastDecoder, SpatialBroadcastDecoder, alpha_composite, upsampling_steps
from deqkit.nn.encoders import CNNEncoder
from deqkit.nn.positions import SoftPositionEmbed, fourier_features, position_grid, slot_frames
from deqkit.nn.slot_attention import SlotAttention, SlotAttentionStep, SlotInit

__all__ = [
    "Attention", "CNNEncoder", "MLPBroadcastDecoder", "SlotAttention", "SlotAttentionStep", "SlotInit", "SoftPositionEmbed",
    "SpatialBroadcastDecoder", "alpha_composite", "fourier_features", "position_grid", "slot_frames", "upsampling_steps",
]
