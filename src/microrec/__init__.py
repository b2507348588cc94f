"""microrec: next-product recommendation from micro-behaviors (RIB, WSDM 2018)."""

__version__ = "0.1.0"
