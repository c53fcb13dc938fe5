"""``meshext serve --xds-workers N``: ADS streams served by worker processes.

* :mod:`~meshext.server.workers.wire`: frames between the processes.
* :mod:`~meshext.server.workers.channel`: reading them, writing them in batches.
* :mod:`~meshext.server.workers.shipping`: snapshots sent once per worker, by reference.
* :mod:`~meshext.server.workers.claims`: which worker holds which node id, as whom.
* :mod:`~meshext.server.workers.process`: the worker process.
* :mod:`~meshext.server.workers.pool`: starting, feeding and restarting the workers.
"""
