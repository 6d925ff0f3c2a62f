"""Drift: motion estimation, interpolation of the traces, the plan of what to correct, the stage."""
