"""Reusable modules for iterative refinement models, built on the core's fixed points.

Applications import these instead of each other: slot attention (any gradient estimator), position
embeddings, a CNN image encoder, spatial broadcast decoders, and SLATE's discrete VAE and image-GPT
decoder. See docs/nn.md.
"""

from deqkit.nn.decoders import MLPBroadcastDecoder, SpatialBroadcastDecoder, alpha_composite, upsampling_steps
from deqkit.nn.dvae import DiscreteVAE, cosine_anneal
from deqkit.nn.encoders import CNNEncoder
from deqkit.nn.positions import SoftPositionEmbed, position_grid, slot_frames
from deqkit.nn.slot_attention import SlotAttention, SlotAttentionStep, SlotInit
from deqkit.nn.transformer import ImageGPT, TransformerDecoder

__all__ = [
    "CNNEncoder", "DiscreteVAE", "ImageGPT", "TransformerDecoder", "cosine_anneal", "MLPBroadcastDecoder", "SlotAttention", "SlotAttentionStep", "SlotInit", "SoftPositionEmbed",
    "SpatialBroadcastDecoder", "alpha_composite", "position_grid", "slot_frames", "upsampling_steps",
]
