"""Absolute positions: learned embeddings ("learned", the paper's), or none (only W_S/W_E know order).

The embeddings themselves live in the model (`in_positions`, and `positions` of each resizing block) so
that models saved before the position seam keep their weight names; these classes only declare it.
"""

from __future__ import annotations

from seqcompress.positions import PositionScheme, register_position


@register_position("learned")
class LearnedPositions(PositionScheme):
    absolute = True
    description = "learned embedding per input row and per resized output row; bounded by n_max"


@register_position("none")
class NoPositions(PositionScheme):
    relative = True  # nothing sized to n_max
    description = "no position signal; order only through W_S/W_E"
