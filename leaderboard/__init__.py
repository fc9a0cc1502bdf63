"""occbench.leaderboard."""
