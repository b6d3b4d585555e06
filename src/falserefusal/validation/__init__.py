"""Checking the tool itself: simulations that plant effects, the budget planner and the speed benchmark."""
