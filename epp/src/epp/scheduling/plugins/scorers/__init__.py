"""Scorers: rate each remaining endpoint in [0, 1]; the profile weighs and sums the ratings."""
