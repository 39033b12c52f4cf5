"""prm: personalized re-ranking for recommendation (Pei et al., RecSys 2019)."""

__version__ = "0.1.0"
