"""Observers of the event stream: things that watch a pool without reaching into a backend."""
