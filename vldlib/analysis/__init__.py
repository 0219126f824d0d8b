"""The paper's analyses: the residual-sum decomposition of Φ and a gradient-starvation demo."""
