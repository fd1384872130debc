"""Jenkins jobs for the microservices released with cdlib.

``catalog`` reads and checks ``jenkins/catalog.yml``; ``render`` turns it into config.xml files
(offline, deterministic); ``jenkins`` is a thin client over python-jenkins that reports errors by
HTTP status; ``sync`` compares the rendered configs with the server's and uploads only real
differences; ``cli`` adds the ``cdlib jobs render|diff|apply`` verb.

Nothing here imports jinja2, yaml or python-jenkins at module level: the CLI imports ``cli`` at
start-up to build its parser.
"""
