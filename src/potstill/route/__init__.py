"""Routing between the student and the teacher: confidence signals, threshold calibration, the gateway."""
