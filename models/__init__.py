"""Model code: torch modules, ItemCF/Swing, ANN index wrappers."""
