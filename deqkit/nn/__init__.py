"""Reusable modules for iterative refinement models, built on the core's fixed points.

Applications import these instead of each other: slot attention (any gradient estimator), position
embeddings, a CNN image encoder, spatial broadcast decoders, set encoders (FSPool) and the DSPN set
decoder (an inner gradient descent as a fixed point). See docs/nn.md.
"""

from deqkit.nn.decoders import MLPBroadcastDecoder, SpatialBroadcastDecoder, alpha_composite, upsampling_steps
from deqkit.nn.dspn import DSPN, DSPNStep, SetInit, inner_gradient
from deqkit.nn.encoders import CNNEncoder
from deqkit.nn.positions import SoftPositionEmbed, position_grid, slot_frames
from deqkit.nn.sets import FSPool, SetEncoder
from deqkit.nn.slot_attention import SlotAttention, SlotAttentionStep, SlotInit

__all__ = [
    "CNNEncoder", "DSPN", "DSPNStep", "FSPool", "MLPBroadcastDecoder", "SetEncoder", "SetInit", "inner_gradient", "SlotAttention", "SlotAttentionStep", "SlotInit", "SoftPositionEmbed",
    "SpatialBroadcastDecoder", "alpha_composite", "position_grid", "slot_frames", "upsampling_steps",
]
