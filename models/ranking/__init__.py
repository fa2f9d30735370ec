"""Ranking models: the MMoE+DIN full ranker, its features, the pre-ranker, special-group models, fault injection."""
