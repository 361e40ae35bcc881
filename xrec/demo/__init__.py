"""The ``xrec demo``: a multilingual catalog the project writes itself, simulated readers, and the run.

``catalog`` holds the items (every topic in every language), ``simulate`` the users who each read
one topic in one language, ``summary`` the figures the demo ends with, and ``runner`` starts the
broker, the worker and plays it all live.
"""
