"""Traffic families with randomized parameters: attacks and legitimate patterns drawn per
seed, for ``ratewatch simulate --families`` and the offline detection evaluation.

- ``base``: ranges (``Span``, ``Count``, ``Choice``), ``Family`` and ``FamilyInstance``;
- ``vocabulary``: route and user-agent names made up per seed;
- ``attacks``, ``legit``: the families; ``mix``: all of them drawn from one seed.
"""

from ratewatch.simulate.families.base import Family, FamilyInstance
from ratewatch.simulate.families.mix import FAMILIES, Mix, draw_mix

__all__ = ["FAMILIES", "Family", "FamilyInstance", "Mix", "draw_mix"]
