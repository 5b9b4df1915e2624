"""Data sets shipped or generated in the package (nothing is downloaded)."""
