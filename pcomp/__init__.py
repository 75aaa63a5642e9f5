"""pcomp: train language models at a fraction of the usual compute.

Two methods, one trainer:
  * patch-level training (Shao, Meng, Zhou 2024): `pcomp.patching`;
  * LMs over neurally compressed text with Equal-Info Windows (Lester et al. 2024): `pcomp.compress`.
"""

__version__ = "0.1.0"
