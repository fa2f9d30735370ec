"""Experiments (docs/METHODS.md "Experiments"): assignment of users to arms, the closed-loop exposure
policy that serves the simulator from the recommendation path, and the day-by-day loop."""
