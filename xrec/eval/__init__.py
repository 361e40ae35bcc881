"""Evaluations: ``xrec eval align|mind|crosslingual``, each a module with ``add_arguments`` and ``run``.

They replay real data through the engine a worker runs and report quality figures with intervals;
``xrec.bench`` measures speed.
"""
