"""Reusable modules for iterative refinement models, built on the core's fixed points.

Applications import these instead of each other: slot attention (any gradient estimator), position
embeddings (soft and Fourier), attention that returns its weights, a CNN image encoder, spatial broadcast
decoders, set encoders (FSPool), the DSPN set decoder (an inner gradient descent as a fixed point), and
SLATE's discrete VAE and image-GPT decoder. See docs/nn.md.
"""

from deqkit.nn.attention import Attention
from deqkit.nn.decoders import MLPBroadcastDecoder, SpatialBroadcastDecoder, alpha_composite, upsampling_steps
from deqkit.nn.dspn import DSPN, DSPNStep, SetInit, inner_gradient
from deqkit.nn.dvae import DiscreteVAE, cosine_anneal
from deqkit.nn.encoders import CNNEncoder
from deqkit.nn.positions import SoftPositionEmbed, fourier_features, position_grid, slot_frames
from deqkit.nn.sets import FSPool, SetEncoder
from deqkit.nn.slot_attention import SlotAttention, SlotAttentionStep, SlotInit
from deqkit.nn.token_mixture import SlotMixtureTokenDecoder
from deqkit.nn.transformer import ImageGPT, TransformerDecoder

__all__ = [
    "Attention", "CNNEncoder", "DSPN", "DSPNStep", "DiscreteVAE", "FSPool", "ImageGPT", "MLPBroadcastDecoder",
    "SetEncoder", "SetInit", "SlotAttention", "SlotAttentionStep", "SlotInit", "SlotMixtureTokenDecoder",
    "SoftPositionEmbed", "SpatialBroadcastDecoder", "TransformerDecoder", "alpha_composite", "cosine_anneal",
    "fourier_features", "inner_gradient", "position_grid", "slot_frames", "upsampling_steps",
]
