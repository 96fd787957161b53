"""Helpers shared by the training tests and the scripts they launch as subprocesses."""
