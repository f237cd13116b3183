"""Agents: a model decides the next step; Baton makes the loop durable and governed."""
