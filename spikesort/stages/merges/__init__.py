"""Every merge rule of the sorter: which units (or clusters) are one neuron.

In pipeline order: :mod:`.clusters` (clusters of one unit seen on several peak channels,
during clustering), :mod:`.templates` (templates that are one unit seen twice, after
clustering; the lag-aware template similarity and the snippet veto every template merge
uses), :mod:`.refractory` (units whose spike trains keep a refractory gap, at curation; and
applying a merge's groups to the spikes), :mod:`.footprint` (one neuron at several sizes, at
curation; :mod:`.pieces` judges a smaller unit as a piece of a larger one there, :mod:`.evidence`
holds what the spike trains say, :mod:`.bursts` tells a burst's late spikes, :mod:`.two_sizes`
one neuron at two sizes from two neighbours),
:mod:`.drift` (units seen at two probe positions, after drift correction); :mod:`.noise` (a
neuron's pieces too small for the refractory test, alike within their spikes' scatter, at the
end of curation); :mod:`.gaps` (a compact probe's units whose whole trains never meet within the
refractory period); :mod:`.faint` (faint pieces, too few for any count of the trains, once
curation has dropped every unit it drops); :mod:`.shrunken` (small pieces whose footprint is a
larger unit's, by the footprint alone, last).
"""

from .clusters import merge_groups
from .drift import drift_split_groups
from .faint import faint_piece_merges
from .footprint import footprint_merges
from .gaps import empty_period_merges
from .noise import excess_distance, noise_merges
from .refractory import (
    apply_groups,
    cross_refractory_ratio,
    drop_refractory_doubles,
    fire_independently,
    independence_test,
    refractory_merges,
    relabel,
)
from .shrunken import shrunken_piece_merges
from .templates import lagged_similarity, merge_similar_templates, snippet_merge_test

__all__ = [
    "merge_groups",
    "drift_split_groups",
    "drop_refractory_doubles",
    "empty_period_merges",
    "faint_piece_merges",
    "fire_independently",
    "footprint_merges",
    "independence_test",
    "excess_distance",
    "noise_merges",
    "apply_groups",
    "cross_refractory_ratio",
    "refractory_merges",
    "relabel",
    "shrunken_piece_merges",
    "lagged_similarity",
    "merge_similar_templates",
    "snippet_merge_test",
]
