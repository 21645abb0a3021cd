"""yan-swarm: continually learning Yan-architecture agents that gossip knowledge deltas.

Importing this package is cheap on purpose: torch, ray, grpc and pybullet are imported only by
the modules that need them.
"""

__version__ = "0.1.0"
