"""Serving-side models: the feed's diversity stage (MMR and DPP re-ranking under spacing rules)."""
