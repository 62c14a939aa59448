"""Test helpers: hostile archive construction, tree snapshots, victim trees."""
