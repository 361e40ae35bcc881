"""Benchmarks: ``xrec bench encoder|store|pipeline``, each a module with ``add_arguments`` and ``run``.

They measure speed on real parts (the encoder, Qdrant Edge and a server, a Kafka broker and worker
processes) and print figures and ratios from one run; ``xrec.eval`` measures quality.
"""
