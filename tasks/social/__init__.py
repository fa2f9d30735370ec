"""Social signals: KOL scores and implicit follows."""
