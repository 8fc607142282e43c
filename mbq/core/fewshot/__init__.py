"""Few-shot learning over class-split datasets: episode sampling, first-order
MAML, prototypical networks and episode evaluation with confidence intervals."""
