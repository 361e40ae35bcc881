"""xrec: an event-driven streaming recommender for multilingual catalogs.

The library (this package) knows nothing of Faust; ``streams`` wires it to Kafka.
"""

__version__ = "0.1.0"
