"""Runtime port and adapters: start, list, stop and remove the instances of one color."""
