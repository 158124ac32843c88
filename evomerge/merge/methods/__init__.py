"""The core merge methods, one module each (registered by ``evomerge.merge.builtin_methods``)."""
