"""Retrieval models: two-tower, ItemCF/Swing, the CF channels, popularity, ANN indexes."""
