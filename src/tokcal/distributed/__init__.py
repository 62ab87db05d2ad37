"""Beyond one process: collection under ``torchrun`` (:mod:`.torchrun`), mergeable statistics for
evaluation and fitting out of core or across machines (:mod:`.stats`), and Ray (:mod:`.ray`, extra
``ray``). Only sums cross process boundaries, never logits.

Importing this package imports neither torch nor ray.
"""
