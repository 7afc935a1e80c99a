"""Split mode: API nodes and model workers meeting over Redis.

- ``dispatcher.py``: the API node's side (jobs out, results back);
- ``worker.py``: a worker's loop (read, run, answer), ``command.py`` the command that runs one;
- ``membership.py``: heartbeats, consumer groups and owned partitions;
- ``claims.py``: jobs dead or stuck workers left, and dead letters; ``answers.py``: a worker's
  answers and acknowledgements; ``cancels.py``: jobs whose requesters left;
- ``connection.py``: the broker connection (redis-py's pool and the pipelined line);
  ``line.py`` the line itself, ``outbox.py`` a loop turn's writes, ``subscription.py`` a Pub/Sub
  channel held open, ``reader.py`` a worker's blocking group read;
- ``wire.py``: the records that cross Redis and their codec; ``keys.py``: every key;
  ``scripts.py``: the Lua scripts; ``probes.py``: a worker's health, readiness and metrics;
- model control: ``control.py`` the desired state, workers' reports and how they combine,
  ``fleet.py`` the API node's side (load, unload, readiness), ``convergence.py`` the worker's.

Imports point one way: this package uses ``runtime/`` (the batchers both modes share), never
the reverse.
"""
