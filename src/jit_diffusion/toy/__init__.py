"""The paper's manifold toy experiment (x/eps/v-prediction against the ambient dimension) and its report."""
