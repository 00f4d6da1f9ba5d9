"""Scoring answers, comparing students with the teacher, and measuring speed and cost."""
