"""The shared networks: the vision transformer and the text transformer the families build on."""
