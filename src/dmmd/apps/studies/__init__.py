"""Studies that reproduce and explain the paper's figures."""
