"""The torch-free runtime: backends that run the graphs, and one generation loop for all."""
