"""Running compiled programs on a device: the executor and its memory plan."""
