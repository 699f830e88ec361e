"""Helpers shared by the tests, one module per idea (fixtures live in ``tests/conftest.py``).

``waiting`` (deadlines, polled waits), ``recording`` (hook recorder, recording executor),
``cluster`` (buckets and groups for one test), ``raw_peer`` and ``fake_peer`` (hand-driven
protocol ends), ``child_node`` (a group node in a child process), ``child_process`` (a
driven child program), ``redis_server`` (a real redis-server), and the special-purpose
children ``rescue_child`` and ``shutdown_child`` of the end-to-end tests.
"""
