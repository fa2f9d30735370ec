"""Retrieval: training data, two-tower and I2I training, offline evaluation, the nightly gate and publish, ANN refresh."""
