"""The top layer: the ``atcdn`` command, ``atcdn up`` and the server runner."""
