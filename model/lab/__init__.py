"""The lab: synthetic phantoms, the paper's experiments, the perturbation study, figures."""
