"""Ranking: examples, full ranker and pre-ranker training, evaluation, distillation and its GX gate, the fault drill, aged-model protocols, special user groups."""
