"""Attention blocks behind one interface: ``create_block(name, dim, **options)``.

Token mixers take (B, N, C): ``mhsa``, ``graph``, ``reattention``. Map blocks take (B, C, H, W):
``non_local``, ``local``, ``local_stem``, ``local_relation``, ``window``, ``se``, ``eca``, ``cbam``.
This room imports only torch and timm's layer helpers.
"""

from attngraft.blocks import channel, graph, local, mhsa, non_local, reattention, relation, window  # noqa: F401  (registration)
from attngraft.blocks._ops import Block, ResidualGate
from attngraft.blocks.encoder import EncoderLayer
from attngraft.blocks.factory import BLOCKS, create_block, list_blocks, register_block
from attngraft.blocks.recording import AttentionProbe, record_attention

__all__ = [
    "BLOCKS",
    "AttentionProbe",
    "Block",
    "EncoderLayer",
    "ResidualGate",
    "create_block",
    "list_blocks",
    "record_attention",
    "register_block",
]
