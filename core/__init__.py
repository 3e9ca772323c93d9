"""The bottom layer: what origin, edge and the CLI share, with no I/O of its own beyond
files and the settings environment. Nothing here imports origin, edge or the CLI."""
