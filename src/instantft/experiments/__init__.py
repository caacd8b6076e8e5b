"""Experiments: reproduce (the paper), bench (speed), fixed-point study."""
