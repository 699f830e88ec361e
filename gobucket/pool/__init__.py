"""A shared task pool on Redis: spill what no node has room for, pull it where there is.

:class:`RedisTaskPool` needs the ``redis`` extra (``pip install 'gobucket[redis]'``);
importing this package does not (redis-py is imported when a pool is made).
See ``docs/pool.md``.
"""

from gobucket.pool.pool import RedisTaskPool
from gobucket.types import PoolStats

__all__ = ["PoolStats", "RedisTaskPool"]
