"""Sparse autoencoders: loading a public or local SAE (loading), training one (training) and
links to a public SAE's Neuronpedia dashboards (neuronpedia).
"""
