"""The ``feature3dgs`` command line: one parser and one error policy (:mod:`.main`), options derived
from the config dataclasses (:mod:`.args`), one module per command group."""
