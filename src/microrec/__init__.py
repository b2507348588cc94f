"""microrec: next-product recommendation from micro-behaviors (RIB, WSDM 2018)."""

__version__ = "0.1.0"

import logging

# errors raised before logging is set up (e.g. by resume=) print once, as `error: ...`
logging.getLogger(__name__).addHandler(logging.NullHandler())
