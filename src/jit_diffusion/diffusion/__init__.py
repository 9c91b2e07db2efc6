"""The diffusion maths around a network: the flow path and loss, ODE solvers, sampling, EMA, batched generation."""
