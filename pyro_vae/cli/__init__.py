"""The command line: ``pyro-vae train | compare | evaluate | plot``.

- :mod:`~pyro_vae.cli.main`: the parser, shared with the example scripts
- :mod:`~pyro_vae.cli.compare`: several runs on one problem, one table and figure
- :mod:`~pyro_vae.cli.posthoc`: ``evaluate`` and ``plot`` on a finished run folder
"""
