"""Shared test settings: one intra-op thread (small problems run faster on 2 cores that way)."""

import torch

torch.set_num_threads(1)
