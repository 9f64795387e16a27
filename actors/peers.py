"""Finding the other actors of a network again after a restart.

A handle held in memory is lost when Ray restarts the actor that held it, so
the durable stores keep actor names instead, and a restarted actor looks its
peers up here, in its own Ray namespace.
"""

from __future__ import annotations


def find(name: str):
    """The actor named `name` in this actor's namespace, or None."""
    if not name:
        return None
    import ray

    try:
        return ray.get_actor(name, namespace=ray.get_runtime_context().namespace)
    except ValueError:
        return None


def me():
    """This actor's own handle."""
    import ray

    return ray.get_runtime_context().current_actor
